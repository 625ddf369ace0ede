"""The enclave reads the stamped request itself; an op must be exactly one of its intents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from enclave_app.auth.intents import OpItem, match_items, parse_intents
from enclave_app.errors import EnclaveError, ErrorCode

ID = "6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f"
OTHER_ID = "7f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f"
ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
OTHER_ADDRESS = "0x" + "11" * 20
TX = {
    "type": "0x2",
    "chainId": 1,
    "nonce": 0,
    "to": OTHER_ADDRESS,
    "value": "0x1",
    "gas": 21000,
    "maxFeePerGas": "0x1",
    "maxPriorityFeePerGas": "0x1",
}


def check(path: str, body: Any, *items: OpItem) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    match_items(parse_intents("POST", path, raw), items)


def refused(path: str, body: Any, *items: OpItem) -> None:
    with pytest.raises(EnclaveError) as caught:
        check(path, body, *items)
    assert caught.value.code == ErrorCode.REQUEST_MISMATCH


def rest(kind: str) -> str:
    return f"/v1/accounts/{ID}/sign/{kind}"


# -- REST -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field", "op", "payload"),
    [
        ("transaction", "transaction", "sign_transaction", TX),
        ("message", "message", "sign_message", "hello"),
        ("typed-data", "typed_data", "sign_typed_data", {"types": {}, "primaryType": "X"}),
        ("authorization", "authorization", "sign_authorization", {"chainId": 1, "nonce": 0}),
    ],
)
def test_each_rest_route_yields_its_op(kind: str, field: str, op: str, payload: Any) -> None:
    check(rest(kind), {field: payload}, OpItem(op, ID, ADDRESS, payload))
    refused(rest(kind), {field: payload}, OpItem(op, OTHER_ID, ADDRESS, payload))  # account
    other_op = "sign_message" if op != "sign_message" else "sign_transaction"
    refused(rest(kind), {field: payload}, OpItem(other_op, ID, ADDRESS, payload))


@pytest.mark.parametrize(
    "tampered",
    [
        {**TX, "to": ADDRESS},  # redirected
        {**TX, "value": "0x2"},
        {**TX, "value": 1},  # same number, other JSON type
        {**TX, "chainId": 5},
        {k: v for k, v in TX.items() if k != "to"},  # dropped "to": a contract creation
        {**TX, "data": "0xa9059cbb"},  # added calldata
        {**TX, "chainId": True},  # True == 1 in Python, not in JSON
    ],
)
def test_a_relay_that_changes_a_rest_transaction_is_refused(tampered: dict[str, Any]) -> None:
    refused(
        rest("transaction"), {"transaction": TX}, OpItem("sign_transaction", ID, ADDRESS, tampered)
    )


def test_the_rest_body_must_be_exactly_the_payload_object() -> None:
    refused(
        rest("message"), {"message": "hi", "extra": 1}, OpItem("sign_message", ID, ADDRESS, "hi")
    )
    refused(
        rest("message"),
        b'{"message": "hi", "message": "ho"}',
        OpItem("sign_message", ID, ADDRESS, "ho"),
    )
    refused(rest("message"), b'{"message": 1.5}', OpItem("sign_message", ID, ADDRESS, "x"))
    refused(rest("message"), b"[]", OpItem("sign_message", ID, ADDRESS, "x"))


def test_paths_that_do_not_reach_the_enclave_are_refused() -> None:
    for path in (
        "/v1/accounts/" + ID,
        "/v1/attestation",
        "/v1/accounts/" + ID.upper() + "/sign/message",
        rest("message") + "?x=1",
    ):
        refused(path, {"message": "hi"}, OpItem("sign_message", ID, ADDRESS, "hi"))
    with pytest.raises(EnclaveError) as caught:
        parse_intents("GET", rest("message"), b"")
    assert caught.value.code == ErrorCode.REQUEST_MISMATCH


def test_account_creation_binds_the_requested_id_and_the_metadata() -> None:
    keys = [{"id": "k1", "public_key": "PEM", "scopes": ["sign"]}]
    body = {"account_id": ID, "labels": ["hot"], "stamp_keys": keys}
    meta = {"labels": ["hot"], "stamp_keys": keys}
    check("/v1/accounts", body, OpItem("generate_account", ID, "", meta))
    refused("/v1/accounts", body, OpItem("generate_account", OTHER_ID, "", meta))
    relay_key = [*keys, {"id": "relay", "public_key": "PEM2", "scopes": ["sign"]}]
    refused(
        "/v1/accounts", body, OpItem("generate_account", ID, "", {**meta, "stamp_keys": relay_key})
    )
    check("/v1/accounts", b"", OpItem("generate_account", OTHER_ID, "", {}))
    check("/v1/accounts", {}, OpItem("generate_account", OTHER_ID, "", {}))


# -- JSON-RPC -----------------------------------------------------------------------------


def rpc(method: str, params: list[Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def test_json_rpc_methods_bind_the_address_from_the_body() -> None:
    tx = {**TX, "from": ADDRESS}
    check("/", rpc("eth_signTransaction", [tx]), OpItem("sign_transaction", ID, ADDRESS, tx))
    check(
        "/", rpc("eth_sign", [ADDRESS.lower(), "0x68"]), OpItem("sign_message", ID, ADDRESS, "0x68")
    )
    check(
        "/", rpc("personal_sign", ["hello", ADDRESS]), OpItem("sign_message", ID, ADDRESS, "hello")
    )
    refused(
        "/",
        rpc("personal_sign", ["hello", ADDRESS]),
        OpItem("sign_message", ID, OTHER_ADDRESS, "hello"),
    )


def test_typed_data_may_be_sent_as_a_json_string() -> None:
    typed = {
        "types": {"EIP712Domain": []},
        "primaryType": "EIP712Domain",
        "domain": {},
        "message": {},
    }
    body = rpc("eth_signTypedData_v4", [ADDRESS, json.dumps(typed)])
    check("/", body, OpItem("sign_typed_data", ID, ADDRESS, typed))
    refused("/", body, OpItem("sign_typed_data", ID, ADDRESS, {**typed, "primaryType": "Mail"}))


def test_the_relay_may_fill_only_fields_the_client_left_out() -> None:
    stamped = {k: v for k, v in TX.items() if k != "chainId"} | {"from": ADDRESS}
    filled = {**stamped, "chainId": "0xaa36a7"}
    check(
        "/", rpc("eth_signTransaction", [stamped]), OpItem("sign_transaction", ID, ADDRESS, filled)
    )
    # Not a fillable field for eth_signTransaction:
    refused(
        "/",
        rpc("eth_signTransaction", [stamped]),
        OpItem("sign_transaction", ID, ADDRESS, {**filled, "data": "0x00"}),
    )
    # A field the client sent may not be overwritten:
    refused(
        "/",
        rpc("eth_signTransaction", [{**stamped, "chainId": 1}]),
        OpItem("sign_transaction", ID, ADDRESS, filled),
    )
    # eth_sendTransaction: the node's nonce, gas and fees may be filled in.
    bare = {"from": ADDRESS, "to": OTHER_ADDRESS, "value": "0x1"}
    sent = {
        **bare,
        "nonce": "0x5",
        "gas": "0x5208",
        "maxFeePerGas": "0x2",
        "maxPriorityFeePerGas": "0x1",
        "chainId": "0x1",
        "type": "0x2",
    }
    check("/", rpc("eth_sendTransaction", [bare]), OpItem("sign_transaction", ID, ADDRESS, sent))
    refused(
        "/",
        rpc("eth_sendTransaction", [bare]),
        OpItem("sign_transaction", ID, ADDRESS, {**sent, "to": ADDRESS}),
    )


def test_a_batch_matches_in_order_and_may_skip_but_never_reuse_an_intent() -> None:
    body = [
        rpc("personal_sign", ["a", ADDRESS], 1),
        rpc("eth_accounts", [], 2),
        rpc("personal_sign", ["b", ADDRESS], 3),
    ]
    a, b = (OpItem("sign_message", ID, ADDRESS, text) for text in ("a", "b"))
    check("/", body, a, b)
    check("/", body, b)  # the relay refused "a" itself
    refused("/", body, b, a)  # reordered
    refused("/", body, a, a)  # "a" signed twice
    refused("/", body, a, b, b)


@pytest.mark.parametrize(
    "body",
    [
        rpc("eth_accounts", []),
        rpc("personal_sign", ["hello", "not-an-address"]),
        rpc("personal_sign", ["hello"]),
        {"jsonrpc": "2.0", "id": 1, "method": "personal_sign", "params": {"a": 1}},
        rpc("eth_signTypedData_v4", [ADDRESS, "{not json"]),
        [1, "x"],
    ],
)
def test_requests_the_relay_refuses_itself_yield_no_intent(body: Any) -> None:
    refused("/", body, OpItem("sign_message", ID, ADDRESS, "hello"))


# -- routes and aliases the relay serves as well -----------------------------------------


def test_the_batch_route_yields_one_transaction_per_element() -> None:
    second = {**TX, "nonce": 1}
    body = {"transactions": [TX, second]}
    path = rest("transactions")
    check(
        path,
        body,
        OpItem("sign_transaction", ID, ADDRESS, TX),
        OpItem("sign_transaction", ID, ADDRESS, second),
    )
    check(path, body, OpItem("sign_transaction", ID, ADDRESS, second))  # the relay left one out
    refused(path, body, OpItem("sign_transaction", OTHER_ID, ADDRESS, TX))  # other account
    refused(path, body, OpItem("sign_transaction", ID, ADDRESS, {**TX, "nonce": 2}))  # changed
    refused(  # the same transaction twice: each element is one op at most
        path,
        {"transactions": [TX]},
        OpItem("sign_transaction", ID, ADDRESS, TX),
        OpItem("sign_transaction", ID, ADDRESS, TX),
    )
    refused(path, {"transactions": [TX], "extra": 1}, OpItem("sign_transaction", ID, ADDRESS, TX))
    refused(path, {"transactions": TX}, OpItem("sign_transaction", ID, ADDRESS, TX))


def test_the_geth_url_is_the_same_json_rpc() -> None:
    body = rpc("personal_sign", ["0x68656c6c6f", ADDRESS])
    check("/geth", body, OpItem("sign_message", ID, ADDRESS, "0x68656c6c6f"))
    refused("/geth", body, OpItem("sign_message", ID, ADDRESS, "0x00"))
    refused("/other", body, OpItem("sign_message", ID, ADDRESS, "0x68656c6c6f"))


@pytest.mark.parametrize("method", ["eth_signTypedData", "eth_signTypedData_v3"])
def test_geths_typed_data_aliases_sign_typed_data(method: str) -> None:
    typed = {
        "types": {"EIP712Domain": []},
        "primaryType": "EIP712Domain",
        "domain": {},
        "message": {},
    }
    body = rpc(method, [ADDRESS, typed])
    check("/", body, OpItem("sign_typed_data", ID, ADDRESS, typed))
    refused("/", body, OpItem("sign_typed_data", ID, ADDRESS, {**typed, "domain": {"name": "x"}}))
    refused("/", body, OpItem("sign_message", ID, ADDRESS, typed))
