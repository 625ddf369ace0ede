"""The relay's HTTP API over real loopback sockets, against the framed fake enclave."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_enclave import (
    AUTH_LINE,
    KEY_ID,
    TEST_PRINCIPAL,
    FakeEnclave,
    FakeImds,
    HttpAnswer,
    RelayHarness,
    fake_address,
    fake_data_key_ciphertext,
    fake_private_key_ciphertext,
    fake_signature,
    http_call,
    relay_config,
    remove_tree,
    short_tempdir,
)

TX = {"type": "0x2", "chainId": 1, "nonce": 0, "to": "0x" + "11" * 20, "value": "0x1"}


@dataclass
class Stack:
    enclave: FakeEnclave
    imds: FakeImds
    relay: RelayHarness
    db: Path
    vsock: Path

    @property
    def port(self) -> int:
        return self.relay.port

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> HttpAnswer:
        return http_call(self.port, method, path, body, **kwargs)

    def create(self, account_id: str | None = None) -> dict[str, Any]:
        answer = self.call(
            "POST", "/v1/accounts", {} if account_id is None else {"account_id": account_id}
        )
        assert answer.status == 201, answer.body
        result: dict[str, Any] = answer.json()
        return result


def _start_stack(tmp_path: Path, **relay: Any) -> Stack:
    vsock = short_tempdir()
    enclave = FakeEnclave(vsock).start()
    imds = FakeImds().start()
    db = tmp_path / "state" / "accounts.db"
    config = relay_config(
        vsock_spec=enclave.transport_spec, imds_endpoint=imds.endpoint, sqlite_path=db, **relay
    )
    return Stack(enclave, imds, RelayHarness(config), db, vsock)


def _stop_stack(stack: Stack) -> None:
    stack.relay.stop()
    stack.imds.stop()
    stack.enclave.stop()
    remove_tree(stack.vsock)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    started = _start_stack(tmp_path)
    yield started
    _stop_stack(started)


def _raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# -- accounts -----------------------------------------------------------------------


def test_create_account_without_body_generates_a_uuid4(stack: Stack) -> None:
    answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 201
    created = answer.json()
    assert set(created) == {"account_id", "address"}
    assert uuid.UUID(created["account_id"]).version == 4
    assert created["address"] == fake_address(created["account_id"])
    generate = next(r for r in stack.enclave.requests if r.op == "generate_account")
    assert generate.params["key_id"] == KEY_ID
    assert generate.params["credentials"] == {
        "access_key_id": stack.imds.state.access_key_id,
        "secret_access_key": stack.imds.state.secret_access_key,
        "session_token": stack.imds.state.session_token,
    }


def test_create_with_given_id_then_get(stack: Stack) -> None:
    account_id = str(uuid.uuid4())
    created = stack.create(account_id.upper())  # any case in, canonical lowercase stored
    assert created["account_id"] == account_id
    answer = stack.call("GET", f"/v1/accounts/{account_id}")
    assert answer.status == 200
    account = answer.json()
    # no ciphertexts; the metadata sealed with the account (here: who created it)
    assert set(account) == {"account_id", "address", "key_id", "created_at", "created_by"}
    assert account["created_by"] == f"relay:{TEST_PRINCIPAL}"
    assert account["address"] == fake_address(account_id)
    assert account["key_id"] == KEY_ID
    assert account["created_at"].endswith("Z")


def test_duplicate_create_is_409_and_never_overwrites(stack: Stack) -> None:
    account_id = str(uuid.uuid4())
    first = stack.create(account_id)
    stack.enclave.generate_overrides = {"address": "0x" + "ab" * 20}
    again = stack.call("POST", "/v1/accounts", {"account_id": account_id})
    assert again.status == 409
    assert again.error_code == "account_exists"
    assert stack.call("GET", f"/v1/accounts/{account_id}").json()["address"] == first["address"]


def test_concurrent_creation_of_one_id_gives_exactly_one_201(stack: Stack) -> None:
    account_id = str(uuid.uuid4())
    stack.enclave.delay_seconds = 0.3  # every request passes the pre-check before any insert
    statuses: list[int] = []
    lock = threading.Lock()

    def create() -> None:
        answer = stack.call("POST", "/v1/accounts", {"account_id": account_id})
        with lock:
            statuses.append(answer.status)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert stack.enclave.ops().count("generate_account") > 1  # the race reached the store
    listed = stack.call("GET", "/v1/accounts").json()["accounts"]
    assert [a["account_id"] for a in listed] == [account_id]


def test_list_pages_in_creation_order(stack: Stack) -> None:
    ids = [stack.create()["account_id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = "/v1/accounts?limit=2" + (f"&cursor={cursor}" if cursor else "")
        answer = stack.call("GET", path)
        assert answer.status == 200
        page = answer.json()
        seen.extend(a["account_id"] for a in page["accounts"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3
    assert stack.call("GET", "/v1/accounts").json()["next_cursor"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=abc",
        "limit=-1",
        "limit=1&limit=2",
        "cursor=nonsense",
        "cursor=",
        "colour=red",
        "limit",
    ],
)
def test_list_refuses_bad_queries(stack: Stack, query: str) -> None:
    answer = stack.call("GET", f"/v1/accounts?{query}")
    assert answer.status == 400
    assert answer.error_code == "invalid_request"


def test_unknown_account_is_404(stack: Stack) -> None:
    missing = str(uuid.uuid4())
    for method, path, body in [
        ("GET", f"/v1/accounts/{missing}", None),
        ("POST", f"/v1/accounts/{missing}/sign/transaction", {"transaction": TX}),
    ]:
        answer = stack.call(method, path, body)
        assert answer.status == 404
        assert answer.error_code == "account_not_found"
    assert "sign_transaction" not in stack.enclave.ops()


@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", "0" * 36, str(uuid.uuid4()) + "0"])
def test_bad_uuid_in_path_is_400(stack: Stack, bad: str) -> None:
    for method, path in [
        ("GET", f"/v1/accounts/{bad}"),
        ("POST", f"/v1/accounts/{bad}/sign/transaction"),
    ]:
        answer = stack.call(method, path, {"transaction": TX} if method == "POST" else None)
        assert answer.status == 400
        assert answer.error_code == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [{"account_id": 5}, {"account_id": "nope"}, {"account_id": None}, {"extra": 1}, [], "x", 3],
)
def test_create_refuses_wrong_types(stack: Stack, body: Any) -> None:
    answer = stack.call("POST", "/v1/accounts", body)
    assert answer.status == 400
    assert answer.error_code == "invalid_request"
    assert "generate_account" not in stack.enclave.ops()


# -- signing ------------------------------------------------------------------------


def test_sign_transaction_passes_the_record_and_returns_the_signature(stack: Stack) -> None:
    account_id = stack.create()["account_id"]
    answer = stack.call("POST", f"/v1/accounts/{account_id}/sign/transaction", {"transaction": TX})
    assert answer.status == 200
    assert answer.json() == fake_signature(fake_address(account_id), TX)
    request = next(r for r in stack.enclave.requests if r.op == "sign_transaction")
    assert request.params["account"] == {
        "account_id": account_id,
        "address": fake_address(account_id),
        "key_id": KEY_ID,
        "encrypted_private_key": fake_private_key_ciphertext(account_id),
        "encrypted_data_key": fake_data_key_ciphertext(account_id, KEY_ID),
        "created_by": f"relay:{TEST_PRINCIPAL}",  # the metadata goes back as stored
    }
    assert request.params["transaction"] == TX
    assert request.params["credentials"]["secret_access_key"] == stack.imds.state.secret_access_key
    assert request.params["auth"] == {
        "relay": {"principal": TEST_PRINCIPAL, "scopes": ["create", "read", "sign"]}
    }


def test_signing_requests_waiting_on_the_enclave_hold_up_nothing(stack: Stack) -> None:
    """Signing handlers run on the relay's event loop (parent_app.loop_bridge): four of
    them waiting on the enclave at once, the relay still answers the probe, an account
    read (on the loop too) and a listing (on the pool); each signature then arrives."""
    account_id = stack.create()["account_id"]
    stack.enclave.hold_ops = frozenset({"sign_transaction"})
    path = f"/v1/accounts/{account_id}/sign/transaction"
    answers: list[HttpAnswer] = []
    callers = [
        threading.Thread(
            target=lambda: answers.append(stack.call("POST", path, {"transaction": TX}))
        )
        for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 10
    while stack.enclave.ops().count("sign_transaction") < 4:  # all four are waiting
        assert time.monotonic() < deadline, "the signing requests did not all reach the enclave"
        time.sleep(0.01)
    assert stack.call("GET", "/healthz").status == 200
    assert stack.call("GET", f"/v1/accounts/{account_id}").json()["account_id"] == account_id
    assert stack.call("GET", "/v1/accounts").status == 200
    assert answers == []
    stack.enclave.release.set()
    for caller in callers:
        caller.join(10)
    assert [answer.status for answer in answers] == [200] * 4
    assert all(a.json() == fake_signature(fake_address(account_id), TX) for a in answers)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"transaction": {"value": 1.5}}', "invalid_json"),
        (b'{"transaction": {"gas": 1e6}}', "invalid_json"),
        (b'{"transaction": {"value": NaN}}', "invalid_json"),
        (b'{"transaction": {"value": Infinity}}', "invalid_json"),
        (b'{"transaction": {"nonce": 1, "nonce": 2}}', "invalid_json"),
        (b'{"transaction": ', "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'{"transaction": []}', "invalid_request"),
        (b'{"transaction": "0x00"}', "invalid_request"),
        (b'{"transaction": {}, "account": {}}', "invalid_request"),
        (b"{}", "invalid_request"),
        (
            b'{"transaction": {"x": ' + b"[" * 30 + b"1.0" + b"]" * 30 + b"}}",
            "invalid_json",
        ),
    ],
)
def test_sign_refuses_malformed_bodies(stack: Stack, raw: bytes, code: str) -> None:
    account_id = stack.create()["account_id"]
    answer = stack.call(
        "POST",
        f"/v1/accounts/{account_id}/sign/transaction",
        raw=raw,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 400
    assert answer.error_code == code
    assert "sign_transaction" not in stack.enclave.ops()


def test_sign_requires_a_body(stack: Stack) -> None:
    account_id = stack.create()["account_id"]
    answer = stack.call("POST", f"/v1/accounts/{account_id}/sign/transaction")
    assert answer.status == 400
    assert answer.error_code == "invalid_request"


def test_deeply_nested_json_is_refused_and_the_relay_stays_up(stack: Stack) -> None:
    account_id = stack.create()["account_id"]
    raw = b'{"transaction": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    answer = stack.call(
        "POST",
        f"/v1/accounts/{account_id}/sign/transaction",
        raw=raw,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status in (400, 413)
    assert stack.call("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("invalid_params", 400),
        ("bad_frame", 400),
        ("signing_policy_violation", 403),
        ("kms_attestation_denied", 403),
        ("kms_unavailable", 503),
        ("nsm_unavailable", 503),
        ("frame_too_large", 413),
        ("ciphertext_invalid", 500),
        ("address_mismatch", 500),
        ("kms_key_not_allowed", 500),
        ("kms_bad_response", 502),
        ("internal_error", 500),
    ],
)
def test_enclave_errors_map_to_http_and_keep_code_and_message(
    stack: Stack, code: str, status: int
) -> None:
    account_id = stack.create()["account_id"]
    answer = stack.call(
        "POST",
        f"/v1/accounts/{account_id}/sign/transaction",
        {"transaction": {**TX, "fake_error": code}},
    )
    assert answer.status == status
    assert answer.json() == {"error": {"code": code, "message": f"injected {code}"}}
    metrics = stack.call("GET", "/metrics").body.decode()
    errors = {
        (s.labels["op"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "nitro_wallet_relay_enclave_errors"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert errors == {("sign_transaction", code): 1}


def test_swapped_ciphertext_is_refused_by_the_enclave(stack: Stack, tmp_path: Path) -> None:
    # A record whose ciphertext belongs to another account: the enclave says so, the relay maps it.
    import sqlite3

    first, second = stack.create()["account_id"], stack.create()["account_id"]
    with sqlite3.connect(stack.db) as conn:
        (blob,) = conn.execute(
            "SELECT encrypted_private_key FROM accounts WHERE account_id = ?", (second,)
        ).fetchone()
        conn.execute(
            "UPDATE accounts SET encrypted_private_key = ? WHERE account_id = ?", (blob, first)
        )
    answer = stack.call("POST", f"/v1/accounts/{first}/sign/transaction", {"transaction": TX})
    assert answer.status == 500
    assert answer.error_code == "ciphertext_invalid"


# -- the enclave misbehaving --------------------------------------------------------


def test_enclave_down_gives_503_and_the_relay_stays_up(stack: Stack) -> None:
    account_id = stack.create()["account_id"]
    stack.enclave.stop()
    answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 503
    assert answer.error_code == "enclave_unavailable"
    signed = stack.call("POST", f"/v1/accounts/{account_id}/sign/transaction", {"transaction": TX})
    assert signed.status == 503
    ready = stack.call("GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["checks"] == {
        "storage": "ok",
        "enclave": "enclave_unavailable",
        "credentials": "ok",
        "kms": "not_checked",
    }
    assert stack.call("GET", "/healthz").status == 200
    assert stack.call("GET", f"/v1/accounts/{account_id}").status == 200  # storage still served
    stack.enclave.start()
    assert stack.call("POST", "/v1/accounts").status == 201
    assert stack.call("GET", "/readyz").status == 200


def test_enclave_timeout_gives_503(tmp_path: Path) -> None:
    stack = _start_stack(tmp_path, enclave_timeout=0.5)
    try:
        stack.enclave.delay_seconds = 2
        started = time.monotonic()
        answer = stack.call("POST", "/v1/accounts")
        assert answer.status == 503
        assert answer.error_code == "enclave_unavailable"
        assert time.monotonic() - started < 2
        assert stack.call("GET", "/v1/accounts").json()["accounts"] == []
    finally:
        stack.enclave.delay_seconds = 0
        _stop_stack(stack)


@pytest.mark.parametrize(
    "overrides",
    [
        {"address": "0x1234"},
        {"address": "0x" + "g" * 40},
        {"address": "0xAbCdEf0000000000000000000000000000000000"},  # wrong EIP-55 checksum
        {"account_id": "00000000-0000-4000-8000-000000000000"},
        {"key_id": "arn:aws:kms:us-east-1:999999999999:key/other"},
        {"encrypted_private_key": "not base64!"},
        {"encrypted_data_key": ""},
        {"encrypted_data_key": 5},
        {"encrypted_private_key": "QUJD"[:3]},
    ],
)
def test_bad_generate_answers_are_not_stored(stack: Stack, overrides: dict[str, Any]) -> None:
    stack.enclave.generate_overrides = overrides
    answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 502
    assert answer.error_code == "enclave_bad_response"
    assert stack.call("GET", "/v1/accounts").json()["accounts"] == []


@pytest.mark.parametrize(
    "raw",
    [b"garbage", b"[]", b'{"v": 1, "id": "other", "ok": true, "result": {}}', b'{"v": 2}'],
)
def test_protocol_breaking_answers_give_502(stack: Stack, raw: bytes) -> None:
    stack.enclave.raw_answer = raw
    answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 502
    assert answer.error_code == "enclave_bad_response"


def test_imds_down_gives_503_credentials_unavailable(stack: Stack) -> None:
    stack.imds.stop()
    answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 503
    assert answer.error_code == "credentials_unavailable"
    assert "generate_account" not in stack.enclave.ops()
    ready = stack.call("GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["checks"]["credentials"] == "credentials_unavailable"
    stack.imds = FakeImds().start()  # so teardown has something to stop


def test_storage_failure_gives_500_storage_error(stack: Stack) -> None:
    stack.relay.server.api.service.storage.close()
    answer = stack.call("GET", f"/v1/accounts/{uuid.uuid4()}")
    assert answer.status == 500
    assert answer.error_code == "storage_error"
    ready = stack.call("GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["checks"]["storage"] == "storage_error"


def test_unexpected_exception_gives_500_and_the_server_stays_up(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        def get(self) -> Any:
            raise RuntimeError("unexpected")

    stack.relay.server.api.service.credentials = Exploding()
    with caplog.at_level(logging.ERROR):
        answer = stack.call("POST", "/v1/accounts")
    assert answer.status == 500
    assert answer.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "unexpected" in caplog.text  # the details go to the log, not the caller
    assert stack.call("GET", "/healthz").status == 200


# -- envelope -----------------------------------------------------------------------


def test_body_too_large_is_refused_before_reading(stack: Stack) -> None:
    head = (
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + AUTH_LINE
        + b"Content-Length: 1000000000\r\n\r\n"
    )
    started = time.monotonic()
    reply = _raw_exchange(stack.port, head)  # no body is ever sent
    assert time.monotonic() - started < 3
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"413"
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "body_too_large"
    assert stack.enclave.ops() == []


def test_body_just_over_the_cap_is_413(stack: Stack) -> None:
    limit = stack.relay.config.relay.max_body_bytes
    raw = b'{"account_id": "' + b"a" * (limit) + b'"}'
    answer = stack.call(
        "POST", "/v1/accounts", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 413
    assert answer.error_code == "body_too_large"


@pytest.mark.parametrize(
    ("method", "path", "size", "content_type", "status"),
    [
        ("POST", "/v1/accounts", 2_000_000, "application/json", 413),
        ("POST", "/v1/accounts", 40_000, "text/plain", 415),
        ("POST", "/v1/nowhere", 40_000, "application/json", 404),
        ("PUT", "/v1/accounts", 40_000, "application/json", 405),
    ],
)
def test_refusals_reach_clients_that_send_the_whole_body_first(
    stack: Stack, method: str, path: str, size: int, content_type: str, status: int
) -> None:
    # http.client writes the whole body before reading: the relay must not reset it.
    for _ in range(3):
        answer = stack.call(method, path, raw=b"x" * size, headers={"Content-Type": content_type})
        assert answer.status == status
        assert answer.json()["error"]["code"]
    assert stack.enclave.ops() == []


def test_chunked_body_is_411(stack: Stack) -> None:
    request = (
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + AUTH_LINE
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    reply = _raw_exchange(stack.port, request)
    assert reply.split(b"\r\n", 1)[0].split()[1] == b"411"
    assert b'"length_required"' in reply


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_wrong_media_type_is_415(stack: Stack, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = stack.call("POST", "/v1/accounts", raw=b"{}", headers=headers)
    assert answer.status == 415
    assert answer.error_code == "unsupported_media_type"


def test_media_type_with_utf8_charset_is_accepted(stack: Stack) -> None:
    answer = stack.call(
        "POST",
        "/v1/accounts",
        raw=b"{}",
        headers={"Content-Type": "Application/JSON; charset=UTF-8"},
    )
    assert answer.status == 201


def test_bad_content_length_is_400(stack: Stack) -> None:
    reply = _raw_exchange(
        stack.port,
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: -5\r\n\r\n",
    )
    assert reply.split(b"\r\n", 1)[0].split()[1] == b"400"
    assert b'"invalid_request"' in reply


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/accounts", "GET, POST"),
        ("PUT", "/v1/accounts/00000000-0000-4000-8000-000000000000", "GET"),
        ("GET", "/v1/accounts/00000000-0000-4000-8000-000000000000/sign/transaction", "POST"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/metrics", "GET"),
        ("OPTIONS", "/openapi.json", "GET"),
        ("GET", "/", "POST"),  # JSON-RPC answers POST only
        ("POST", "/v1/attestation", "GET"),
    ],
)
def test_method_not_allowed_is_405_with_allow(
    stack: Stack, method: str, path: str, allow: str
) -> None:
    answer = stack.call(method, path)
    assert answer.status == 405
    assert answer.error_code == "method_not_allowed"
    assert answer.headers["Allow"] == allow


def test_head_gets_a_405_without_a_body(stack: Stack) -> None:
    answer = stack.call("HEAD", "/healthz")
    assert answer.status == 405
    assert answer.body == b""


def test_unknown_method_is_501_json(stack: Stack) -> None:
    answer = stack.call("BREW", "/healthz")
    assert answer.status == 501
    assert answer.error_code == "not_implemented"


@pytest.mark.parametrize("path", ["/x", "/v1", "/v1/accounts/", "/v2/accounts", "/v1/accounts/x/y"])
def test_unknown_path_is_404(stack: Stack, path: str) -> None:
    answer = stack.call("GET", path)
    assert answer.status == 404
    assert answer.error_code == "not_found"


def test_request_ids(stack: Stack) -> None:
    generated = stack.call("GET", "/healthz").headers["X-Request-Id"]
    assert len(generated) == 32
    assert stack.call("GET", "/healthz").headers["X-Request-Id"] != generated
    echoed = stack.call("GET", "/healthz", headers={"X-Request-Id": "trace-42.a_b"})
    assert echoed.headers["X-Request-Id"] == "trace-42.a_b"
    unsafe = stack.call("GET", "/healthz", headers={"X-Request-Id": "a b;<script>"})
    assert unsafe.headers["X-Request-Id"] != "a b;<script>"
    assert stack.call("GET", "/nowhere").headers["X-Request-Id"]


# -- health, metrics, OpenAPI -------------------------------------------------------


def test_healthz_and_readyz(stack: Stack) -> None:
    health = stack.call("GET", "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    ready = stack.call("GET", "/readyz")
    assert ready.status == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"storage": "ok", "enclave": "ok", "credentials": "ok", "kms": "ok"}
    assert body["kms"]["keys"] == [{"key_id": KEY_ID, "status": "ok", "message": "fake probe"}]
    stack.enclave.health_status = "degraded"
    assert stack.call("GET", "/readyz").json()["checks"]["enclave"] == "not_ok"


def test_metrics_parse_and_count(stack: Stack) -> None:
    stack.create()
    stack.call("GET", "/nowhere")
    stack.call("GET", f"/v1/accounts/{uuid.uuid4()}")
    stack.enclave.stop()
    stack.call("POST", "/v1/accounts")
    answer = stack.call("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in families["nitro_wallet_relay_http_requests"].samples
    }
    assert requests[("/v1/accounts", "POST", "201")] == 1
    assert requests[("/v1/accounts", "POST", "503")] == 1
    assert requests[("unmatched", "GET", "404")] == 1
    assert requests[("/v1/accounts/{account_id}", "GET", "404")] == 1
    latency = families["nitro_wallet_relay_http_request_duration_seconds"]
    counts = [
        s
        for s in latency.samples
        if s.name.endswith("_count") and s.labels["route"] == "/v1/accounts"
    ]
    assert counts[0].value == 2
    infinite = [
        s
        for s in latency.samples
        if s.name.endswith("_bucket")
        and s.labels["route"] == "/v1/accounts"
        and s.labels["le"] == "+Inf"
    ]
    assert infinite[0].value == 2
    errors = {
        (s.labels["op"], s.labels["code"]): s.value
        for s in families["nitro_wallet_relay_enclave_errors"].samples
    }
    assert errors[("generate_account", "enclave_unavailable")] == 1


def test_openapi_document_is_valid_and_covers_every_route(stack: Stack) -> None:
    answer = stack.call("GET", "/openapi.json")
    assert answer.status == 200
    document = answer.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    for route in stack.relay.server.api.router.routes:
        assert route.template in document["paths"]
        for method in route.endpoints:
            assert method.lower() in document["paths"][route.template]


# -- hostile clients ----------------------------------------------------------------


def test_slow_clients_are_dropped(tmp_path: Path) -> None:
    stack = _start_stack(tmp_path, request_deadline_seconds=0.5)
    try:
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HT")  # and never finishes the request line
            started = time.monotonic()
            reply = _read_until_closed(sock)
            assert time.monotonic() - started < 3  # the server answers 408 and hangs up
            assert reply == b"" or reply.split()[1] == b"408"
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + AUTH_LINE
                + b"Content-Length: 10\r\n\r\n{"  # and never sends the other 9 bytes
            )
            reply = _read_until_closed(sock)
            assert reply == b"" or reply.split()[1] == b"408"
        assert stack.call("GET", "/healthz").status == 200
    finally:
        _stop_stack(stack)


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_requests_still_arriving_hold_no_execution_slot(tmp_path: Path) -> None:
    stack = _start_stack(tmp_path, max_concurrent_requests=2, request_deadline_seconds=5)
    # Clients that began a request and stall hold a connection, not one of the two
    # slots (tests/test_relay_front.py: beyond the slots, 503 server_busy).
    stalled = [socket.create_connection(("127.0.0.1", stack.port), timeout=5) for _ in range(4)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)  # all read by the server
        for _ in range(3):
            assert stack.call("GET", "/healthz").status == 200
    finally:
        for sock in stalled:
            sock.close()
        _stop_stack(stack)


# -- secrets ------------------------------------------------------------------------


def test_no_credentials_in_storage_or_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ids = [stack.create()["account_id"] for _ in range(3)]
    for account_id in ids:
        signed = stack.call(
            "POST", f"/v1/accounts/{account_id}/sign/transaction", {"transaction": TX}
        )
        assert signed.status == 200
    stack.call(
        "POST",
        f"/v1/accounts/{ids[0]}/sign/transaction",
        {"transaction": {"fake_error": "kms_unavailable"}},
    )
    secrets = stack.imds.state.secrets
    assert all(
        secret in json.dumps([r.params for r in stack.enclave.requests]) for secret in secrets
    )
    assert stack.db.stat().st_mode & 0o777 == 0o600
    stored = b"".join(p.read_bytes() for p in stack.db.parent.iterdir() if p.is_file())
    for secret in secrets:
        assert secret.encode() not in stored
        assert base64.b64encode(secret.encode()) not in stored
        assert secret not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "parent_app.access"]
    assert any(
        line.startswith(f"POST /v1/accounts/{ids[0]}/sign/transaction 200 ") for line in access
    )
    assert all("request_id=" in line for line in access)
    assert not any(
        "transaction" in r.getMessage() and "{" in r.getMessage() for r in caplog.records
    )
