"""The stamp keys of the signing policy, read by the relay to verify stamps of read-only
calls (listing accounts, attestation, the audit head), which never reach the enclave.

The file is the compiled policy the enclave image carries (``nitro-wallet policy
compile``: canonical JSON, already validated by the compiler and again by the enclave
at start). The relay reads only ``principals.stamp_keys``: ``[{"id", "scopes",
"public_key" (PEM SubjectPublicKeyInfo, Ed25519 or P-256)}]``. A problem with the file
stops the relay at start: a relay that silently verified against no keys would turn
every read-only stamp away with a misleading ``stamp_key_unknown``.

The policy stays the enclave's: what a key may sign is decided there, never here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from enclave_app import strict_json
from enclave_app.auth.signatures import PublicKey, algorithm_name

__all__ = ["PolicyKeysError", "PolicyStampKey", "load_stamp_keys"]

MAX_POLICY_BYTES = 1 << 20
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCOPES = frozenset({"create", "sign", "read"})


class PolicyKeysError(ValueError):
    """The policy file is missing, unreadable or not a compiled policy."""


@dataclass(frozen=True)
class PolicyStampKey:
    public_key: PublicKey
    scopes: frozenset[str]


def load_stamp_keys(path: Path) -> tuple[dict[str, PolicyStampKey], str]:
    """The policy's stamp keys by id, and the policy's SHA-256 (hex, for the log)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyKeysError(f"cannot read the policy {path}: {exc.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyKeysError(f"the policy {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = strict_json.loads(data, max_depth=64)
    except strict_json.StrictJsonError as exc:
        raise PolicyKeysError(f"the policy {path} is not a compiled policy: {exc}") from None
    entries = _stamp_key_entries(document)
    keys: dict[str, PolicyStampKey] = {}
    for position, entry in enumerate(entries):
        key_id, key = _stamp_key(f"principals.stamp_keys[{position}]", entry)
        if key_id in keys:
            raise PolicyKeysError(f"stamp key {key_id!r} appears twice in {path}")
        keys[key_id] = key
    return keys, hashlib.sha256(data).hexdigest()


def _stamp_key_entries(document: Any) -> list[Any]:
    principals = document.get("principals") if isinstance(document, dict) else None
    if not isinstance(principals, dict):
        raise PolicyKeysError("the policy has no principals: is it a compiled signing policy?")
    entries = principals.get("stamp_keys", [])
    if not isinstance(entries, list):
        raise PolicyKeysError("principals.stamp_keys must be a list")
    return entries


def _stamp_key(where: str, entry: Any) -> tuple[str, PolicyStampKey]:
    if not isinstance(entry, dict):
        raise PolicyKeysError(f"{where} must be an object")
    key_id, scopes, pem = entry.get("id"), entry.get("scopes"), entry.get("public_key")
    if not isinstance(key_id, str) or not _ID_RE.fullmatch(key_id):
        raise PolicyKeysError(f"{where}.id must match [A-Za-z0-9_-]{{1,64}}")
    if not isinstance(scopes, list) or not all(scope in _SCOPES for scope in scopes):
        raise PolicyKeysError(f"{where}.scopes must be a list of create, sign, read")
    if not isinstance(pem, str):
        raise PolicyKeysError(f"{where}.public_key must be a PEM public key")
    try:
        public_key = load_pem_public_key(pem.encode("ascii"))
        algorithm_name(public_key)  # type: ignore[arg-type]
    except (ValueError, TypeError, UnicodeEncodeError):
        raise PolicyKeysError(f"{where}.public_key is not an Ed25519 or P-256 key") from None
    return key_id, PolicyStampKey(public_key, frozenset(scopes))  # type: ignore[arg-type]
