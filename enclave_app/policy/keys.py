"""Public keys of stamp keys, approvers and account-bound keys: one strict parser.

Accepted: one PEM block ``-----BEGIN PUBLIC KEY-----`` holding a DER
SubjectPublicKeyInfo of a P-256 (secp256r1, uncompressed point) or an Ed25519 key,
nothing before or after it but whitespace. The DER must be exactly what a re-encoding
of the key produces, so one key has one spelling (its ``spki_der`` is canonical and
safe to bind into AES-GCM additional data).
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MAX_PEM_CHARS = 1024
_PEM_RE = re.compile(
    r"\s*-----BEGIN PUBLIC KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PUBLIC KEY-----\s*"
)


class KeyFormatError(ValueError):
    """The text is not a public key of an accepted kind; the message says why."""


def parse_public_key(name: str, pem: object) -> tuple[PublicKey, bytes]:
    """The key and its canonical SubjectPublicKeyInfo DER."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM_CHARS:
        raise KeyFormatError(f"{name} must be a PEM public key of at most {MAX_PEM_CHARS} chars")
    match = _PEM_RE.fullmatch(pem)
    if match is None:
        raise KeyFormatError(f"{name} must be one '-----BEGIN PUBLIC KEY-----' PEM block")
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{name}: the PEM body is not valid base64") from None
    return spki_public_key(name, der), der


def spki_public_key(name: str, der: bytes) -> PublicKey:
    """Load a canonical P-256 or Ed25519 SubjectPublicKeyInfo DER."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise KeyFormatError(f"{name} is not a valid SubjectPublicKeyInfo public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFormatError(f"{name}: only P-256 and Ed25519 keys are accepted")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFormatError(f"{name}: only P-256 and Ed25519 keys are accepted")
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != der:
        raise KeyFormatError(
            f"{name} is not in canonical form (use an uncompressed P-256 point, plain DER)"
        )
    return key


def public_key_pem(der: bytes) -> str:
    """The PEM spelling of a canonical SPKI DER (what the compiler writes)."""
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
