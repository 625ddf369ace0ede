"""Canonical RLP encoder (Ethereum yellow paper, appendix B).

Only encoding is needed in the enclave: every item it signs is built here from
validated fields. Items are byte strings or (nested) lists of items; integers are
turned into their minimal big-endian form with :func:`uint` first (or encoded at once
with :func:`encode_uint`), so the output is always canonical (no leading zeros,
single bytes below 0x80 encoded as themselves).

A transaction is signed over ``rlp(fields)`` and sent as ``rlp(fields + signature)``:
:func:`encode_payload` and :func:`wrap_list` let both share one encoding of the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

RlpItem: TypeAlias = bytes | Sequence["RlpItem"]

_SHORT_STRING = [bytes([0x80 + n]) for n in range(56)]
_SHORT_LIST = [bytes([0xC0 + n]) for n in range(56)]
_SINGLE_BYTES = [bytes([n]) for n in range(0x80)]
_EMPTY_STRING = b"\x80"


def uint(value: int) -> bytes:
    """Minimal big-endian bytes of a non-negative integer (0 -> empty string)."""
    if type(value) is not int or value < 0:  # bool and int subclasses refused too
        raise ValueError("RLP integers must be non-negative ints")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def encode_uint(value: int) -> bytes:
    """``encode(uint(value))`` in one step."""
    if type(value) is not int or value < 0:
        raise ValueError("RLP integers must be non-negative ints")
    if value < 0x80:
        return _SINGLE_BYTES[value] if value else _EMPTY_STRING
    return encode_bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _long_prefix(length: int, long_base: int) -> bytes:
    length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(length_bytes) > 8:
        raise ValueError("RLP item too long")
    return bytes([long_base + len(length_bytes)]) + length_bytes


def encode_bytes(data: bytes) -> bytes:
    """Encode one byte string."""
    length = len(data)
    if length == 1 and data[0] < 0x80:
        return data
    if length < 56:
        return _SHORT_STRING[length] + data
    return _long_prefix(length, 0xB7) + data


def wrap_list(payload: bytes) -> bytes:
    """The list header for an already encoded (concatenated) list payload, plus it."""
    length = len(payload)
    if length < 56:
        return _SHORT_LIST[length] + payload
    return _long_prefix(length, 0xF7) + payload


def encode_payload(items: Sequence[RlpItem]) -> bytes:
    """The concatenated encodings of a list's items (the list without its header)."""
    return b"".join([encode(item) for item in items])


def encode(item: RlpItem) -> bytes:
    """Encode a byte string or a nested list of byte strings."""
    if type(item) is bytes:
        return encode_bytes(item)
    if isinstance(item, bytes | bytearray | memoryview):
        return encode_bytes(bytes(item))
    if isinstance(item, str):
        # A str is a Sequence too: refuse it instead of encoding its characters.
        raise TypeError("RLP items are bytes or lists, not str")
    return wrap_list(encode_payload(item))
