"""Ethereum JSON-RPC on the relay's port (POST / and /geth), against the framed fake
enclave over real loopback sockets: methods, aliases, result shapes, chain ids, batches,
notifications, every error code. The upstream node is in test_jsonrpc_upstream.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rlp
from eth_utils.crypto import keccak
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_enclave import FakeStack, HttpAnswer, fake_message_signature, fake_signature

CHAIN_ID = 11155111
TYPED = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}],
        "Mail": [{"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail"},
    "message": {"contents": "Hello"},
}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path, max_batch_requests=4)
    yield started
    started.stop()


@pytest.fixture
def chained(tmp_path: Path) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path, chain_id=CHAIN_ID)
    yield started
    started.stop()


def post(fake: FakeStack, payload: Any, path: str = "/") -> HttpAnswer:
    return fake.call("POST", path, payload)


def post_raw(fake: FakeStack, raw: bytes) -> HttpAnswer:
    return fake.call("POST", "/", raw=raw, headers={"Content-Type": "application/json"})


def rpc(
    fake: FakeStack, method: str, params: Any = None, request_id: Any = 1, path: str = "/"
) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    answer = post(fake, request, path)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == request_id
    return body


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert "result" not in body, body
    error: dict[str, Any] = body["error"]
    return error


def tx(address: str, **fields: Any) -> dict[str, Any]:
    return {
        "from": address,
        "type": "0x2",
        "chainId": hex(CHAIN_ID),
        "nonce": "0x0",
        "to": "0x" + "11" * 20,
        "value": "0x1",
        "gas": "0x5208",
        "maxFeePerGas": "0x2",
        "maxPriorityFeePerGas": "0x1",
        **fields,
    }


# -- methods ------------------------------------------------------------------------


def test_eth_accounts_lists_checksummed_addresses_in_creation_order(fake: FakeStack) -> None:
    assert rpc(fake, "eth_accounts", [])["result"] == []
    created = [fake.create()["address"] for _ in range(3)]
    result = rpc(fake, "eth_accounts")["result"]
    assert result == created
    assert all(address != address.lower() for address in result)  # EIP-55 mixed case


def test_eth_sign_transaction_answers_the_raw_transaction_string(fake: FakeStack) -> None:
    account = fake.create()
    request_tx = tx(account["address"].lower())
    result = rpc(fake, "eth_signTransaction", [request_tx])["result"]
    sent = next(r for r in fake.enclave.requests if r.op == "sign_transaction")
    assert sent.params["transaction"] == request_tx  # passed through unchanged
    assert sent.params["account"]["account_id"] == account["account_id"]
    # the string anvil answers, and cast, ethers and viem expect
    assert result == fake_signature(account["address"], request_tx)["raw_transaction"]


def test_geth_path_answers_raw_and_decoded_tx(fake: FakeStack) -> None:
    account = fake.create()
    result = rpc(fake, "eth_signTransaction", [tx(account["address"])], path="/geth")["result"]
    assert set(result) == {"raw", "tx"}
    raw = bytes.fromhex(result["raw"][2:])
    fields = rlp.decode(raw[1:])  # independent decoder
    decoded = result["tx"]
    assert decoded["type"] == "0x2"
    assert decoded["hash"] == "0x" + keccak(raw).hex()
    assert decoded["input"] == "0x" + fields[7].hex()
    assert decoded["r"] == hex(int.from_bytes(fields[10], "big"))
    assert decoded["s"] == hex(int.from_bytes(fields[11], "big"))
    assert decoded["yParity"] == decoded["v"] == "0x1"
    assert decoded["to"] == "0x" + "11" * 20
    assert decoded["gas"] == hex(21000)
    # every other method answers the same on both paths
    assert rpc(fake, "eth_accounts", path="/geth")["result"] == [account["address"]]


def test_eth_sign_transaction_needs_a_known_from(fake: FakeStack) -> None:
    fake.create()
    missing = error_of(rpc(fake, "eth_signTransaction", [{"nonce": 0}]))
    assert missing["code"] == -32602
    assert "from is required" in missing["message"]
    unknown_address = "0x" + "ab" * 20
    unknown = error_of(rpc(fake, "eth_signTransaction", [tx(unknown_address)]))
    assert unknown["code"] == -32001
    assert unknown["data"] == {"code": "account_not_found"}
    assert "unknown account" in unknown["message"]
    assert unknown_address.lower() in unknown["message"].lower()
    bad_checksum = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"
    assert error_of(rpc(fake, "eth_signTransaction", [tx(bad_checksum)]))["code"] == -32602
    assert error_of(rpc(fake, "eth_signTransaction", [tx("0x1234")]))["code"] == -32602
    assert error_of(rpc(fake, "eth_signTransaction", ["0x02"]))["code"] == -32602
    assert error_of(rpc(fake, "eth_signTransaction", []))["code"] == -32602
    assert "sign_transaction" not in fake.enclave.ops()


def test_eth_sign_and_personal_sign(fake: FakeStack) -> None:
    address = fake.create()["address"]
    signed = rpc(fake, "eth_sign", [address, "0x68656c6c6f"])["result"]
    assert signed == fake_message_signature(address, "message", "0x68656c6c6f")["signature"]
    personal = rpc(fake, "personal_sign", ["0x68656c6c6f", address.lower()])["result"]
    assert personal == signed
    text = rpc(fake, "personal_sign", ["hello", address])["result"]
    assert text == fake_message_signature(address, "message", "hello")["signature"]
    # eth_sign takes hex bytes only (as geth); the param order is [address, data]
    assert error_of(rpc(fake, "eth_sign", [address, "hello"]))["code"] == -32602
    assert error_of(rpc(fake, "eth_sign", [address, "0x123"]))["code"] == -32602
    assert error_of(rpc(fake, "eth_sign", ["0x68656c6c6f", address]))["code"] == -32602
    assert error_of(rpc(fake, "personal_sign", ["hi", address, "password"]))["code"] == -32602
    assert error_of(rpc(fake, "personal_sign", [5, address]))["code"] == -32602


def test_eth_sign_typed_data_v4_takes_an_object_or_a_json_string(fake: FakeStack) -> None:
    address = fake.create()["address"]
    expected = fake_message_signature(address, "typed_data", TYPED)["signature"]
    assert rpc(fake, "eth_signTypedData_v4", [address, TYPED])["result"] == expected
    assert rpc(fake, "eth_signTypedData_v4", [address, json.dumps(TYPED)])["result"] == expected
    floaty = json.dumps(TYPED).replace('"Hello"', "1.5")
    error = error_of(rpc(fake, "eth_signTypedData_v4", [address, floaty]))
    assert error["code"] == -32602
    assert "floating-point numbers are not accepted" in error["message"]
    assert "typedData.message.contents" in error["message"]
    for bad in ("{not json", "[]", '{"a": 1, "a": 2}', 5):
        assert error_of(rpc(fake, "eth_signTypedData_v4", [address, bad]))["code"] == -32602


def test_chain_id_methods_are_absent_without_a_chain_id_or_an_upstream(fake: FakeStack) -> None:
    for method in ("eth_chainId", "net_version"):
        error = error_of(rpc(fake, method, []))
        assert error["code"] == -32601
        assert f"the method {method} does not exist/is not available" in error["message"]
        assert "no chain id is configured ([relay] chain_id)" in error["message"]


def test_chain_id_methods_answer_the_default_chain_id(chained: FakeStack) -> None:
    assert rpc(chained, "eth_chainId", [])["result"] == hex(CHAIN_ID)
    assert rpc(chained, "net_version")["result"] == str(CHAIN_ID)
    assert error_of(rpc(chained, "eth_chainId", [1]))["code"] == -32602


@pytest.mark.parametrize("absent", [{}, {"chainId": None}])
def test_a_transaction_without_chain_id_gets_the_default(
    chained: FakeStack, absent: dict[str, Any]
) -> None:
    address = chained.create()["address"]
    without = {k: v for k, v in tx(address).items() if k != "chainId"} | absent
    assert "result" in rpc(chained, "eth_signTransaction", [without])
    sent = next(r for r in chained.enclave.requests if r.op == "sign_transaction")
    assert sent.params["transaction"]["chainId"] == hex(CHAIN_ID)


@pytest.mark.parametrize("chain_id", [1, "0x1", 2**64 - 1])
def test_a_transaction_keeps_its_own_chain_id(chained: FakeStack, chain_id: Any) -> None:
    address = chained.create()["address"]
    assert "result" in rpc(chained, "eth_signTransaction", [tx(address, chainId=chain_id)])
    sent = next(r for r in chained.enclave.requests if r.op == "sign_transaction")
    assert sent.params["transaction"]["chainId"] == chain_id  # the policy decides, later


@pytest.mark.parametrize("chain_id", [0, "0x0"])
def test_chain_id_zero_is_refused_as_pre_eip155(chained: FakeStack, chain_id: Any) -> None:
    address = chained.create()["address"]
    legacy = {**tx(address, chainId=chain_id, gasPrice="0x1", type="0x0")}
    for fee in ("maxFeePerGas", "maxPriorityFeePerGas"):
        del legacy[fee]
    error = error_of(rpc(chained, "eth_signTransaction", [legacy]))
    assert error["code"] == -32602
    assert "pre-EIP-155" in error["message"]
    assert "only replay-protected (EIP-155) transactions" in error["message"]
    assert "sign_transaction" not in chained.enclave.ops()


# -- geth's aliases ---------------------------------------------------------------------

NESTED = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}],
        "Person": [{"name": "name", "type": "string"}, {"name": "friends", "type": "Person[]"}],
        "Group": [{"name": "lead", "type": "Person"}, {"name": "size", "type": "uint8"}],
    },
    "primaryType": "Group",
    "domain": {"name": "Nested"},
    "message": {"lead": {"name": "Ann", "friends": []}, "size": 1},
}
WITH_STRUCT = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}],
        "Person": [{"name": "name", "type": "string"}],
        "Mail": [{"name": "from", "type": "Person"}, {"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail"},
    "message": {"from": {"name": "Cow"}, "contents": "Hello"},
}


@pytest.mark.parametrize("method", ["eth_signTypedData", "eth_signTypedData_v3"])
def test_typed_data_aliases_sign_as_v4(fake: FakeStack, method: str) -> None:
    address = fake.create()["address"]
    for typed in (TYPED, WITH_STRUCT):
        expected = fake_message_signature(address, "typed_data", typed)["signature"]
        assert rpc(fake, method, [address, typed])["result"] == expected
        assert rpc(fake, method, [address, json.dumps(typed)])["result"] == expected


def test_eth_sign_typed_data_refuses_the_legacy_v1_form(fake: FakeStack) -> None:
    address = fake.create()["address"]
    v1 = [{"type": "string", "name": "message", "value": "hi"}]
    error = error_of(rpc(fake, "eth_signTypedData", [v1, address]))
    assert error["code"] == -32602
    assert "legacy v1 form" in error["message"]


def _without(typed: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(typed))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


def _with_null(typed: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(typed))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = None
    return copy


@pytest.mark.parametrize(
    ("typed", "phrases"),
    [
        (NESTED, ["has no arrays", "message.lead.friends is Person[]"]),
        (_without(WITH_STRUCT, "message", "contents"), ["message.contents is missing"]),
        (_without(WITH_STRUCT, "message", "from", "name"), ["message.from.name is missing"]),
        (_without(WITH_STRUCT, "domain", "name"), ["domain.name is missing"]),
        (_with_null(WITH_STRUCT, "message", "from"), ["message.from is null"]),
    ],
)
def test_eth_sign_typed_data_v3_refuses_where_v3_and_v4_differ(
    fake: FakeStack, typed: dict[str, Any], phrases: list[str]
) -> None:
    address = fake.create()["address"]
    error = error_of(rpc(fake, "eth_signTypedData_v3", [address, typed]))
    assert error["code"] == -32602
    for phrase in [*phrases, "eth_signTypedData_v4"]:
        assert phrase in error["message"]
    assert "sign_typed_data" not in fake.enclave.ops()
    assert "result" in rpc(fake, "eth_signTypedData_v4", [address, NESTED])  # v4 signs arrays


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "number"),
    [
        ("invalid_params", -32000),
        ("bad_frame", -32000),
        ("signing_policy_violation", -32003),
        ("kms_attestation_denied", -32003),
        ("kms_unavailable", -32002),
        ("nsm_unavailable", -32002),
        ("frame_too_large", -32005),
        ("ciphertext_invalid", -32010),
        ("address_mismatch", -32010),
        ("internal_error", -32603),
    ],
)
def test_enclave_errors_are_server_errors_with_the_stable_code(
    fake: FakeStack, code: str, number: int
) -> None:
    address = fake.create()["address"]
    error = error_of(rpc(fake, "eth_signTransaction", [tx(address, fake_error=code)]))
    assert error == {"code": number, "message": f"injected {code}", "data": {"code": code}}


def test_decimal_amount_message_reaches_the_jsonrpc_client(fake: FakeStack) -> None:
    address = fake.create()["address"]
    error = error_of(rpc(fake, "eth_signTransaction", [tx(address, value="1000")]))
    assert error["code"] == -32000
    assert error["data"] == {"code": "invalid_params"}
    assert "decimal strings are not accepted" in error["message"]


def test_float_anywhere_in_params_is_invalid_params_with_its_path(fake: FakeStack) -> None:
    raw = b'{"jsonrpc":"2.0","id":7,"method":"eth_signTransaction","params":[{"value":1.5}]}'
    answer = post_raw(fake, raw)
    assert answer.status == 200
    body = answer.json()
    assert body["id"] == 7
    assert body["error"]["code"] == -32602
    assert "floating-point numbers are not accepted" in body["error"]["message"]
    assert "params[0].value" in body["error"]["message"]
    assert fake.enclave.ops() == []


def test_enclave_down_is_resource_unavailable_over_http_200(fake: FakeStack) -> None:
    address = fake.create()["address"]
    fake.enclave.stop()
    error = error_of(rpc(fake, "personal_sign", ["0x00", address]))
    assert error["code"] == -32002
    assert error["data"] == {"code": "enclave_unavailable"}


@pytest.mark.parametrize("path", ["/", "/geth"])
@pytest.mark.parametrize("raw_tx", ["0x02c0", "0x05c0", "0x02c3010203ff"])
def test_undecodable_signed_transaction_is_a_server_error(
    fake: FakeStack, raw_tx: str, path: str
) -> None:
    address = fake.create()["address"]
    fake.enclave.sign_overrides = {"raw_transaction": raw_tx}
    error = error_of(rpc(fake, "eth_signTransaction", [tx(address)], path=path))
    assert error["code"] == -32010
    assert error["data"] == {"code": "enclave_bad_response"}


def test_unexpected_exception_is_internal_error(
    fake: FakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        def list(self, limit: int, after: str | None) -> Any:
            raise RuntimeError("unexpected detail")

        def close(self) -> None:
            pass

    real = fake.relay.server.api.service.storage
    fake.relay.server.api.service.storage = Exploding()  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.ERROR):
            error = error_of(rpc(fake, "eth_accounts", []))
    finally:
        fake.relay.server.api.service.storage = real
    assert error == {
        "code": -32603,
        "message": "internal error",
        "data": {"code": "internal_error"},
    }
    assert "unexpected detail" in caplog.text


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"jsonrpc":"2.0","id":1,"method":"eth_accounts","params":[NaN]}',
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"eth_accounts"}',
        b"\xff\xfe",
        b"  ",
        b"[" * 5000 + b"]" * 5000,
        b"[" * 65 + b"]" * 65,
        b'{"jsonrpc":"2.0","id":1,"method":"eth_accounts","params":' + b"[" * 64 + b"]" * 64 + b"}",
    ],
)
def test_parse_errors(fake: FakeStack, raw: bytes) -> None:
    answer = post_raw(fake, raw)
    assert answer.status == 200
    body = answer.json()
    assert body["id"] is None
    assert body["error"]["code"] == -32700


def test_nesting_up_to_the_limit_is_parsed(fake: FakeStack) -> None:
    nested = b"[" * 62 + b"]" * 62  # params at depth 1: 63 levels in all
    raw = b'{"jsonrpc":"2.0","id":1,"method":"eth_accounts","params":' + nested + b"}"
    error = post_raw(fake, raw).json()["error"]
    assert error["code"] == -32602  # parsed; eth_accounts takes no params


def test_empty_body_is_a_parse_error(fake: FakeStack) -> None:
    answer = fake.call("POST", "/")
    assert answer.status == 200
    assert answer.json()["error"]["code"] == -32700


@pytest.mark.parametrize(
    ("request_", "echoed_id"),
    [
        (1, None),
        ("eth_accounts", None),
        ({"jsonrpc": "1.0", "id": 3, "method": "eth_accounts"}, 3),
        ({"id": 3, "method": "eth_accounts"}, 3),
        ({"jsonrpc": "2.0", "id": 3}, 3),
        ({"jsonrpc": "2.0", "id": 3, "method": 5}, 3),
        ({"jsonrpc": "2.0", "id": 3, "method": ""}, 3),
        ({"jsonrpc": "2.0", "id": 3, "method": "eth_accounts", "params": "x"}, 3),
        ({"jsonrpc": "2.0", "id": 3, "method": "eth_accounts", "extra": 1}, 3),
        ({"jsonrpc": "2.0", "id": True, "method": "eth_accounts"}, None),
        ({"jsonrpc": "2.0", "id": [1], "method": "eth_accounts"}, None),
        ({"jsonrpc": "2.0", "method": 5}, None),  # not a valid notification: answered
    ],
)
def test_invalid_requests(fake: FakeStack, request_: Any, echoed_id: Any) -> None:
    answer = post(fake, request_)
    assert answer.status == 200
    body = answer.json()
    assert body["id"] == echoed_id
    assert body["error"]["code"] == -32600


def test_float_id_is_an_invalid_request(fake: FakeStack) -> None:
    answer = post_raw(fake, b'{"jsonrpc":"2.0","id":1.5,"method":"eth_accounts"}')
    assert answer.json()["error"]["code"] == -32600
    assert answer.json()["id"] is None


def test_named_params_are_invalid_params(fake: FakeStack) -> None:
    assert error_of(rpc(fake, "eth_accounts", {"a": 1}))["code"] == -32602


def test_unknown_method_uses_geths_wording(fake: FakeStack) -> None:
    error = error_of(rpc(fake, "eth_getBalance", ["0x" + "11" * 20, "latest"]))
    assert error == {
        "code": -32601,
        "message": "the method eth_getBalance does not exist/is not available",
    }
    long = error_of(rpc(fake, "x" * 500, []))
    assert long["code"] == -32601
    assert len(long["message"]) < 200


def test_eth_send_transaction_needs_an_upstream_node(fake: FakeStack) -> None:
    error = error_of(rpc(fake, "eth_sendTransaction", [{}]))
    assert error["code"] == -32601
    assert "[relay] upstream_rpc_url" in error["message"]
    assert "eth_sendRawTransaction" in error["message"]


# -- batches and notifications ------------------------------------------------------


def test_batch_answers_each_request_in_order_and_skips_notifications(fake: FakeStack) -> None:
    address = fake.create()["address"]
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "eth_accounts"},
        {"jsonrpc": "2.0", "method": "personal_sign", "params": ["0x01", address]},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_sign", "params": [address, "0x01"]},
    ]
    answer = post(fake, batch)
    assert answer.status == 200
    answers = answer.json()
    assert [a["id"] for a in answers] == ["a", 2, 3]
    assert answers[0]["result"] == [address]
    assert answers[1]["error"]["code"] == -32601
    assert answers[2]["result"] == fake_message_signature(address, "message", "0x01")["signature"]
    # one enclave op for the batch's two signatures (the notification ran too)
    (frame,) = [r for r in fake.enclave.requests if r.op == "sign_batch"]
    assert [item["op"] for item in frame.params["items"]] == ["sign_message"] * 2
    assert "sign_message" not in fake.enclave.ops()


def test_batch_of_invalid_entries(fake: FakeStack) -> None:
    answers = post(fake, [1, 2]).json()
    assert [a["error"]["code"] for a in answers] == [-32600, -32600]
    assert [a["id"] for a in answers] == [None, None]


def test_empty_batch_is_one_invalid_request(fake: FakeStack) -> None:
    answer = post(fake, [])
    assert answer.status == 200
    assert answer.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "invalid request: empty batch"},
    }


def test_oversized_batch_is_answered_element_by_element(fake: FakeStack) -> None:
    address = fake.create()["address"]
    requests = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sign", "params": [address, "0x01"]}
        for i in range(4)
    ]
    notification = {"jsonrpc": "2.0", "method": "eth_accounts"}
    answer = post(fake, [*requests, notification, "junk"])  # 6 > the limit of 4
    assert answer.status == 200
    answers = answer.json()
    assert [a["id"] for a in answers] == [0, 1, 2, 3, None]  # no answer for the notification
    for each in answers:
        assert each["error"]["code"] == -32005
        assert each["error"]["data"] == {"code": "batch_too_large"}
        assert "batch of 6 requests exceeds the limit of 4" in each["error"]["message"]
    assert "sign_message" not in fake.enclave.ops()
    assert [a["result"] for a in post(fake, requests).json()] == [
        fake_message_signature(address, "message", "0x01")["signature"]
    ] * 4


def test_batch_signatures_each_answer_their_own_error(fake: FakeStack) -> None:
    address = fake.create()["address"]
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [tx(address)]},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "eth_signTransaction",
            "params": [tx(address, fake_error="kms_unavailable")],
        },
        {"jsonrpc": "2.0", "id": 3, "method": "personal_sign", "params": ["0x02", address]},
    ]
    one, two, three = post(fake, batch).json()
    assert isinstance(one["result"], str)
    assert two["error"]["data"] == {"code": "kms_unavailable"}
    assert three["result"] == fake_message_signature(address, "message", "0x02")["signature"]


def test_notifications_get_no_answer(fake: FakeStack) -> None:
    address = fake.create()["address"]
    single = post(fake, {"jsonrpc": "2.0", "method": "eth_sign", "params": [address, "0x02"]})
    assert (single.status, single.body) == (204, b"")
    assert "sign_message" in fake.enclave.ops()
    failing = post(fake, {"jsonrpc": "2.0", "method": "nope"})
    assert (failing.status, failing.body) == (204, b"")
    only = post(fake, [{"jsonrpc": "2.0", "method": "eth_accounts"}] * 2)
    assert (only.status, only.body) == (204, b"")


# -- HTTP envelope, metrics, logs ---------------------------------------------------


def test_oversized_body_is_http_413(fake: FakeStack) -> None:
    answer = post_raw(fake, b'{"jsonrpc":"2.0","id":1,"method":"x","params":["' + b"a" * (1 << 20))
    assert answer.status == 413
    assert answer.error_code == "body_too_large"


def test_wrong_media_type_is_http_415(fake: FakeStack) -> None:
    answer = fake.call("POST", "/", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert answer.status == 415


def test_jsonrpc_metrics(fake: FakeStack) -> None:
    address = fake.create()["address"]
    rpc(fake, "eth_accounts")
    rpc(fake, "eth_accounts")
    rpc(fake, "eth_sign", [address, "zz"])
    rpc(fake, "no_such_method")
    post_raw(fake, b"{")
    post(fake, [{"jsonrpc": "2.0", "id": 1, "method": "eth_accounts"}])
    families = {f.name: f for f in text_string_to_metric_families(fake.metrics())}
    counts = {
        (s.labels["method"], s.labels["outcome"]): s.value
        for s in families["nitro_wallet_relay_jsonrpc_requests"].samples
    }
    assert counts[("eth_accounts", "ok")] == 3
    assert counts[("eth_sign", "-32602")] == 1
    assert counts[("unknown", "-32601")] == 1
    assert counts[("invalid", "-32700")] == 1
    assert families["nitro_wallet_relay_jsonrpc_batches"].samples[0].value == 1
    http = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["nitro_wallet_relay_http_requests"].samples
    }
    assert http[("/", "200")] == 6


def test_no_secrets_or_payloads_in_logs(fake: FakeStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    address = fake.create()["address"]
    rpc(fake, "personal_sign", ["a very private message", address])
    rpc(fake, "eth_signTransaction", [tx(address)])
    rpc(fake, "eth_signTransaction", [tx(address, fake_error="kms_unavailable")])
    for secret in fake.imds.state.secrets:
        assert secret not in caplog.text
    assert "a very private message" not in caplog.text
    assert "maxFeePerGas" not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "parent_app.access"]
    assert any(line.startswith("POST / 200 ") for line in access)
