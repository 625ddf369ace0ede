"""Keccak-256 and EIP-55 addresses for the relay, on pycryptodome.

The relay shows and indexes addresses and hashes raw transactions; it must not import
the enclave's signing package for that (the relay install carries only the enclave's
protocol modules, enforced by the ``relay`` import-linter contract). Both sides use
pycryptodome's Keccak, and tests/test_relay_ethaddress.py checks this module against
the enclave's and against eth-utils.
"""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    """The 32-byte Keccak-256 digest (Ethereum's pre-standard SHA-3 padding)."""
    return _keccak.new(digest_bits=256, data=bytes(data)).digest()


def to_checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case form of a 20-byte address."""
    if not isinstance(raw, bytes) or len(raw) != 20:
        raise ValueError("an address is 20 bytes")
    lower = raw.hex()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


__all__ = ["keccak256", "to_checksum_address"]
