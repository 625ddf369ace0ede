"""Keccak-256 (the pre-standard SHA-3 padding Ethereum uses), via pycryptodome."""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest of ``data``."""
    return _keccak.new(digest_bits=256, data=bytes(data)).digest()
