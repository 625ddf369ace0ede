"""Differential tests: the enclave's encoders against eth-account (the oracle).

Each generated case must give byte-identical raw transactions / signatures. The
number of examples per test is ``SIGNING_EXAMPLES`` (default 400, so the default
run covers 2,800 cases; ``make test-unit`` sets 40); the ``slow`` variants take theirs
from the hypothesis profile, 2,000 per kind under ``thorough`` (``make test`` only).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_app.signing import (
    keccak256,
    parse_transaction,
    private_key_to_address,
    sign_authorization,
    sign_transaction,
)
from enclave_app.signing.messages import sign_message
from enclave_app.signing.typed_data import hash_typed_data, sign_typed_data
from tests import strategies as gen

EXAMPLES = int(os.environ.get("SIGNING_EXAMPLES", "400"))
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def check_transaction(pk: bytes, case: gen.Case) -> None:
    ours = sign_transaction(pk, parse_transaction(case.json))
    oracle_tx = dict(case.oracle)
    if oracle_tx["type"] == 0:
        del oracle_tx["type"]
    theirs = Account.sign_transaction(oracle_tx, pk)
    assert ours.raw == bytes(theirs.raw_transaction)
    assert ours.hash == bytes(theirs.hash) == keccak256(ours.raw)
    assert (ours.r, ours.s, ours.v) == (theirs.r, theirs.s, theirs.v)
    assert Account.recover_transaction(ours.raw) == private_key_to_address(pk)


def check_authorization(pk: bytes, values: tuple[dict[str, Any], dict[str, Any]]) -> None:
    json_obj, oracle = values
    unsigned_json = {k: json_obj[k] for k in ("chainId", "address", "nonce")}
    unsigned_oracle = {k: oracle[k] for k in ("chainId", "address", "nonce")}
    ours = sign_authorization(pk, unsigned_json)
    theirs = Account.sign_authorization(unsigned_oracle, pk)
    assert (ours.y_parity, ours.r, ours.s) == (theirs.y_parity, theirs.r, theirs.s)
    assert ours.authorization.digest() == bytes(theirs.authorization_hash)
    assert "0x" + bytes(theirs.authority).hex() == private_key_to_address(pk).lower()


def check_bytes_message(pk: bytes, message: bytes) -> None:
    ours = sign_message(pk, "0x" + message.hex())
    theirs = Account.sign_message(encode_defunct(primitive=message), pk)
    assert ours.signature == bytes(theirs.signature)
    assert ours.digest == bytes(theirs.message_hash)


def check_text_message(pk: bytes, text: str) -> None:
    ours = sign_message(pk, text)
    theirs = Account.sign_message(encode_defunct(text=text), pk)
    assert ours.signature == bytes(theirs.signature)


def check_typed_data(pk: bytes, full: dict[str, Any]) -> None:
    ours = sign_typed_data(pk, copy.deepcopy(full))
    signable = encode_typed_data(full_message=copy.deepcopy(full))
    theirs = Account.sign_message(signable, pk)
    assert ours.digest == bytes(theirs.message_hash)
    assert hash_typed_data(full).domain_separator == bytes(signable.header)
    assert ours.signature == bytes(theirs.signature)


TX_TYPES = [0, 1, 2, 3, 4]


@pytest.mark.parametrize("tx_type", TX_TYPES)
@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(data=st.data(), pk=gen.private_keys)
def test_transaction_matches_eth_account(tx_type: int, data: st.DataObject, pk: bytes) -> None:
    check_transaction(pk, data.draw(gen.transactions(tx_type)))


@settings(max_examples=EXAMPLES // 2, **_SETTINGS)
@given(pk=gen.private_keys, values=gen.signed_authorizations())
def test_authorization_matches_eth_account(pk: bytes, values: Any) -> None:
    check_authorization(pk, values)


@settings(max_examples=EXAMPLES // 2, **_SETTINGS)
@given(pk=gen.private_keys, message=gen.byte_messages)
def test_bytes_message_matches_eth_account(pk: bytes, message: bytes) -> None:
    check_bytes_message(pk, message)


@settings(max_examples=EXAMPLES // 2, **_SETTINGS)
@given(pk=gen.private_keys, text=gen.text_messages)
def test_text_message_matches_eth_account(pk: bytes, text: str) -> None:
    check_text_message(pk, text)


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(pk=gen.private_keys, full=gen.typed_data())
def test_typed_data_matches_eth_account(pk: bytes, full: dict[str, Any]) -> None:
    check_typed_data(pk, full)


# ----------------------------- long runs: 2,000 inputs per kind under the thorough profile


@pytest.mark.slow
@pytest.mark.parametrize("tx_type", TX_TYPES)
@settings(**_SETTINGS)  # examples: the profile's (thorough: 2,000)
@given(data=st.data(), pk=gen.private_keys)
def test_transaction_matches_eth_account_long(tx_type: int, data: st.DataObject, pk: bytes) -> None:
    check_transaction(pk, data.draw(gen.transactions(tx_type)))


@pytest.mark.slow
@settings(**_SETTINGS)  # examples: the profile's (thorough: 2,000)
@given(pk=gen.private_keys, data=st.data())
def test_messages_match_eth_account_long(pk: bytes, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        check_bytes_message(pk, data.draw(gen.byte_messages))
    else:
        check_text_message(pk, data.draw(gen.text_messages))


@pytest.mark.slow
@settings(**_SETTINGS)  # examples: the profile's (thorough: 2,000)
@given(pk=gen.private_keys, full=gen.typed_data())
def test_typed_data_matches_eth_account_long(pk: bytes, full: dict[str, Any]) -> None:
    check_typed_data(pk, full)
