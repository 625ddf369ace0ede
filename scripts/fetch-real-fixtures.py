#!/usr/bin/env python3
"""Fetch real AWS Nitro artefacts published by public packages, for the tests.

Nothing fetched here is committed: it lands in .fixtures-cache/ (git-ignored).
- valtu 0.1.0 (PyPI sdist) ships a real attestation document from AWS Nitro
  Enclaves (tests/fixtures/attestation.json): verified against the pinned AWS root.
The sdist's SHA-256 is pinned so a changed upload is noticed, not trusted.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".fixtures-cache"
SOURCES = [
    {
        "requirement": "valtu==0.1.0",
        "archive": "valtu-0.1.0.tar.gz",
        "sha256": "09ec1c910665bb05ef75823afc672cf9b3205edfeabd31adf544134f251f1aa2",
        "member": "valtu-0.1.0/tests/fixtures/attestation.json",
        "target": "valtu-attestation.json",
    },
]


def fetch(source: dict[str, str]) -> None:
    target = CACHE / source["target"]
    if target.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                source["requirement"],
            ],
            check=True,
        )
        archive = Path(tmp) / source["archive"]
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != source["sha256"]:
            raise SystemExit(f"{archive.name}: sha256 {digest} is not the pinned one")
        with tarfile.open(archive) as tar:
            member = tar.extractfile(source["member"])
            if member is None:
                raise SystemExit(f"{source['member']} missing from {archive.name}")
            CACHE.mkdir(exist_ok=True)
            target.write_bytes(member.read())
    print(f"fetched {target}")


def main() -> int:
    for source in SOURCES:
        fetch(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
