"""Pack the enclave build context ("docker dir") into a deterministic tar.gz.

Runs on the Ansible controller:

    python build_context.py --repo-root DIR --output FILE

The archive holds the Dockerfile and entrypoint.sh (from enclave/), the enclave_app/
sources (no __pycache__, *.pyc, *.pyo) and requirements-enclave.txt (from
requirements/enclave.txt, or the pyproject dependency pins until that lock file
exists). enclave.toml is rendered on the host by the enclave role. Members are sorted,
mtime 0, owner root, modes 0644/0755, and gzip carries no timestamp: the same sources
give the same bytes, so copying the archive is idempotent and the EIF is rebuilt only
when a source changes. Prints one JSON line: {"path", "sha256", "requirements"}.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import tomllib
from pathlib import Path

EXCLUDED_DIRS = frozenset({"__pycache__"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


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
            raise ValueError(f"{path} is a symlink: the build context takes regular files only")
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


def _add(archive: tarfile.TarFile, name: str, data: bytes, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def build(root: Path) -> tuple[bytes, str]:
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
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in sorted(members):
            data, executable = members[name]
            _add(archive, name, data, executable)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0), source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo-root", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        data, source = build(args.repo_root.resolve())
    except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"build_context: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not args.output.is_file() or args.output.read_bytes() != data:
        tmp = args.output.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(args.output)
    digest = hashlib.sha256(data).hexdigest()
    print(json.dumps({"path": str(args.output), "sha256": digest, "requirements": source}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
