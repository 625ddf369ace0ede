"""web3.py, unchanged, as a client of the relay's JSON-RPC (POST /) on the simulated
appliance: every signature is recovered by eth-account and must name the account."""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils.crypto import keccak
from web3 import HTTPProvider, Web3
from web3.exceptions import MethodUnavailable, Web3RPCError

from nitro_sim.stack import LocalStack
from tests.stack_helpers import CHAIN_ID, create_account
from tests.test_relay_stack_signing import TYPED

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def w3(stack: LocalStack) -> Web3:
    return Web3(Web3.HTTPProvider(stack.relay_url, request_kwargs={"timeout": 60}))


@pytest.fixture(scope="module")
def address(stack: LocalStack) -> str:
    created: str = create_account(stack)["address"]
    return created


def test_accounts_lists_the_account(w3: Web3, address: str) -> None:
    accounts = w3.eth.accounts
    assert address in accounts
    assert all(Web3.is_checksum_address(a) for a in accounts)


def _eip1559(sender: str, nonce: int = 0) -> dict[str, Any]:
    return {
        "from": sender,
        "type": 2,
        "chainId": CHAIN_ID,
        "nonce": nonce,
        "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": Web3.to_wei(1, "ether"),
        "gas": 21000,
        "maxFeePerGas": Web3.to_wei(2, "gwei"),
        "maxPriorityFeePerGas": Web3.to_wei(1, "gwei"),
        "data": "0xdeadbeef",
    }


def test_sign_transaction_eip1559(w3: Web3, address: str) -> None:
    signed = w3.eth.sign_transaction(_eip1559(address, 4))  # type: ignore[arg-type]
    raw = bytes(signed["raw"])
    assert raw[0] == 0x02
    assert Account.recover_transaction(raw) == address
    tx: dict[str, Any] = dict(signed["tx"])
    assert bytes(tx["hash"]) == keccak(raw)
    assert tx["nonce"] == 4
    assert tx["value"] == Web3.to_wei(1, "ether")
    assert tx["to"] == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert bytes(tx["input"]) == bytes.fromhex("deadbeef")
    assert tx["chainId"] == CHAIN_ID


def test_sign_transaction_legacy_eip155(w3: Web3, address: str) -> None:
    tx = {
        "from": address,
        "chainId": CHAIN_ID,
        "nonce": 1,
        "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": 5,
        "gas": 21000,
        "gasPrice": Web3.to_wei(20, "gwei"),
    }
    signed = w3.eth.sign_transaction(tx)  # type: ignore[arg-type]
    assert Account.recover_transaction(bytes(signed["raw"])) == address
    decoded: dict[str, Any] = dict(signed["tx"])
    assert decoded["v"] in (CHAIN_ID * 2 + 35, CHAIN_ID * 2 + 36)


def test_eth_sign_recovers(w3: Web3, address: str) -> None:
    signature = w3.eth.sign(address, text="hello from web3")
    recovered = Account.recover_message(encode_defunct(text="hello from web3"), signature=signature)
    assert recovered == address


def test_personal_sign_recovers(w3: Web3, address: str) -> None:
    message = b"\x00binary\xff"
    response = w3.provider.make_request(
        "personal_sign",  # type: ignore[arg-type]
        ["0x" + message.hex(), address],
    )
    signature = response["result"]
    recovered = Account.recover_message(encode_defunct(primitive=message), signature=signature)
    assert recovered == address


@pytest.mark.parametrize("as_string", [True, False])
def test_sign_typed_data_v4_recovers(w3: Web3, address: str, as_string: bool) -> None:
    payload: Any = json.dumps(TYPED) if as_string else TYPED
    response = w3.provider.make_request(
        "eth_signTypedData_v4",  # type: ignore[arg-type]
        [address, payload],
    )
    signature = response["result"]
    recovered = Account.recover_message(encode_typed_data(full_message=TYPED), signature=signature)
    assert recovered == address


def test_batch_of_signatures(w3: Web3, address: str) -> None:
    # web3's batch_requests() refuses signing methods, so send the batch at provider level
    provider = w3.provider
    assert isinstance(provider, HTTPProvider)
    answers = provider.make_batch_request(
        [
            ("personal_sign", ["0x" + b"one".hex(), address]),  # type: ignore[list-item]
            ("eth_sign", [address, "0x" + b"two".hex()]),  # type: ignore[list-item]
            ("eth_accounts", []),  # type: ignore[list-item]
        ]
    )
    assert isinstance(answers, list)
    one, two, accounts = (answer["result"] for answer in answers)
    assert Account.recover_message(encode_defunct(text="one"), signature=one) == address
    assert Account.recover_message(encode_defunct(text="two"), signature=two) == address
    assert address in accounts


def test_unknown_from_is_a_clear_error(w3: Web3) -> None:
    stranger = Account.create().address
    with pytest.raises(Web3RPCError, match="unknown account"):
        w3.eth.sign_transaction(_eip1559(stranger))  # type: ignore[arg-type]


def test_decimal_amount_message_reaches_web3(w3: Web3, address: str) -> None:
    tx = {**_eip1559(address), "value": "1000", "chainId": hex(CHAIN_ID)}
    response = w3.provider.make_request(
        "eth_signTransaction",  # type: ignore[arg-type]
        [{k: hex(v) if isinstance(v, int) else v for k, v in tx.items()}],
    )
    error: dict[str, Any] = dict(response["error"])
    assert error["code"] == -32000
    assert error["data"] == {"code": "invalid_params"}
    assert "decimal strings are not accepted" in error["message"]


def test_chain_id_without_configuration_is_method_not_found(w3: Web3) -> None:
    with pytest.raises((MethodUnavailable, Web3RPCError), match="no chain id is configured"):
        _ = w3.eth.chain_id
