"""``sign_batch`` through the real enclave: order, per-item results, envelope errors,
one unlock per account, and parallel cold unlocks within the KMS bound."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from enclave_app.errors import EnclaveError, ErrorCode
from tests.enclave_rig import EnclaveRig, error_code
from tests.stack_helpers import eip1559

MESSAGE = "0x" + b"batch".hex()
TYPED_DATA: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "chainId", "type": "uint256"},
        ],
        "Mail": [{"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "batch", "chainId": 1},
    "message": {"contents": "hello"},
}
AUTHORIZATION = {
    "chainId": "0x1",
    "address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "nonce": "0x7",
}


@pytest.fixture(scope="module")
def rig() -> Iterator[EnclaveRig]:
    root = Path(tempfile.mkdtemp(prefix="nwb-", dir="/tmp"))
    try:
        with EnclaveRig(root, kms_concurrency=3) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def accounts(rig: EnclaveRig) -> list[dict[str, Any]]:
    return [rig.create_account() for _ in range(3)]


def batch(
    rig: EnclaveRig, accounts: list[dict[str, Any]], items: list[Any]
) -> list[dict[str, Any]]:
    result = rig.call(
        "sign_batch", {"credentials": rig.credentials, "accounts": accounts, "items": items}
    )
    assert len(result["results"]) == len(items)
    return list(result["results"])


def tx_item(account: int, nonce: int, **overrides: Any) -> dict[str, Any]:
    return {
        "op": "sign_transaction",
        "account": account,
        "transaction": eip1559(nonce, **overrides),
    }


def test_results_come_back_in_order_and_each_recovers_to_its_account(
    rig: EnclaveRig, accounts: list[dict[str, Any]]
) -> None:
    items = [
        tx_item(2, 0),
        {"op": "sign_message", "account": 0, "message": MESSAGE},
        tx_item(0, 1),
        {"op": "sign_typed_data", "account": 1, "typed_data": TYPED_DATA},
        {"op": "sign_authorization", "account": 2, "authorization": AUTHORIZATION},
        tx_item(2, 5),
    ]
    results = batch(rig, accounts, items)
    assert all(r["ok"] for r in results)
    address = [a["address"] for a in accounts]
    tx0, message, tx1, typed, authorization, tx2 = (r["result"] for r in results)
    assert Account.recover_transaction(tx0["raw_transaction"]) == address[2]
    assert Account.recover_transaction(tx1["raw_transaction"]) == address[0]
    assert Account.recover_transaction(tx2["raw_transaction"]) == address[2]
    assert len({tx["raw_transaction"] for tx in (tx0, tx1, tx2)}) == 3
    signed = encode_defunct(hexstr=MESSAGE)
    assert Account.recover_message(signed, signature=message["signature"]) == address[0]
    typed_signable = encode_typed_data(full_message=TYPED_DATA)
    assert Account.recover_message(typed_signable, signature=typed["signature"]) == address[1]
    assert authorization["authorization"]["nonce"] == "0x7"
    # Each result equals what the single op answers for the same payload.
    single = rig.call(
        "sign_transaction",
        {"account": accounts[2], "credentials": rig.credentials, "transaction": eip1559(0)},
    )
    assert single == tx0


def test_a_bad_item_fails_alone(rig: EnclaveRig, accounts: list[dict[str, Any]]) -> None:
    items = [
        tx_item(0, 0),
        tx_item(0, 1, value="12"),  # a decimal string
        {"op": "sign_transaction", "account": 1, "transaction": {**eip1559(2), "bogus": 1}},
        tx_item(1, 3, **{"from": accounts[0]["address"]}),  # from another account
        {"op": "sign_message", "account": 2},  # payload missing
        {"op": "sign_message", "account": 2, "message": MESSAGE, "extra": 1},
        tx_item(2, 4),
    ]
    results = batch(rig, accounts, items)
    assert [r["ok"] for r in results] == [True, False, False, False, False, False, True]
    assert all(r["error"]["code"] == "invalid_params" for r in results if not r["ok"])
    assert "bogus" in results[2]["error"]["message"]
    assert "from" in results[3]["error"]["message"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"accounts": [], "items": [{}]}, "accounts must be a list of 1 to 100"),
        ({"items": [{"op": "sign_message", "account": 0, "message": "x"}] * 101}, "items must be"),
        ({"items": []}, "items must be"),
        ({"items": "nope"}, "items must be"),
        ({"items": [{"op": "sign_message", "account": 3, "message": "x"}]}, "index into accounts"),
        ({"items": [{"op": "sign_message", "account": -1, "message": "x"}]}, "index into accounts"),
        ({"items": [{"op": "sign_message", "account": True, "message": "x"}]}, "index into"),
        ({"items": [{"op": "sign_message", "account": "0", "message": "x"}]}, "index into"),
        ({"items": [{"op": "sign_message", "message": "x"}]}, "index into accounts"),
        ({"items": [{"op": "generate_account", "account": 0}]}, "op must be one of"),
        ({"items": [{"op": "sign_batch", "account": 0}]}, "op must be one of"),
        ({"items": ["sign_message"]}, "items[0] must be an object"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_envelope_errors_fail_the_whole_frame(
    rig: EnclaveRig, accounts: list[dict[str, Any]], params: dict[str, Any], message: str
) -> None:
    full = {
        "credentials": rig.credentials,
        "accounts": accounts,
        "items": [{"op": "sign_message", "account": 0, "message": MESSAGE}],
        **params,
    }
    with pytest.raises(EnclaveError) as refused:
        rig.call("sign_batch", full)
    assert refused.value.code is ErrorCode.INVALID_PARAMS
    assert message in refused.value.message


def test_bad_accounts_fail_the_whole_frame(rig: EnclaveRig, accounts: list[dict[str, Any]]) -> None:
    items = [{"op": "sign_message", "account": 0, "message": MESSAGE}]

    def call(batch_accounts: list[Any]) -> object:
        return rig.call(
            "sign_batch",
            {"credentials": rig.credentials, "accounts": batch_accounts, "items": items},
        )

    assert error_code(lambda: call([accounts[0], accounts[0]])) == "invalid_params"
    assert error_code(lambda: call([{**accounts[0], "address": "0x12"}])) == "invalid_params"
    assert error_code(lambda: call([accounts[0]] * 101)) == "invalid_params"
    assert error_code(lambda: call(["record"])) == "invalid_params"


def test_each_account_is_unlocked_once_and_a_refused_one_fails_only_its_items(
    rig: EnclaveRig, accounts: list[dict[str, Any]]
) -> None:
    other = rig.create_account()
    # A record whose data key belongs to another account: KMS refuses it (encryption
    # context), so only the items of that account fail.
    swapped = {**accounts[2], "encrypted_data_key": other["encrypted_data_key"]}
    rig.forget_keys()
    rig.gate.reset()
    items = [tx_item(i % 3, i) for i in range(12)]
    results = batch(rig, [accounts[0], accounts[1], swapped], items)
    assert rig.gate.calls["Decrypt"] == 3
    for i, result in enumerate(results):
        if i % 3 == 2:
            assert result["ok"] is False
            assert result["error"]["code"] == "ciphertext_invalid"
        else:
            assert result["ok"] is True
            raw = result["result"]["raw_transaction"]
            assert Account.recover_transaction(raw) == accounts[i % 3]["address"]
    rig.gate.reset()
    batch(rig, accounts[:2], [tx_item(0, 0), tx_item(1, 0)])
    assert rig.gate.calls["Decrypt"] == 0  # both warm now


def test_cold_accounts_unlock_in_parallel_within_the_kms_bound(rig: EnclaveRig) -> None:
    cold = [rig.create_account() for _ in range(9)]
    rig.forget_keys()
    rig.gate.reset()
    rig.gate.delay = 0.3
    try:
        results = batch(rig, cold, [tx_item(i, 0) for i in range(len(cold))])
    finally:
        rig.gate.delay = 0.0
    assert all(r["ok"] for r in results)
    assert rig.gate.calls["Decrypt"] == 9
    assert rig.gate.max_in_flight == 3  # in parallel, up to the bound (kms_concurrency=3)
