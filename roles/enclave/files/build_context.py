"""Pack the enclave build context ("docker dir") into a deterministic tar.gz.

Runs on the build host (the Ansible controller by default):

    python build_context.py --repo-root DIR --output FILE
        [--enclave-toml FILE] [--wheel-dir DIR] [--extra SRC=DEST ...]

The archive holds the Dockerfile and entrypoint.sh (from enclave/), the enclave_app/
sources (no __pycache__, *.pyc, *.pyo) and requirements-enclave.txt (from
requirements/enclave.txt, or the pyproject dependency pins until that lock file
exists). With ``--enclave-toml`` it also holds the rendered enclave.toml; with
``--wheel-dir`` it holds ``wheels/``: exactly one wheel per pinned requirement, each
one's SHA-256 among the hashes the lock file lists (so the image build installs them
with no network and nothing else can slip in); ``--extra`` adds a file at DEST.
Members are sorted, mtime 0, owner root, modes 0644/0755, and gzip carries no
timestamp: the same inputs give the same bytes. Prints one JSON line:
{"path", "sha256", "requirements", "wheels"}.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
import tomllib
from pathlib import Path, PurePosixPath

EXCLUDED_DIRS = frozenset({"__pycache__"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
_REQUIREMENT_RE = re.compile(r"\A([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\Z")
_HASH_RE = re.compile(r"\A--hash=sha256:([0-9a-f]{64})\Z")


class ContextError(ValueError):
    """The build context cannot be made from these inputs."""


def _files(root: Path, relative: str) -> list[tuple[str, Path]]:
    base = root / relative
    if base.is_file():
        return [(relative, base)]
    if not base.is_dir():
        raise FileNotFoundError(f"{base} does not exist")
    found: list[tuple[str, Path]] = []
    for path in sorted(base.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part in EXCLUDED_DIRS for part in parts) or path.name.endswith(EXCLUDED_SUFFIXES):
            continue
        if path.is_symlink():
            raise ContextError(f"{path} is a symlink: the build context takes regular files only")
        if path.is_file():
            found.append(("/".join(parts), path))
    return found


def _requirements(root: Path) -> tuple[bytes, str]:
    lock = root / "requirements" / "enclave.txt"
    if lock.is_file():
        return lock.read_bytes(), "requirements/enclave.txt"
    with (root / "pyproject.toml").open("rb") as handle:
        pins = tomllib.load(handle)["project"]["dependencies"]
    text = "# pyproject.toml dependency pins (requirements/enclave.txt does not exist yet)\n"
    return (text + "".join(f"{pin}\n" for pin in pins)).encode(), "pyproject.toml"


def pinned_hashes(lock_text: str) -> dict[str, frozenset[str]]:
    """``name==version`` -> the SHA-256 values the pip-compile lock allows for it."""
    logical = re.sub(r"\\\n", " ", lock_text)
    pins: dict[str, frozenset[str]] = {}
    for line in logical.splitlines():
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        requirement = _REQUIREMENT_RE.match(tokens[0])
        if requirement is None:
            raise ContextError(f"lock line is not name==version: {tokens[0]!r}")
        hashes = [_HASH_RE.match(token) for token in tokens[1:]]
        if not hashes or any(match is None for match in hashes):
            raise ContextError(f"{tokens[0]} is not pinned with --hash=sha256 values only")
        pins[tokens[0]] = frozenset(match.group(1) for match in hashes if match is not None)
    if not pins:
        raise ContextError("the lock file pins nothing")
    return pins


def select_wheels(lock_text: str, wheel_dir: Path) -> dict[str, bytes]:
    """Exactly one wheel per pin, chosen by hash; refuse a pin without one."""
    by_hash: dict[str, tuple[str, bytes]] = {}
    for path in sorted(wheel_dir.glob("*.whl")):
        data = path.read_bytes()
        by_hash[hashlib.sha256(data).hexdigest()] = (path.name, data)
    chosen: dict[str, bytes] = {}
    missing: list[str] = []
    for pin, hashes in sorted(pinned_hashes(lock_text).items()):
        matches = sorted(by_hash[digest] for digest in hashes if digest in by_hash)
        if not matches:
            missing.append(pin)
            continue
        name, data = matches[0]  # one per pin: the platform's wheel (sorted, so stable)
        chosen[name] = data
    if missing:
        raise ContextError(
            f"no wheel in {wheel_dir} matches the pinned hashes of {', '.join(missing)}: "
            "fetch them first (pip download --require-hashes)"
        )
    return chosen


def _add(archive: tarfile.TarFile, name: str, data: bytes, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def _member_name(dest: str) -> str:
    path = PurePosixPath(dest)
    if not dest or path.is_absolute() or ".." in path.parts:
        raise ContextError(f"extra file destination {dest!r} must be a relative path")
    return path.as_posix()


def build(
    root: Path,
    enclave_toml: Path | None = None,
    wheel_dir: Path | None = None,
    extras: tuple[tuple[Path, str], ...] = (),
) -> tuple[bytes, str, list[str]]:
    members: dict[str, tuple[bytes, bool]] = {}
    for name in ("Dockerfile", "entrypoint.sh"):
        path = root / "enclave" / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        members[name] = (path.read_bytes(), False)
    for name, path in _files(root, "enclave_app"):
        members[name] = (path.read_bytes(), bool(path.stat().st_mode & 0o111))
    requirements, source = _requirements(root)
    members["requirements-enclave.txt"] = (requirements, False)
    if enclave_toml is not None:
        members["enclave.toml"] = (enclave_toml.read_bytes(), False)
    wheels: list[str] = []
    if wheel_dir is not None:
        for name, data in select_wheels(requirements.decode(), wheel_dir).items():
            members[f"wheels/{name}"] = (data, False)
            wheels.append(name)
    for source_path, dest in extras:
        name = _member_name(dest)
        if name in members:
            raise ContextError(f"extra file {dest!r} would replace a member of the context")
        members[name] = (source_path.read_bytes(), False)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in sorted(members):
            data, executable = members[name]
            _add(archive, name, data, executable)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0), source, sorted(wheels)


def _extra(value: str) -> tuple[Path, str]:
    source, separator, dest = value.partition("=")
    if not separator or not source or not dest:
        raise argparse.ArgumentTypeError(f"--extra takes SRC=DEST, got {value!r}")
    return Path(source), dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo-root", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--enclave-toml", type=Path)
    parser.add_argument("--wheel-dir", type=Path)
    parser.add_argument("--extra", type=_extra, action="append", default=[])
    args = parser.parse_args(argv)
    try:
        data, source, wheels = build(
            args.repo_root.resolve(), args.enclave_toml, args.wheel_dir, tuple(args.extra)
        )
    except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"build_context: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not args.output.is_file() or args.output.read_bytes() != data:
        tmp = args.output.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(args.output)
    digest = hashlib.sha256(data).hexdigest()
    print(
        json.dumps(
            {"path": str(args.output), "sha256": digest, "requirements": source, "wheels": wheels}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
