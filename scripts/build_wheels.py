"""Build the production wheels, each carrying only its layer, reproducibly.

    python -m scripts.build_wheels [--out DIR] [relay] [operator] [sim]

Run from the repository root (the default is every artifact into build/wheels). One
JSON line per wheel on stdout::

    {"artifact": "relay", "dist": "nitro-wallet-relay", "path": ".../x.whl",
     "sha256": "...", "lock": "requirements/relay.txt", "modules": [...]}

Artifacts (docs/architecture.md, "Production artifacts"):

``relay``     nitro-wallet-relay: parent_app and the enclave_app protocol modules it
              imports (the ``relay`` import contract lists those it may); console
              script ``nitro-wallet-relay``; for relay hosts.
``operator``  nitro-wallet-operator: nitro_wallet and the key-policy template;
              console script ``nitro-wallet``; for the Ansible controller.
``sim``       nitro-wallet-sim: nitro_sim and the enclave_app modules it imports;
              requires nitro-wallet-operator; console scripts ``nitro-sim``,
              ``nitro-cli``, ``vsock-proxy``; for simulated hosts only.

A wheel holds exactly its packages plus everything they import, transitively
(``scripts.layering.reach`` over the import graph), minus what a required wheel
provides. The relay wheel shares files with the operator and sim wheels (enclave_app
protocol modules, parent_app/__init__.py), so it goes into a virtualenv of its own.
Each wheel's Requires-Dist are the pins of its ``requirements/<lock>.in``; hosts install
the hashed ``requirements/<lock>.txt`` with ``--require-hashes --no-deps`` and then the
wheel with ``--no-deps``.

Reproducible: sources are staged with fixed modes, built by the pinned setuptools
(pyproject's dev extra, no build isolation, no network) with ``SOURCE_DATE_EPOCH``
(default 315532800, 1980-01-01) for the zip timestamps. Same commit, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grimp

from scripts.layering import reach

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "wheels"
DEFAULT_EPOCH = "315532800"
_PIN_RE = re.compile(r"\A([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)\Z")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    dist: str
    summary: str
    packages: tuple[str, ...]
    lock: str  # requirements/<lock>.in gives Requires-Dist, <lock>.txt the hashed install
    scripts: dict[str, str]
    requires_artifacts: tuple[str, ...] = ()
    data: dict[str, tuple[Path, str]] = field(default_factory=dict)  # wheel path: (source, pkg)


ARTIFACTS: dict[str, Artifact] = {
    "relay": Artifact(
        name="relay",
        dist="nitro-wallet-relay",
        summary="nitro-wallet parent relay (production relay hosts)",
        packages=("parent_app",),
        lock="relay",
        scripts={"nitro-wallet-relay": "parent_app.__main__:main"},
    ),
    "operator": Artifact(
        name="operator",
        dist="nitro-wallet-operator",
        summary="nitro-wallet operator CLI: key policy, attestation and audit verification",
        packages=("nitro_wallet",),
        lock="operator",
        scripts={"nitro-wallet": "nitro_wallet.cli:main"},
        data={
            "nitro_wallet/templates/kms_key_policy.json.j2": (
                ROOT / "templates" / "kms_key_policy.json.j2",
                "nitro_wallet",
            ),
            "nitro_wallet/policy.schema.json": (
                ROOT / "nitro_wallet" / "policy.schema.json",
                "nitro_wallet",
            ),
        },
    ),
    "sim": Artifact(
        name="sim",
        dist="nitro-wallet-sim",
        summary="nitro-wallet Nitro/KMS simulator (simulated hosts only, never production)",
        packages=("nitro_sim",),
        lock="sim",
        scripts={
            "nitro-sim": "nitro_sim.__main__:main",
            "nitro-cli": "nitro_sim.nitro_cli:main",
            "vsock-proxy": "nitro_sim.vsock_proxy:main",
        },
        requires_artifacts=("operator",),
    ),
}


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def pins(lock: str, root: Path = ROOT) -> list[str]:
    """``name==version`` lines of requirements/<lock>.in, following ``-r`` includes."""
    found: list[str] = []
    path = root / "requirements" / f"{lock}.in"
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found += pins(line[3:].strip().removesuffix(".in"), root)
        elif _PIN_RE.match(line):
            found.append(line)
        else:
            raise BuildError(f"{path}: {line!r} is not an exact pin (name==version)")
    return sorted(set(found))


def modules_of(artifact: Artifact, graph: grimp.ImportGraph) -> list[str]:
    """The modules the artifact's wheel carries (its closure minus required wheels')."""
    provided: set[str] = set()
    for other in artifact.requires_artifacts:
        provided |= set(reach(graph, ARTIFACTS[other].packages))
    return sorted(set(reach(graph, artifact.packages)) - provided)


def _source_file(module: str) -> tuple[Path, str]:
    """(file in the checkout, path in the wheel) of a module."""
    relative = Path(*module.split("."))
    package = ROOT / relative / "__init__.py"
    if package.is_file():
        return package, f"{relative.as_posix()}/__init__.py"
    plain = ROOT / relative.with_suffix(".py")
    if plain.is_file():
        return plain, relative.with_suffix(".py").as_posix()
    raise BuildError(f"no source file for module {module}")


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _project_file(artifact: Artifact, version: str, packages: Sequence[str]) -> str:
    setuptools_pin = _setuptools_pin()
    requires = pins(artifact.lock) + [
        f"{ARTIFACTS[a].dist}=={version}" for a in artifact.requires_artifacts
    ]
    lines = [
        "[build-system]",
        f"requires = {_toml_list([setuptools_pin])}",
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {json.dumps(artifact.dist)}",
        f"version = {json.dumps(version)}",
        f"description = {json.dumps(artifact.summary)}",
        'requires-python = ">=3.11"',
        f"dependencies = {_toml_list(requires)}",
        "",
        "[project.scripts]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(artifact.scripts.items())),
        "",
        "[tool.setuptools]",
        f"packages = {_toml_list(packages)}",
        "include-package-data = false",
        "",
    ]
    data: dict[str, list[str]] = {}
    for wheel_path, (_, package) in artifact.data.items():
        prefix = package.replace(".", "/") + "/"
        data.setdefault(package, []).append(wheel_path.removeprefix(prefix))
    if data:
        lines.append("[tool.setuptools.package-data]")
        lines += [f"{json.dumps(p)} = {_toml_list(sorted(f))}" for p, f in sorted(data.items())]
    return "\n".join(lines) + "\n"


def _setuptools_pin() -> str:
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    pin: str | None = next((str(p) for p in dev if str(p).startswith("setuptools==")), None)
    if pin is None:
        raise BuildError("pyproject.toml's dev extra must pin setuptools==X")
    installed = importlib.metadata.version("setuptools")
    if pin != f"setuptools=={installed}":
        raise BuildError(
            f"reproducible wheels need {pin} (pyproject dev extra), this Python has "
            f"setuptools {installed}: run `make venv`"
        )
    return pin


def _stage(artifact: Artifact, modules: Sequence[str], staging: Path, version: str) -> None:
    packages: set[str] = set()
    for module in modules:
        source, target = _source_file(module)
        packages.add(module if target.endswith("/__init__.py") else module.rpartition(".")[0])
        _copy(source, staging / target)
    for wheel_path, (source, _) in artifact.data.items():
        _copy(source, staging / wheel_path)
    (staging / "pyproject.toml").write_text(_project_file(artifact, version, sorted(packages)))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)


def build(artifact: Artifact, out: Path, graph: grimp.ImportGraph) -> dict[str, Any]:
    version = str(_pyproject()["project"]["version"])
    modules = modules_of(artifact, graph)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix=f"nw-wheel-{artifact.name}-") as tmp:
        staging = Path(tmp) / "src"
        _stage(artifact, modules, staging, version)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--disable-pip-version-check", "--quiet",
             "--wheel-dir", str(Path(tmp) / "dist"), str(staging)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )  # fmt: skip
        if built.returncode != 0:
            raise BuildError(f"building {artifact.dist} failed:\n{built.stderr}")
        (wheel,) = (Path(tmp) / "dist").glob("*.whl")
        target = out / wheel.name
        shutil.copyfile(wheel, target)
    return {
        "artifact": artifact.name,
        "dist": artifact.dist,
        "version": version,
        "path": str(target),
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "lock": f"requirements/{artifact.lock}.txt",
        "requires": [ARTIFACTS[a].dist for a in artifact.requires_artifacts],
        "modules": modules,
    }


def import_graph() -> grimp.ImportGraph:
    roots = _pyproject()["tool"]["importlinter"]["root_packages"]
    return grimp.build_graph(*roots, cache_dir=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.build_wheels")
    parser.add_argument("artifacts", nargs="*", metavar="|".join(ARTIFACTS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.artifacts) - set(ARTIFACTS))
    if unknown:
        parser.error(f"unknown artifacts {unknown}; choose from {sorted(ARTIFACTS)}")
    graph = import_graph()
    try:
        for name in args.artifacts or list(ARTIFACTS):
            print(json.dumps(build(ARTIFACTS[name], args.out.resolve(), graph)), flush=True)
    except BuildError as exc:
        print(f"build_wheels: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
