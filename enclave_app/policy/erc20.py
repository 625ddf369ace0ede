"""Strict ABI decoding of ERC-20 ``transfer``, ``approve`` and ``transferFrom`` calldata.

Strict means one byte string per meaning, so what the policy reads is what the token
executes:
- the length is exact: 4 + 32 * (number of arguments); no trailing bytes (Solidity's
  decoder ignores them, and they could smuggle a second reading past a rule);
- every address word has 12 zero bytes before the 20 address bytes (older tokens mask
  dirty high bits instead of reverting, so a dirty word could pay an address the policy
  never saw);
- amounts are full uint256 words.
Anything else is not a well-formed call: :func:`decode` returns ``None`` and the policy
treats the call as one it cannot judge (never allowed by an ERC-20 condition, always
caught by a deny rule's ERC-20 condition).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Function(StrEnum):
    TRANSFER = "transfer"
    APPROVE = "approve"
    TRANSFER_FROM = "transferFrom"


#: First four bytes of keccak256 of each signature.
SELECTORS: dict[bytes, Function] = {
    bytes.fromhex("a9059cbb"): Function.TRANSFER,  # transfer(address,uint256)
    bytes.fromhex("095ea7b3"): Function.APPROVE,  # approve(address,uint256)
    bytes.fromhex("23b872dd"): Function.TRANSFER_FROM,  # transferFrom(address,address,uint256)
}
SELECTOR_OF: dict[Function, bytes] = {function: sel for sel, function in SELECTORS.items()}
_ARGUMENTS = {Function.TRANSFER: 2, Function.APPROVE: 2, Function.TRANSFER_FROM: 3}
_ZERO_PAD = bytes(12)


@dataclass(frozen=True, slots=True)
class Erc20Call:
    """A decoded call. ``recipient`` is who receives tokens or the allowance: the
    ``to`` of transfer and transferFrom, the ``spender`` of approve. ``owner`` is the
    ``from`` of transferFrom and None otherwise."""

    function: Function
    recipient: bytes
    amount: int
    owner: bytes | None = None


def function_of(data: bytes) -> Function | None:
    """The ERC-20 function whose selector starts ``data``, if any."""
    return SELECTORS.get(data[:4]) if len(data) >= 4 else None


def decode(data: bytes) -> Erc20Call | None:
    """Decode ``data`` strictly; None unless it is exactly one well-formed call."""
    function = function_of(data)
    if function is None or len(data) != 4 + 32 * _ARGUMENTS[function]:
        return None
    words = [data[4 + 32 * i : 36 + 32 * i] for i in range(_ARGUMENTS[function])]
    addresses = words[:-1]
    if any(word[:12] != _ZERO_PAD for word in addresses):
        return None
    amount = int.from_bytes(words[-1], "big")
    if function is Function.TRANSFER_FROM:
        return Erc20Call(function, addresses[1][12:], amount, owner=addresses[0][12:])
    return Erc20Call(function, addresses[0][12:], amount)
