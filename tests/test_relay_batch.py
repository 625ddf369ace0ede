"""Batch signing: REST ``POST /v1/accounts/{id}/sign/transactions`` and
``WalletService.sign_batch`` (mixed ops and accounts, for JSON-RPC batches), against a
fake enclave that signs with real keys, so every signature is recovered by eth-account."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from prometheus_client.parser import text_string_to_metric_families

from parent_app.service import BatchItem
from tests.fake_enclave import FakeStack, real_address, real_private_key
from tests.test_enclave_batch import TYPED_DATA

TYPED = TYPED_DATA  # the enclave batch tests' typed data
#: The caller the service passes on (a relay-asserted identity with every scope).
AUTH = {"relay": {"principal": "test-client", "scopes": ["create", "read", "sign"]}}


def tx(nonce: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "0x2",
        "chainId": 11155111,
        "nonce": nonce,
        "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": hex(nonce + 1),
        "gas": 21000,
        "maxFeePerGas": 2_000_000_000,
        "maxPriorityFeePerGas": 1_000_000_000,
        **extra,
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path, real_keys=True)
    yield started
    started.stop()


def sign_batch(stack: FakeStack, account_id: str, transactions: Any) -> Any:
    return stack.call(
        "POST", f"/v1/accounts/{account_id}/sign/transactions", {"transactions": transactions}
    )


def test_a_batch_is_one_frame_and_every_signature_recovers_in_order(stack: FakeStack) -> None:
    account = stack.create()
    assert account["address"] == real_address(account["account_id"])
    transactions = [tx(nonce) for nonce in range(50)]
    answer = sign_batch(stack, account["account_id"], transactions)
    assert answer.status == 200
    results = answer.json()["results"]
    assert len(results) == 50
    assert stack.enclave.ops().count("sign_batch") == 1
    assert "sign_transaction" not in stack.enclave.ops()
    for nonce, result in enumerate(results):
        assert set(result) == {"raw_transaction", "hash"}
        assert Account.recover_transaction(result["raw_transaction"]) == account["address"]
        expected = Account.sign_transaction(tx(nonce), real_private_key(account["account_id"]))
        assert result["raw_transaction"] == "0x" + expected.raw_transaction.hex()  # in order
    # Each item equals what the single-op endpoint answers for the same transaction.
    for nonce in (0, 17, 49):
        single = stack.call(
            "POST",
            f"/v1/accounts/{account['account_id']}/sign/transaction",
            {"transaction": tx(nonce)},
        )
        assert single.json() == results[nonce]


def test_items_fail_on_their_own(stack: FakeStack) -> None:
    account = stack.create()
    transactions: list[Any] = [
        tx(0),
        tx(1, value="1000"),  # a decimal string: the enclave refuses this item only
        "not an object",  # the relay refuses this item only; it is never sent
        tx(3, **{"from": "0x" + "22" * 20}),  # not the account's address
        tx(4),
    ]
    answer = sign_batch(stack, account["account_id"], transactions)
    assert answer.status == 200
    results = answer.json()["results"]
    assert [set(r) for r in results] == [
        {"raw_transaction", "hash"},
        {"error"},
        {"error"},
        {"error"},
        {"raw_transaction", "hash"},
    ]
    assert results[1]["error"]["code"] == "invalid_params"
    assert "decimal strings" in results[1]["error"]["message"]
    assert results[2]["error"] == {
        "code": "invalid_request",
        "message": "transactions[2] must be a JSON object",
    }
    assert results[3]["error"]["code"] == "invalid_params"
    for index in (0, 4):
        assert Account.recover_transaction(results[index]["raw_transaction"]) == account["address"]
    (frame,) = [r for r in stack.enclave.requests if r.op == "sign_batch"]
    assert len(frame.params["items"]) == 4
    metrics = {
        (s.labels["op"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(stack.metrics())
        if family.name == "nitro_wallet_relay_batch_items"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert metrics == {
        ("sign_transaction", "ok"): 2,
        ("sign_transaction", "invalid_params"): 2,
    }


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"transactions": []}, 400, "invalid_request"),
        ({"transactions": [tx(n) for n in range(101)]}, 400, "invalid_request"),
        ({"transactions": {"0": tx(0)}}, 400, "invalid_request"),
        ({"transactions": [tx(0)], "extra": 1}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
    ],
)
def test_the_envelope_is_checked_before_the_enclave(
    stack: FakeStack, body: dict[str, Any], status: int, code: str
) -> None:
    account_id = stack.create()["account_id"]
    answer = stack.call("POST", f"/v1/accounts/{account_id}/sign/transactions", body)
    assert (answer.status, answer.error_code) == (status, code)
    assert "sign_batch" not in stack.enclave.ops()


def test_unknown_account_is_404_for_the_whole_batch(stack: FakeStack) -> None:
    answer = sign_batch(stack, str(uuid.uuid4()), [tx(0)])
    assert (answer.status, answer.error_code) == (404, "account_not_found")


def test_a_batch_of_100_fits_the_default_body_cap(stack: FakeStack) -> None:
    account = stack.create()
    padded = [tx(n, data="0x" + "ab" * 2000) for n in range(100)]  # ~400 KB of JSON
    answer = sign_batch(stack, account["account_id"], padded)
    assert answer.status == 200
    assert len(answer.json()["results"]) == 100


def test_enclave_failures_of_the_whole_frame(stack: FakeStack) -> None:
    account_id = stack.create()["account_id"]
    stack.enclave.batch_results_override = [{"ok": True, "result": {}}]  # one for two
    answer = sign_batch(stack, account_id, [tx(0), tx(1)])
    assert (answer.status, answer.error_code) == (502, "enclave_bad_response")
    # A malformed item fails that item only.
    stack.enclave.batch_results_override = [
        {"ok": True, "result": {"raw_transaction": "0x02", "hash": "0x1234"}},
        {"ok": False, "error": {"code": "kms_unavailable", "message": "KMS timed out"}},
        "nonsense",
    ]
    results = sign_batch(stack, account_id, [tx(0), tx(1), tx(2)]).json()["results"]
    assert results[0]["error"]["code"] == "enclave_bad_response"
    assert results[1]["error"] == {"code": "kms_unavailable", "message": "KMS timed out"}
    assert results[2]["error"]["code"] == "enclave_bad_response"
    stack.enclave.batch_results_override = None
    stack.enclave.stop()
    answer = sign_batch(stack, account_id, [tx(0)])
    assert (answer.status, answer.error_code) == (503, "enclave_unavailable")
    assert answer.headers["Retry-After"] == "1"


def test_service_sign_batch_mixes_ops_and_accounts(stack: FakeStack) -> None:
    first, second = stack.create(), stack.create()
    missing = str(uuid.uuid4())
    service = stack.relay.server.api.service
    outcomes = service.sign_batch(
        [
            BatchItem("sign_transaction", first["account_id"], tx(0)),
            BatchItem("sign_message", second["account_id"], "hello"),
            BatchItem("sign_typed_data", first["account_id"], TYPED),
            BatchItem("sign_message", missing, "0x01"),
            BatchItem(
                "sign_authorization",
                second["account_id"],
                {"chainId": 1, "address": "0x" + "33" * 20, "nonce": 7},
            ),
            BatchItem("sign_message", first["account_id"], "0x68656c6c6f"),
        ],
        AUTH,
    )
    assert len(outcomes) == 6
    results = [outcome.result for outcome in outcomes]
    assert results[0] is not None
    assert Account.recover_transaction(results[0]["raw_transaction"]) == first["address"]
    assert results[1] is not None
    recovered = Account.recover_message(
        encode_defunct(text="hello"), signature=results[1]["signature"]
    )
    assert recovered == second["address"]
    assert results[2] is not None
    typed = encode_typed_data(full_message=TYPED)
    assert Account.recover_message(typed, signature=results[2]["signature"]) == first["address"]
    error = outcomes[3].error
    assert error is not None
    assert (error.status, error.code) == (404, "account_not_found")
    assert results[4] is not None
    assert results[4]["authorization"]["nonce"] == "0x7"
    assert results[5] is not None
    by_hex = encode_defunct(hexstr="0x68656c6c6f")
    assert Account.recover_message(by_hex, signature=results[5]["signature"]) == first["address"]
    (frame,) = [r for r in stack.enclave.requests if r.op == "sign_batch"]
    assert [a["account_id"] for a in frame.params["accounts"]] == [
        first["account_id"],
        second["account_id"],
    ]
    assert [(i["op"], i["account"]) for i in frame.params["items"]] == [
        ("sign_transaction", 0),
        ("sign_message", 1),
        ("sign_typed_data", 0),
        ("sign_authorization", 1),
        ("sign_message", 0),
    ]


def test_service_sign_batch_bounds(stack: FakeStack) -> None:
    service = stack.relay.server.api.service
    account_id = stack.create()["account_id"]
    with pytest.raises(Exception, match="1 to 100"):
        service.sign_batch([], AUTH)
    with pytest.raises(Exception, match="1 to 100"):
        service.sign_batch([BatchItem("sign_message", account_id, "x")] * 101, AUTH)
    with pytest.raises(ValueError, match="not a batch signing op"):
        service.sign_batch([BatchItem("generate_account", account_id, {})], AUTH)
