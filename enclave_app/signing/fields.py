"""Validators for the JSON values that arrive with a signing request.

Every function takes the field's name for its error message and raises
``enclave_app.errors.invalid`` (code ``invalid_params``) on anything malformed.

Rules (the relay and clients code against these):
- Quantities (wei amounts, nonces, gas, chain ids) are a Python ``int`` (never
  ``bool``) or a ``0x``-hex string with no leading zeros (``"0x0"`` is zero; hex
  digits in either case). Decimal strings and floats are refused.
- Addresses are ``0x`` + 40 hex digits. All-lowercase or all-uppercase digits are
  accepted as is; mixed case must be the correct EIP-55 checksum.
- Byte strings (``data``) are ``0x`` + an even number of hex digits.
- 32-byte values (storage keys, blob hashes) are ``0x`` + exactly 64 hex digits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from enclave_app.errors import invalid
from enclave_app.signing.keys import to_checksum_address

UINT64_MAX = 2**64 - 1
#: Distinct address strings whose validation is remembered.
ADDRESS_CACHE_ENTRIES = 16384
UINT256_MAX = 2**256 - 1
#: EIP-2681: a transaction (or EIP-7702 authorization) with nonce 2^64-1 or above is invalid.
MAX_NONCE = 2**64 - 2

_QUANTITY_RE = re.compile(r"0x(0|[1-9a-fA-F][0-9a-fA-F]*)")
_HEX_RE = re.compile(r"0x([0-9a-fA-F]{2})*")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_WORD_RE = re.compile(r"0x[0-9a-fA-F]{64}")

_AMOUNT_HINT = "amounts are wei as integers or 0x-hex strings"


def quantity(name: str, value: object, *, maximum: int = UINT256_MAX, minimum: int = 0) -> int:
    """An unsigned integer given as int or canonical 0x-hex, within [minimum, maximum]."""
    # Fast path for the well-formed common case; every refusal is explained below.
    if type(value) is str:
        if len(value) <= 2 + 64 and _QUANTITY_RE.fullmatch(value) is not None:
            number = int(value, 16)
            if minimum <= number <= maximum:
                return number
    elif type(value) is int and minimum <= value <= maximum:
        return value
    return _checked_quantity(name, value, maximum=maximum, minimum=minimum)


def _checked_quantity(name: str, value: object, *, maximum: int, minimum: int) -> int:
    """The general path of :func:`quantity`: every refusal with its reason."""
    if isinstance(value, bool):
        raise invalid(f"{name} must be an integer or 0x-hex string, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if value.isdigit():
            raise invalid(f"{name}: decimal strings are not accepted; {_AMOUNT_HINT}")
        if _QUANTITY_RE.fullmatch(value) is None:
            raise invalid(f"{name} must be a 0x-hex quantity without leading zeros; {_AMOUNT_HINT}")
        if len(value) > 2 + 64:
            raise invalid(f"{name} is too large")
        number = int(value, 16)
    elif isinstance(value, float):
        raise invalid(f"{name}: floats are not accepted; {_AMOUNT_HINT}")
    else:
        raise invalid(f"{name} must be an integer or 0x-hex string; {_AMOUNT_HINT}")
    if number < minimum:
        if minimum == 0:
            raise invalid(f"{name} must not be negative")
        raise invalid(f"{name} must be at least {minimum}")
    if number > maximum:
        raise invalid(f"{name} must be at most {hex(maximum)}")
    return number


def nonce(name: str, value: object) -> int:
    """A nonce: a quantity below 2^64-1 (EIP-2681)."""
    number = quantity(name, value)
    if number > MAX_NONCE:
        raise invalid(
            f"{name} must be at most {MAX_NONCE} (2^64-2): EIP-2681 makes a nonce of "
            "2^64-1 or above invalid"
        )
    return number


def address(name: str, value: object) -> bytes:
    """A 20-byte address; mixed-case input must carry a valid EIP-55 checksum."""
    raw = _valid_address(value) if type(value) is str else None
    if raw is None:
        raise invalid(f"{name} must be a 0x-prefixed 20-byte hex address")
    if not raw:
        raise invalid(f"{name} has an invalid EIP-55 checksum")
    return raw


@functools.lru_cache(maxsize=ADDRESS_CACHE_ENTRIES)
def _valid_address(value: str) -> bytes | None:
    """The 20 bytes of a well-formed address, b"" for a bad checksum, None otherwise.

    Cached by the exact string: the answer depends on nothing else, and a signer's
    few counterparties recur (the checksum costs a keccak and a loop over 40 digits).
    """
    if _ADDRESS_RE.fullmatch(value) is None:
        return None
    digits = value[2:]
    raw = bytes.fromhex(digits)
    mixed_case = digits not in (digits.lower(), digits.upper())
    if mixed_case and to_checksum_address(raw) != value:
        return b""
    return raw


def hex_bytes(name: str, value: object, *, max_length: int | None = None) -> bytes:
    """A 0x-hex byte string with an even number of digits."""
    if not isinstance(value, str) or _HEX_RE.fullmatch(value) is None:
        raise invalid(f"{name} must be a 0x-prefixed hex string with an even number of digits")
    raw = bytes.fromhex(value[2:])
    if max_length is not None and len(raw) > max_length:
        raise invalid(f"{name} is longer than {max_length} bytes")
    return raw


def word(name: str, value: object) -> bytes:
    """A 32-byte value given as 0x + 64 hex digits."""
    if not isinstance(value, str) or _WORD_RE.fullmatch(value) is None:
        raise invalid(f"{name} must be a 0x-prefixed 32-byte hex string (64 hex digits)")
    return bytes.fromhex(value[2:])


def json_list(name: str, value: object) -> Sequence[object]:
    """A JSON array (list or tuple; never a string or a mapping)."""
    if not isinstance(value, list | tuple):
        raise invalid(f"{name} must be a list")
    return value


def json_object(
    name: str, value: object, *, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, object]:
    """A JSON object whose keys are all known and that has every required key."""
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be an object")
    for key in value:
        if not isinstance(key, str):
            raise invalid(f"{name} has a non-string key")
    unknown = sorted(set(value) - required - optional)
    if unknown:
        raise invalid(f"{name} has unknown field(s): {', '.join(unknown)}")
    missing = sorted(required - set(value))
    if missing:
        raise invalid(f"{name} is missing field(s): {', '.join(missing)}")
    return value
