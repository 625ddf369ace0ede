"""Strict ERC-20 calldata decoding, checked against eth-abi's encoder, and refusing every
byte string whose reading could differ between the policy and a token."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from hypothesis import given
from hypothesis import strategies as st

from enclave_app.policy import erc20
from enclave_app.policy.erc20 import Erc20Call, Function
from enclave_app.signing.keccak import keccak256

addresses = st.binary(min_size=20, max_size=20)
amounts = st.integers(min_value=0, max_value=2**256 - 1)
RECIPIENT = bytes.fromhex("11" * 20)
OWNER = bytes.fromhex("22" * 20)


def calldata(function: Function, *args: object) -> bytes:
    types = (
        ["address", "address", "uint256"]
        if function is Function.TRANSFER_FROM
        else [
            "address",
            "uint256",
        ]
    )
    return erc20.SELECTOR_OF[function] + encode(types, list(args))


@pytest.mark.parametrize(
    ("function", "signature"),
    [
        (Function.TRANSFER, "transfer(address,uint256)"),
        (Function.APPROVE, "approve(address,uint256)"),
        (Function.TRANSFER_FROM, "transferFrom(address,address,uint256)"),
    ],
)
def test_the_selectors_are_the_keccak_of_the_signatures(function: Function, signature: str) -> None:
    assert erc20.SELECTOR_OF[function] == keccak256(signature.encode())[:4]


@given(
    recipient=addresses,
    amount=amounts,
    function=st.sampled_from([Function.TRANSFER, Function.APPROVE]),
)
def test_transfer_and_approve_decode_what_eth_abi_encodes(
    recipient: bytes, amount: int, function: Function
) -> None:
    data = calldata(function, "0x" + recipient.hex(), amount)
    assert erc20.decode(data) == Erc20Call(function, recipient, amount)


@given(owner=addresses, recipient=addresses, amount=amounts)
def test_transfer_from_decodes_owner_recipient_and_amount(
    owner: bytes, recipient: bytes, amount: int
) -> None:
    data = calldata(Function.TRANSFER_FROM, "0x" + owner.hex(), "0x" + recipient.hex(), amount)
    assert erc20.decode(data) == Erc20Call(Function.TRANSFER_FROM, recipient, amount, owner)


TRANSFER = calldata(Function.TRANSFER, "0x" + RECIPIENT.hex(), 5)
TRANSFER_FROM = calldata(Function.TRANSFER_FROM, "0x" + OWNER.hex(), "0x" + RECIPIENT.hex(), 5)


def _dirty(data: bytes, word: int, byte: int) -> bytes:
    position = 4 + 32 * word + byte
    return data[:position] + b"\x01" + data[position + 1 :]


HOSTILE = {
    "empty": b"",
    "three bytes": TRANSFER[:3],
    "selector only": TRANSFER[:4],
    "one byte short": TRANSFER[:-1],
    "one word short": TRANSFER[:-32],
    "one trailing zero byte": TRANSFER + b"\x00",
    "a trailing word": TRANSFER + bytes(32),
    "a second call appended": TRANSFER + TRANSFER,
    "unknown selector": b"\xde\xad\xbe\xef" + TRANSFER[4:],
    "transferFrom arguments under transfer": erc20.SELECTOR_OF[Function.TRANSFER]
    + TRANSFER_FROM[4:],
    "transfer arguments under transferFrom": erc20.SELECTOR_OF[Function.TRANSFER_FROM]
    + TRANSFER[4:],
    **{f"dirty byte {b} of the recipient word": _dirty(TRANSFER, 0, b) for b in (0, 5, 11)},
    **{f"dirty byte {b} of the owner word": _dirty(TRANSFER_FROM, 0, b) for b in (0, 11)},
    "dirty byte of transferFrom's recipient word": _dirty(TRANSFER_FROM, 1, 11),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_anything_but_one_exact_call_does_not_decode(data: bytes) -> None:
    assert erc20.decode(data) is None


@given(extra=st.binary(min_size=1, max_size=96))
def test_any_trailing_bytes_refuse_the_call(extra: bytes) -> None:
    assert erc20.decode(TRANSFER + extra) is None


def test_a_dirty_amount_word_is_just_a_large_amount() -> None:
    data = TRANSFER[:36] + b"\xff" * 32
    call = erc20.decode(data)
    assert call is not None
    assert call.amount == 2**256 - 1
