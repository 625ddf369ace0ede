"""REST sign/message, sign/typed-data, sign/authorization and attestation, against the
framed fake enclave over real loopback sockets (relay behaviour only)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_enclave import (
    FakeStack,
    fake_address,
    fake_attestation,
    fake_authorization,
    fake_message_signature,
    fake_private_key_ciphertext,
)

TYPED = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}],
        "Mail": [{"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail"},
    "message": {"contents": "Hello, Bob!"},
}
AUTH = {"chainId": 1, "address": "0x" + "22" * 20, "nonce": 0}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path)
    yield started
    started.stop()


def _post(fake: FakeStack, account_id: str, kind: str, body: Any) -> Any:
    return fake.call("POST", f"/v1/accounts/{account_id}/sign/{kind}", body)


# -- sign/message -------------------------------------------------------------------


@pytest.mark.parametrize("message", ["0x48656c6c6f", "Hello, world", "", "0x"])
def test_sign_message_passes_the_record_and_message(fake: FakeStack, message: str) -> None:
    account_id = fake.create()["account_id"]
    answer = _post(fake, account_id, "message", {"message": message})
    assert answer.status == 200, answer.body
    expected = fake_message_signature(fake_address(account_id), "message", message)
    assert answer.json() == expected
    request = next(r for r in fake.enclave.requests if r.op == "sign_message")
    assert request.params["message"] == message
    assert request.params["account"]["encrypted_private_key"] == fake_private_key_ciphertext(
        account_id
    )
    assert request.params["credentials"]["session_token"] == fake.imds.state.session_token


@pytest.mark.parametrize(
    "body",
    [{}, {"message": 5}, {"message": None}, {"message": ["a"]}, {"message": "x", "extra": 1}],
)
def test_sign_message_refuses_bad_bodies(fake: FakeStack, body: dict[str, Any]) -> None:
    account_id = fake.create()["account_id"]
    answer = _post(fake, account_id, "message", body)
    assert answer.status == 400
    assert answer.error_code == "invalid_request"
    assert "sign_message" not in fake.enclave.ops()


def test_sign_message_for_unknown_account_is_404(fake: FakeStack) -> None:
    answer = _post(fake, "00000000-0000-4000-8000-000000000000", "message", {"message": "hi"})
    assert answer.status == 404
    assert answer.error_code == "account_not_found"


def test_sign_message_enclave_error_keeps_code_and_message(fake: FakeStack) -> None:
    account_id = fake.create()["account_id"]
    answer = _post(fake, account_id, "message", {"message": "fake_error:signing_policy_violation"})
    assert answer.status == 403
    assert answer.json()["error"] == {
        "code": "signing_policy_violation",
        "message": "injected signing_policy_violation",
    }


@pytest.mark.parametrize(
    "override",
    [{"signature": "0x12"}, {"signature": None}, {"digest": "0x" + "0" * 63}, {"digest": 5}],
)
def test_bad_signature_answers_give_502(fake: FakeStack, override: dict[str, Any]) -> None:
    account_id = fake.create()["account_id"]
    fake.enclave.sign_overrides = override
    answer = _post(fake, account_id, "message", {"message": "hi"})
    assert answer.status == 502
    assert answer.error_code == "enclave_bad_response"


# -- sign/typed-data ----------------------------------------------------------------


def test_sign_typed_data(fake: FakeStack) -> None:
    account_id = fake.create()["account_id"]
    answer = _post(fake, account_id, "typed-data", {"typed_data": TYPED})
    assert answer.status == 200, answer.body
    assert answer.json() == fake_message_signature(fake_address(account_id), "typed_data", TYPED)
    request = next(r for r in fake.enclave.requests if r.op == "sign_typed_data")
    assert request.params["typed_data"] == TYPED


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"typed_data": "not an object"}', "invalid_request"),
        (b'{"typed_data": []}', "invalid_request"),
        (b'{"message": {}}', "invalid_request"),
        (b'{"typed_data": {"message": {"amount": 1.5}}}', "invalid_json"),
        (b'{"typed_data": {}, "typed_data": {}}', "invalid_json"),
        (b'{"typed_data": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}", "invalid_json"),
    ],
)
def test_sign_typed_data_refuses_bad_bodies(fake: FakeStack, raw: bytes, code: str) -> None:
    account_id = fake.create()["account_id"]
    answer = fake.call(
        "POST",
        f"/v1/accounts/{account_id}/sign/typed-data",
        raw=raw,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 400
    assert answer.error_code == code
    if code == "invalid_json" and b"1.5" in raw:
        assert "floating-point numbers are not accepted" in answer.json()["error"]["message"]
    assert "sign_typed_data" not in fake.enclave.ops()


# -- sign/authorization -------------------------------------------------------------


def test_sign_authorization(fake: FakeStack) -> None:
    account_id = fake.create()["account_id"]
    answer = _post(fake, account_id, "authorization", {"authorization": AUTH})
    assert answer.status == 200, answer.body
    assert answer.json() == {"authorization": fake_authorization(fake_address(account_id), AUTH)}


@pytest.mark.parametrize(
    "override",
    [
        {"authorization": None},
        {"authorization": {"chainId": "0x1"}},
        {
            "authorization": {
                "chainId": "0x1",
                "address": "0xnot",
                "nonce": "0x0",
                "yParity": "0x0",
                "r": "0x1",
                "s": "0x1",
            }
        },
        {
            "authorization": {
                "chainId": 1,
                "address": "0x" + "22" * 20,
                "nonce": "0x0",
                "yParity": "0x0",
                "r": "0x1",
                "s": "0x1",
            }
        },
    ],
)
def test_bad_authorization_answers_give_502(fake: FakeStack, override: dict[str, Any]) -> None:
    account_id = fake.create()["account_id"]
    fake.enclave.sign_overrides = override
    answer = _post(fake, account_id, "authorization", {"authorization": AUTH})
    assert answer.status == 502
    assert answer.error_code == "enclave_bad_response"


def test_decimal_amount_message_reaches_the_rest_client(fake: FakeStack) -> None:
    account_id = fake.create()["account_id"]
    tx = {"type": "0x2", "chainId": 1, "nonce": 0, "value": "1000"}
    answer = _post(fake, account_id, "transaction", {"transaction": tx})
    assert answer.status == 400
    assert answer.error_code == "invalid_params"
    assert "decimal strings are not accepted" in answer.json()["error"]["message"]


# -- attestation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "nonce", "user_data"),
    [
        ("", b"", b""),
        ("?nonce=00ff", b"\x00\xff", b""),
        ("?nonce=0xABCD&user_data=0102", b"\xab\xcd", b"\x01\x02"),
        ("?nonce=" + "aa" * 512, b"\xaa" * 512, b""),
    ],
)
def test_attestation_passes_nonce_and_user_data(
    fake: FakeStack, query: str, nonce: bytes, user_data: bytes
) -> None:
    answer = fake.call("GET", "/v1/attestation" + query)
    assert answer.status == 200, answer.body
    assert answer.json() == {"attestation_document": fake_attestation(nonce, user_data)}
    request = next(r for r in fake.enclave.requests if r.op == "attest")
    assert base64.b64decode(request.params.get("nonce", "")) == nonce


@pytest.mark.parametrize(
    "query",
    [
        "nonce=xyz",
        "nonce=abc",
        "nonce=",
        "nonce=0x",
        "nonce=" + "aa" * 513,
        "user_data=zz",
        "nonce=00&nonce=01",
        "other=1",
        "nonce=%C3%A9%C3%A9",
    ],
)
def test_attestation_refuses_bad_queries(fake: FakeStack, query: str) -> None:
    answer = fake.call("GET", "/v1/attestation?" + query)
    assert answer.status == 400
    assert answer.error_code == "invalid_request"
    assert "attest" not in fake.enclave.ops()


@pytest.mark.parametrize(
    "override",
    [
        {"attestation_document": "***"},
        {"attestation_document": ""},
        {"attestation_document": 5},
        {"attestation_document": "A" * 200_000},
    ],
)
def test_bad_attestation_answers_give_502(fake: FakeStack, override: dict[str, Any]) -> None:
    fake.enclave.sign_overrides = override
    answer = fake.call("GET", "/v1/attestation?nonce=00")
    assert answer.status == 502
    assert answer.error_code == "enclave_bad_response"


def test_attestation_enclave_down_is_503(fake: FakeStack) -> None:
    fake.enclave.stop()
    answer = fake.call("GET", "/v1/attestation?nonce=00")
    assert answer.status == 503
    assert answer.error_code == "enclave_unavailable"


# -- list, metrics ------------------------------------------------------------------


def test_list_accounts_pages_through_everything(fake: FakeStack) -> None:
    created = [fake.create()["address"] for _ in range(5)]
    seen: list[str] = []
    cursor = ""
    while True:
        answer = fake.call("GET", "/v1/accounts?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert answer.status == 200
        page = answer.json()
        assert len(page["accounts"]) <= 2
        seen += [account["address"] for account in page["accounts"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == created


def test_new_routes_are_counted(fake: FakeStack) -> None:
    account_id = fake.create()["account_id"]
    _post(fake, account_id, "message", {"message": "hi"})
    _post(fake, account_id, "typed-data", {"typed_data": TYPED})
    _post(fake, account_id, "authorization", {"authorization": AUTH})
    fake.call("GET", "/v1/attestation?nonce=00")
    fake.call("GET", "/v1/attestation?nonce=0")
    families = {f.name: f for f in text_string_to_metric_families(fake.metrics())}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["nitro_wallet_relay_http_requests"].samples
    }
    for kind in ("message", "typed-data", "authorization"):
        assert requests[(f"/v1/accounts/{{account_id}}/sign/{kind}", "200")] == 1
    assert requests[("/v1/attestation", "200")] == 1
    assert requests[("/v1/attestation", "400")] == 1
    calls = {s.labels["op"]: s.value for s in families["nitro_wallet_relay_enclave_calls"].samples}
    for op in ("sign_message", "sign_typed_data", "sign_authorization", "attest"):
        assert calls[op] == 1
