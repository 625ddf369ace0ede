"""Canonical RLP encoder (Ethereum yellow paper, appendix B).

Only encoding is needed in the enclave: every item it signs is built here from
validated fields. Items are byte strings or (nested) lists of items; integers are
turned into their minimal big-endian form with :func:`uint` first, so the output is
always canonical (no leading zeros, single bytes below 0x80 encoded as themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

RlpItem: TypeAlias = bytes | Sequence["RlpItem"]


def uint(value: int) -> bytes:
    """Minimal big-endian bytes of a non-negative integer (0 -> empty string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("RLP integers must be non-negative ints")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _length_prefix(length: int, short_base: int) -> bytes:
    if length < 56:
        return bytes([short_base + length])
    length_bytes = uint(length)
    if len(length_bytes) > 8:
        raise ValueError("RLP item too long")
    return bytes([short_base + 55 + len(length_bytes)]) + length_bytes


def encode(item: RlpItem) -> bytes:
    """Encode a byte string or a nested list of byte strings."""
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        if len(data) == 1 and data[0] < 0x80:
            return data
        return _length_prefix(len(data), 0x80) + data
    if isinstance(item, str):
        # A str is a Sequence too: refuse it instead of encoding its characters.
        raise TypeError("RLP items are bytes or lists, not str")
    payload = b"".join(encode(sub) for sub in item)
    return _length_prefix(len(payload), 0xC0) + payload
