"""The canonical request digest and the header encodings of stamps and approvals.

A protocol module: the enclave verifies with it, the relay verifies read-only calls
with it, and the operator CLI signs with it, so all three hash the same bytes.

Request digest (32 bytes)::

    SHA-256( "nitro-wallet/request/v1" 0x00
             || u32be(len(method)) || method          # "POST", ASCII upper case
             || u32be(len(target)) || target          # path and "?query" exactly as sent
             || SHA-256(body) )                       # the exact body bytes ("" if none)

The account is bound through the target (REST: ``/v1/accounts/{id}/...``) or the body
(JSON-RPC: ``from`` / the address param); the enclave derives it from the stamped
request itself (``enclave_app.auth.intents``).

Stamp: ``X-Stamp: v1.<key_id>.<timestamp>.<nonce>.<signature>`` where ``timestamp`` is
Unix seconds (decimal), ``nonce`` 16 random bytes and ``signature`` 64 bytes, both
base64url without padding. The key signs::

    "nitro-wallet/stamp/v1" 0x00 || u32be(len(key_id)) || key_id
        || u64be(timestamp) || nonce || request_digest

Approval: ``v1.<approver_id>.<expires>.<signature>``; ``X-Approvals`` carries one or
more, comma separated. The approver signs::

    "nitro-wallet/approval/v1" 0x00 || u32be(len(approver_id)) || approver_id
        || u64be(expires) || request_digest

Ids are ``[A-Za-z0-9_-]{1,64}``. Every parser here refuses anything else (no
whitespace inside an item, no padding, no leading zeros, no second encoding).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from enclave_app.errors import EnclaveError, ErrorCode

__all__ = [
    "APPROVALS_HEADER",
    "MAX_APPROVALS",
    "STAMP_HEADER",
    "Approval",
    "Stamp",
    "approval_message",
    "b64url",
    "format_approval",
    "format_approvals",
    "format_stamp",
    "parse_approvals",
    "parse_stamp",
    "request_digest",
    "stamp_message",
]

STAMP_HEADER = "X-Stamp"
APPROVALS_HEADER = "X-Approvals"
VERSION = "v1"
REQUEST_DOMAIN = b"nitro-wallet/request/v1\x00"
STAMP_DOMAIN = b"nitro-wallet/stamp/v1\x00"
APPROVAL_DOMAIN = b"nitro-wallet/approval/v1\x00"
NONCE_BYTES = 16
SIGNATURE_BYTES = 64
MAX_TARGET = 2048
MAX_APPROVALS = 16
MAX_STAMP_HEADER = 256
MAX_APPROVALS_HEADER = MAX_APPROVALS * 200
#: Timestamps and expiries are Unix seconds below 2^40 (year 36812): 1..13 digits.
MAX_TIME = 2**40 - 1

_ID = r"[A-Za-z0-9_-]{1,64}"
_TIME = r"(?:0|[1-9][0-9]{0,12})"
_B64URL_NONCE = r"[A-Za-z0-9_-]{22}"
_B64URL_SIGNATURE = r"[A-Za-z0-9_-]{86}"
ID_RE = re.compile(_ID)
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_TARGET_RE = re.compile(r"/[\x21-\x7e]{0,2047}")
_STAMP_RE = re.compile(
    rf"v1\.(?P<key>{_ID})\.(?P<ts>{_TIME})\.(?P<nonce>{_B64URL_NONCE})\.(?P<sig>{_B64URL_SIGNATURE})"
)
_APPROVAL_RE = re.compile(rf"v1\.(?P<id>{_ID})\.(?P<expires>{_TIME})\.(?P<sig>{_B64URL_SIGNATURE})")


@dataclass(frozen=True)
class Stamp:
    key_id: str
    timestamp: int
    nonce: bytes
    signature: bytes


@dataclass(frozen=True)
class Approval:
    approver_id: str
    expires: int
    signature: bytes


def request_digest(method: str, target: str, body: bytes) -> bytes:
    """The 32-byte digest that stamps and approvals sign (see the module docstring)."""
    if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
        raise _malformed(ErrorCode.INVALID_PARAMS, "method must be 1..16 upper-case letters")
    if not isinstance(target, str) or not _TARGET_RE.fullmatch(target):
        raise _malformed(
            ErrorCode.INVALID_PARAMS,
            f"path must start with '/' and be 1..{MAX_TARGET} printable ASCII characters",
        )
    if not isinstance(body, bytes):
        raise _malformed(ErrorCode.INVALID_PARAMS, "body must be bytes")
    hasher = hashlib.sha256(REQUEST_DOMAIN)
    hasher.update(_length_prefixed(method.encode("ascii")))
    hasher.update(_length_prefixed(target.encode("ascii")))
    hasher.update(hashlib.sha256(body).digest())
    return hasher.digest()


def stamp_message(key_id: str, timestamp: int, nonce: bytes, digest: bytes) -> bytes:
    """The bytes a stamp key signs."""
    _check_id(key_id, ErrorCode.STAMP_MALFORMED, "key id")
    _check_time(timestamp, ErrorCode.STAMP_MALFORMED, "timestamp")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise _malformed(ErrorCode.STAMP_MALFORMED, f"nonce must be {NONCE_BYTES} bytes")
    _check_digest(digest)
    return (
        STAMP_DOMAIN
        + _length_prefixed(key_id.encode("ascii"))
        + struct.pack(">Q", timestamp)
        + nonce
        + digest
    )


def approval_message(approver_id: str, expires: int, digest: bytes) -> bytes:
    """The bytes an approver signs."""
    _check_id(approver_id, ErrorCode.APPROVAL_MALFORMED, "approver id")
    _check_time(expires, ErrorCode.APPROVAL_MALFORMED, "expiry")
    _check_digest(digest)
    return (
        APPROVAL_DOMAIN
        + _length_prefixed(approver_id.encode("ascii"))
        + struct.pack(">Q", expires)
        + digest
    )


def parse_stamp(header: object) -> Stamp:
    """An ``X-Stamp`` value, strictly (``stamp_malformed`` otherwise)."""
    if not isinstance(header, str) or len(header) > MAX_STAMP_HEADER:
        raise _malformed(ErrorCode.STAMP_MALFORMED, "X-Stamp must be a string")
    found = _STAMP_RE.fullmatch(header)
    if found is None:
        raise _malformed(
            ErrorCode.STAMP_MALFORMED,
            "X-Stamp must be v1.<key_id>.<unix seconds>.<nonce>.<signature> "
            "(nonce 16 bytes and signature 64 bytes, base64url without padding)",
        )
    timestamp = int(found["ts"])
    _check_time(timestamp, ErrorCode.STAMP_MALFORMED, "timestamp")
    return Stamp(
        key_id=found["key"],
        timestamp=timestamp,
        nonce=_b64url_decode(found["nonce"], ErrorCode.STAMP_MALFORMED),
        signature=_b64url_decode(found["sig"], ErrorCode.STAMP_MALFORMED),
    )


def format_stamp(stamp: Stamp) -> str:
    stamp_message(stamp.key_id, stamp.timestamp, stamp.nonce, bytes(32))  # validates fields
    return ".".join(
        (VERSION, stamp.key_id, str(stamp.timestamp), b64url(stamp.nonce), b64url(stamp.signature))
    )


def parse_approvals(header: object) -> tuple[Approval, ...]:
    """An ``X-Approvals`` value: 1..16 approvals separated by commas (spaces allowed
    around commas, as when a client repeats the header)."""
    if not isinstance(header, str) or not header or len(header) > MAX_APPROVALS_HEADER:
        raise _malformed(
            ErrorCode.APPROVAL_MALFORMED,
            f"X-Approvals must be 1..{MAX_APPROVALS_HEADER} characters",
        )
    items = [item.strip(" \t") for item in header.split(",")]
    if len(items) > MAX_APPROVALS:
        raise _malformed(ErrorCode.APPROVAL_MALFORMED, f"at most {MAX_APPROVALS} approvals")
    approvals = []
    for position, item in enumerate(items):
        found = _APPROVAL_RE.fullmatch(item)
        if found is None:
            raise _malformed(
                ErrorCode.APPROVAL_MALFORMED,
                f"approval {position} must be v1.<approver_id>.<expires unix seconds>.<signature>",
            )
        expires = int(found["expires"])
        _check_time(expires, ErrorCode.APPROVAL_MALFORMED, "expiry")
        approvals.append(
            Approval(
                approver_id=found["id"],
                expires=expires,
                signature=_b64url_decode(found["sig"], ErrorCode.APPROVAL_MALFORMED),
            )
        )
    return tuple(approvals)


def format_approval(approval: Approval) -> str:
    approval_message(approval.approver_id, approval.expires, bytes(32))  # validates fields
    return ".".join(
        (VERSION, approval.approver_id, str(approval.expires), b64url(approval.signature))
    )


def format_approvals(approvals: tuple[Approval, ...] | list[Approval]) -> str:
    return ",".join(format_approval(approval) for approval in approvals)


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, code: ErrorCode) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(code, "invalid base64url") from None
    if b64url(data) != text:  # non-zero trailing bits: a second encoding of the same bytes
        raise _malformed(code, "non-canonical base64url")
    return data


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _check_id(value: object, code: ErrorCode, name: str) -> None:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise _malformed(code, f"{name} must match [A-Za-z0-9_-]{{1,64}}")


def _check_time(value: object, code: ErrorCode, name: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise _malformed(code, f"{name} must be Unix seconds in 0..2^40-1")


def _check_digest(digest: object) -> None:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise _malformed(ErrorCode.INVALID_PARAMS, "request digest must be 32 bytes")


def _malformed(code: ErrorCode, message: str) -> EnclaveError:
    return EnclaveError(code, message)
