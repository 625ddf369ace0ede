"""The audit receipt format: canonical bytes, hashes, seals and the key binding.

A protocol module: the enclave writes receipts with it, the relay checks continuity
with it, and ``nitro-wallet audit verify`` checks the log with it.

A receipt is a JSON object; its hash is ``SHA-256("nitro-wallet/receipt/v1" 0x00 ||
canonical(receipt))`` where ``canonical`` is compact, key-sorted, ASCII-only JSON.
Receipts of one enclave boot form a segment: ``n`` counts from 0 (the genesis
receipt) without gaps, and ``prev`` is the previous receipt's hash (64 zeros for the
genesis). A seal is the receipt key's Ed25519 signature over
``"nitro-wallet/receipt-seal/v1" 0x00 || hash``; because of ``prev`` it covers every
earlier receipt of the segment, so the enclave seals once per frame, not once per
decision.

The log is JSON lines, each exactly ``canonical({"receipt": {...}, "sig": "<b64url>"})``
(``sig`` only on sealed receipts). The genesis receipt carries the receipt key and the
attestation document whose ``user_data`` binds it::

    user_data = "nitro-wallet/receipt-key/v1" 0x00 || segment (16 bytes) || public key (32)

Receipts never carry a key, a stamp, a token or a payload: only ids and digests.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "GENESIS_PREV",
    "canonical_json",
    "canonical_log_line",
    "canonical_receipt_hash",
    "head_message",
    "key_binding",
    "log_line",
    "payload_digest",
    "receipt_hash",
    "seal_message",
]

VERSION = 1
SEGMENT_BYTES = 16
HASH_DOMAIN = b"nitro-wallet/receipt/v1\x00"
SEAL_DOMAIN = b"nitro-wallet/receipt-seal/v1\x00"
HEAD_DOMAIN = b"nitro-wallet/receipt-head/v1\x00"
KEY_BINDING_DOMAIN = b"nitro-wallet/receipt-key/v1\x00"
PAYLOAD_DOMAIN = b"nitro-wallet/payload/v1\x00"
GENESIS_PREV = "0" * 64
KINDS = ("genesis", "decision", "link")


#: json.dumps with these options, built once (dumps builds an encoder per call).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode("ascii")


def receipt_hash(receipt: Mapping[str, Any]) -> bytes:
    return canonical_receipt_hash(canonical_json(receipt))


def canonical_receipt_hash(canonical_receipt: bytes) -> bytes:
    """``receipt_hash`` of a receipt from its canonical bytes (encoded once for the hash
    and its log line)."""
    return hashlib.sha256(HASH_DOMAIN + canonical_receipt).digest()


def seal_message(digest: bytes) -> bytes:
    return SEAL_DOMAIN + digest


def head_message(segment: bytes, n: int, digest: bytes, nonce: bytes) -> bytes:
    """What the enclave signs to state its current head for a caller's nonce."""
    return HEAD_DOMAIN + segment + struct.pack(">Q", n) + digest + nonce


def key_binding(segment: bytes, public_key: bytes) -> bytes:
    """The attestation ``user_data`` that binds a segment's receipt key."""
    if len(segment) != SEGMENT_BYTES or len(public_key) != 32:
        raise ValueError("segment must be 16 bytes and the public key 32")
    return KEY_BINDING_DOMAIN + segment + public_key


def payload_digest(op: str, payload: Any) -> bytes:
    """A digest of what an op asked (its payload as canonical JSON), for receipts."""
    op_bytes = op.encode("ascii")
    return hashlib.sha256(
        PAYLOAD_DOMAIN + struct.pack(">I", len(op_bytes)) + op_bytes + canonical_json(payload)
    ).digest()


def log_line(receipt: Mapping[str, Any], sig: str | None) -> str:
    """One log line, in the only form ``audit verify`` accepts."""
    return canonical_log_line(canonical_json(receipt), sig)


def canonical_log_line(canonical_receipt: bytes, sig: str | None) -> str:
    """``log_line`` from the receipt's canonical bytes: ``canonical_json({"receipt": ...,
    "sig": ...})`` is exactly those bytes between ``{"receipt":`` and the ``sig`` member
    (keys sort ``receipt`` < ``sig``), so the receipt is encoded once, not per use."""
    line = b'{"receipt":' + canonical_receipt
    if sig is not None:
        line += b',"sig":' + canonical_json(sig)
    return (line + b"}").decode("ascii")
