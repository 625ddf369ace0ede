"""secp256k1 keys, Ethereum addresses and ECDSA over 32-byte digests.

ECDSA is libsecp256k1 through coincurve: RFC 6979 deterministic nonces and low-s
normalised signatures. Nothing here logs or formats key material into messages.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable

from coincurve import PrivateKey, PublicKey

from enclave_app.errors import invalid
from enclave_app.signing.keccak import keccak256

#: Order of the secp256k1 group.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Largest s accepted as "low" (EIP-2).
SECP256K1_HALF_N = SECP256K1_N // 2
_HALF_N_BYTES = SECP256K1_HALF_N.to_bytes(32, "big")
_ZERO_WORD = bytes(32)
#: Distinct addresses whose EIP-55 form is remembered (a pure function of 20 bytes).
CHECKSUM_CACHE_ENTRIES = 16384


def is_valid_private_key(private_key: bytes) -> bool:
    """True for a 32-byte big-endian scalar k with 1 <= k < n."""
    if not isinstance(private_key, bytes) or len(private_key) != 32:
        return False
    return 1 <= int.from_bytes(private_key, "big") < SECP256K1_N


def _require_private_key(private_key: bytes) -> None:
    if not is_valid_private_key(private_key):
        # Never echo the value: it is key material.
        raise invalid("private key must be 32 bytes with 1 <= k < secp256k1 n")


def generate_private_key(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A fresh private key (rejection sampling, no bias) from ``random_bytes``: the OS
    CSPRNG by default; the enclave passes its mixed OS + NSM source."""
    while True:
        candidate = random_bytes(32)
        if is_valid_private_key(candidate):
            return candidate


def to_checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case form of a 20-byte address."""
    if type(raw) is not bytes or len(raw) != 20:
        if not isinstance(raw, bytes) or len(raw) != 20:
            raise invalid("address must be 20 bytes")
        raw = bytes(raw)
    return _checksum(raw)


@functools.lru_cache(maxsize=CHECKSUM_CACHE_ENTRIES)
def _checksum(raw: bytes) -> str:
    """EIP-55 of exactly 20 bytes. Cached: the result depends on nothing else."""
    lower = raw.hex()
    digest = keccak256(lower.encode("ascii"))
    # Nibble i of the digest decides the case of hex digit i (upper when >= 8).
    nibbles = "".join(f"{byte >> 4:x}{byte & 15:x}" for byte in digest[:20])
    return "0x" + "".join(
        ch.upper() if ch > "9" and nibble >= "8" else ch
        for ch, nibble in zip(lower, nibbles, strict=True)
    )


def public_key_to_address(public_key: PublicKey) -> str:
    """Checksummed address: last 20 bytes of keccak256 of the uncompressed point."""
    point = public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak256(point)[12:])


def _require_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise invalid("digest must be 32 bytes")


def private_key_to_address(private_key: bytes) -> str:
    """Checksummed address of a private key."""
    _require_private_key(private_key)
    return public_key_to_address(PrivateKey(private_key).public_key)


class SigningKey:
    """An unlocked secp256k1 key, prepared once for many signatures.

    Building coincurve's ``PrivateKey`` derives the public key (two scalar
    multiplications, more than a signature costs), so the key cache keeps this object
    rather than the 32 bytes. ``address`` is the checksummed address the key derives.
    The secret never appears in ``repr``.
    """

    __slots__ = ("_key", "address")

    def __init__(self, private_key: bytes) -> None:
        _require_private_key(private_key)
        self._key = PrivateKey(private_key)
        self.address: str = public_key_to_address(self._key.public_key)

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address})"

    def sign_compact(self, digest: bytes) -> bytes:
        """``r (32) || s (32) || y_parity (1)`` over a 32-byte digest, low s (EIP-2).

        libsecp256k1 uses RFC 6979 nonces and always normalises s. A recovery id of
        2 or 3 needs r >= n (probability ~2^-128); either way, anything outside the
        Ethereum form is refused rather than emitted.
        """
        _require_digest(digest)
        signature = self._key.sign_recoverable(digest, hasher=None)
        s = signature[32:64]
        if signature[64] > 1 or s > _HALF_N_BYTES or s == _ZERO_WORD:
            raise RuntimeError("libsecp256k1 returned a signature outside the Ethereum form")
        return signature


def signing_key(private_key: bytes | SigningKey) -> SigningKey:
    """The key object for ``private_key`` (built when given the 32 bytes)."""
    return private_key if isinstance(private_key, SigningKey) else SigningKey(private_key)


def sign_digest(private_key: bytes | SigningKey, digest: bytes) -> tuple[int, int, int]:
    """Sign a 32-byte digest; returns (y_parity, r, s) with low s (EIP-2)."""
    signature = signing_key(private_key).sign_compact(digest)
    return (
        signature[64],
        int.from_bytes(signature[0:32], "big"),
        int.from_bytes(signature[32:64], "big"),
    )


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
