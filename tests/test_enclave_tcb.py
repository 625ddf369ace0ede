"""The enclave's dependency set is the trusted computing base: it may only grow on
purpose. Every import in enclave_app/ must come from the standard library, the
enclave's own package, or the pinned third-party set of requirements/enclave.in."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIRD_PARTY = {  # import name -> distribution in requirements/enclave.in
    "boto3": "boto3",
    "botocore": "boto3",
    "cbor2": "cbor2",
    "coincurve": "coincurve",
    "cryptography": "cryptography",
    "Crypto": "pycryptodome",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_enclave_imports_only_its_pinned_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | {"enclave_app", "__future__", "mypy_boto3_kms"}
    allowed |= set(THIRD_PARTY)
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) - allowed)
        for path in sorted((ROOT / "enclave_app").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_allowed_distribution_is_pinned_with_hashes() -> None:
    lock = (ROOT / "requirements" / "enclave.txt").read_text()
    for distribution in set(THIRD_PARTY.values()):
        pin = re.search(rf"^{re.escape(distribution)}==\S+ \\\n\s+--hash=sha256:", lock, re.M)
        assert pin, f"{distribution} is not pinned with hashes in requirements/enclave.txt"
