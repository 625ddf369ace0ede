"""Signatures of stamps, approvals and audit receipts: Ed25519, or ECDSA P-256 with
SHA-256 encoded as 64 raw bytes ``r || s`` (IEEE P1363, what WebCrypto produces).

A protocol module: the enclave and the relay verify with it, the operator CLI signs
with it. Keys are ``cryptography`` objects; any other key type is refused.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = ["PrivateKey", "PublicKey", "algorithm_name", "sign", "verify"]

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
SIGNATURE_BYTES = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def algorithm_name(key: PublicKey | PrivateKey) -> str:
    """``ed25519`` or ``p256``; ``ValueError`` for any other key."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "p256"
    raise ValueError("keys must be Ed25519 or ECDSA P-256")


def verify(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` (64 bytes) is ``key``'s signature of ``message``."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    if isinstance(key, ed25519.Ed25519PublicKey):
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True
    if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm_name(key) != "p256":
        raise ValueError("keys must be Ed25519 or ECDSA P-256")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def sign(key: PrivateKey, message: bytes) -> bytes:
    """``key``'s 64-byte signature of ``message``."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or algorithm_name(key) != "p256":
        raise ValueError("keys must be Ed25519 or ECDSA P-256")
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
