"""secp256k1 keys, Ethereum addresses and ECDSA over 32-byte digests.

ECDSA is libsecp256k1 through coincurve: RFC 6979 deterministic nonces and low-s
normalised signatures. Nothing here logs or formats key material into messages.
"""

from __future__ import annotations

import secrets

from coincurve import PrivateKey, PublicKey

from enclave_app.errors import invalid
from enclave_app.signing.keccak import keccak256

#: Order of the secp256k1 group.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Largest s accepted as "low" (EIP-2).
SECP256K1_HALF_N = SECP256K1_N // 2


def is_valid_private_key(private_key: bytes) -> bool:
    """True for a 32-byte big-endian scalar k with 1 <= k < n."""
    if not isinstance(private_key, bytes) or len(private_key) != 32:
        return False
    return 1 <= int.from_bytes(private_key, "big") < SECP256K1_N


def _require_private_key(private_key: bytes) -> None:
    if not is_valid_private_key(private_key):
        # Never echo the value: it is key material.
        raise invalid("private key must be 32 bytes with 1 <= k < secp256k1 n")


def generate_private_key() -> bytes:
    """A fresh private key from the OS CSPRNG (rejection sampling, no bias)."""
    while True:
        candidate = secrets.token_bytes(32)
        if is_valid_private_key(candidate):
            return candidate


def to_checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case form of a 20-byte address."""
    if not isinstance(raw, bytes) or len(raw) != 20:
        raise invalid("address must be 20 bytes")
    lower = raw.hex()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


def public_key_to_address(public_key: PublicKey) -> str:
    """Checksummed address: last 20 bytes of keccak256 of the uncompressed point."""
    point = public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak256(point)[12:])


def private_key_to_address(private_key: bytes) -> str:
    """Checksummed address of a private key."""
    _require_private_key(private_key)
    return public_key_to_address(PrivateKey(private_key).public_key)


def _require_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise invalid("digest must be 32 bytes")


def sign_digest(private_key: bytes, digest: bytes) -> tuple[int, int, int]:
    """Sign a 32-byte digest; returns (y_parity, r, s) with low s (EIP-2)."""
    _require_private_key(private_key)
    _require_digest(digest)
    signature = PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    parity = signature[64]
    if parity not in (0, 1) or not 1 <= s <= SECP256K1_HALF_N:
        # recid 2/3 needs r >= n (probability ~2^-128); libsecp256k1 always
        # normalises s. Either way, refuse rather than emit an odd signature.
        raise RuntimeError("libsecp256k1 returned a signature outside the Ethereum form")
    return parity, r, s


def recover_address(digest: bytes, v: int, r: int, s: int) -> str:
    """Checksummed signer address of (v, r, s) over ``digest``.

    ``v`` is the y parity (0/1) or the legacy 27/28 form.
    """
    _require_digest(digest)
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid("v must be an integer")
    parity = v - 27 if v in (27, 28) else v
    if parity not in (0, 1):
        raise invalid("v must be 0, 1, 27 or 28")
    for name, value in (("r", r), ("s", s)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < SECP256K1_N:
            raise invalid(f"{name} must be an integer with 1 <= {name} < secp256k1 n")
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([parity])
    try:
        public_key = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError as exc:
        raise invalid("signature does not recover to a public key") from exc
    return public_key_to_address(public_key)
