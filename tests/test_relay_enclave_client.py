"""EnclaveClient against a real framed server on the simulated vsock transport.

Every test runs twice: called from a pool thread (the socket blocks) and from a
handler the relay runs on its event loop (``parent_app.loop_bridge``: the handler is
suspended while uvloop waits on the socket). The frames, deadlines, pool and failure
kinds must be the same either way."""

from __future__ import annotations

import functools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvloop

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport
from parent_app import loop_bridge
from parent_app.enclave_client import EnclaveClient
from parent_app.errors import EnclaveBadResponse, EnclaveUnavailable, RelayError
from tests.fake_enclave import KEY_ID, FakeEnclave, remove_tree, short_tempdir

CREDENTIALS = {"access_key_id": "ASIAEXAMPLE", "secret_access_key": "s", "session_token": "t"}


@pytest.fixture
def vsock() -> Iterator[Path]:
    directory = short_tempdir()
    yield directory
    remove_tree(directory)


@pytest.fixture
def enclave(vsock: Path) -> Iterator[FakeEnclave]:
    server = FakeEnclave(vsock).start()
    yield server
    server.stop()


class LoopCallingClient(EnclaveClient):
    """Each call made as the relay makes it from a handler on its event loop: inside
    ``loop_bridge.run`` on a uvloop loop (one per call; a thread calling concurrently
    runs its own)."""

    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-off-loop")

    def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        blocking_call = functools.partial(EnclaveClient.call, self)
        return uvloop.run(loop_bridge.run(self.executor, self._checked, blocking_call, op, params))

    @staticmethod
    def _checked(call: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        assert loop_bridge.on_loop()
        return call(*args)


_CLIENT_CLASS: list[type[EnclaveClient]] = [EnclaveClient]


@pytest.fixture(autouse=True, params=["pool thread", "event loop"])
def calling_from(request: pytest.FixtureRequest) -> Iterator[str]:
    _CLIENT_CLASS[0] = LoopCallingClient if request.param == "event loop" else EnclaveClient
    yield request.param
    _CLIENT_CLASS[0] = EnclaveClient


def client(vsock: Path, timeout: float = 2, max_frame_bytes: int = 4096) -> EnclaveClient:
    return _CLIENT_CLASS[0](Transport.unix(vsock), 16, 5000, timeout, max_frame_bytes)


def test_health_round_trip_with_random_request_ids(enclave: FakeEnclave, vsock: Path) -> None:
    relay = client(vsock)
    assert relay.call("health", {}) == {"status": "ok", "version": "fake", "protocol": 1}
    relay.call("health", {})
    ids = [r.request_id for r in enclave.requests]
    assert len(set(ids)) == 2
    assert all(len(i) == 32 for i in ids)


def test_enclave_errors_keep_their_code(enclave: FakeEnclave, vsock: Path) -> None:
    with pytest.raises(EnclaveError) as caught:
        client(vsock).call("no_such_op", {})
    assert caught.value.code == ErrorCode.UNKNOWN_OP
    with pytest.raises(EnclaveError) as caught:
        client(vsock).call("generate_account", {"account_id": "x"})
    assert caught.value.code == ErrorCode.INVALID_PARAMS


def test_missing_enclave_is_unavailable(vsock: Path) -> None:
    with pytest.raises(EnclaveUnavailable) as caught:
        client(vsock).call("health", {})
    assert caught.value.status == 503


def test_slow_enclave_is_unavailable(enclave: FakeEnclave, vsock: Path) -> None:
    enclave.delay_seconds = 2
    with pytest.raises(EnclaveUnavailable, match="in time"):
        client(vsock, timeout=0.3).call("health", {})
    enclave.delay_seconds = 0


def test_oversized_request_is_refused_before_sending(enclave: FakeEnclave, vsock: Path) -> None:
    with pytest.raises(RelayError) as caught:
        client(vsock, max_frame_bytes=1024).call("health", {"pad": "x" * 2000})
    assert (caught.value.status, caught.value.code) == (413, "frame_too_large")
    assert enclave.requests == []


def _one_shot_server(vsock: Path, answer: Callable[[socket.socket], None]) -> threading.Thread:
    listener = Transport.unix(vsock).listen(16, 5000)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                wire.read_frame(conn)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda c: c.sendall(wire.HEADER.pack(1 << 20)), EnclaveBadResponse),  # over the cap
        (lambda c: wire.write_frame(c, b"not json"), EnclaveBadResponse),
        (
            lambda c: wire.write_frame(c, b'{"v":1,"id":"x","ok":true,"result":{}}'),
            EnclaveBadResponse,
        ),
        (
            lambda c: wire.write_frame(c, b'{"v":1,"id":null,"ok":true,"result":1}'),
            EnclaveBadResponse,
        ),
        (lambda c: None, EnclaveUnavailable),  # closes without answering
        (lambda c: c.sendall(wire.HEADER.pack(100) + b"{"), EnclaveUnavailable),  # mid-frame
    ],
)
def test_protocol_breaking_answers(
    vsock: Path, answer: Callable[[socket.socket], None], expected: type[RelayError]
) -> None:
    thread = _one_shot_server(vsock, answer)
    with pytest.raises(expected):
        client(vsock).call("health", {})
    thread.join(5)


def test_error_frame_with_unknown_code_becomes_internal(vsock: Path) -> None:
    body = b'{"v":1,"id":null,"ok":false,"error":{"code":"brand_new","message":"m"}}'
    thread = _one_shot_server(vsock, lambda c: wire.write_frame(c, body))
    with pytest.raises(EnclaveError) as caught:
        client(vsock).call("health", {})
    assert caught.value.code == ErrorCode.INTERNAL
    thread.join(5)


# -- the connection pool -------------------------------------------------------------


def pooled(vsock: Path, size: int, wait: float = 2, timeout: float = 2) -> EnclaveClient:
    return _CLIENT_CLASS[0](
        Transport.unix(vsock), 16, 5000, timeout, 1 << 20, pool_size=size, pool_wait_seconds=wait
    )


def test_several_frames_travel_on_one_connection(enclave: FakeEnclave, vsock: Path) -> None:
    relay = pooled(vsock, 4)
    for _ in range(5):
        assert relay.call("health", {})["status"] == "ok"
    assert enclave.connections_accepted == 1
    assert relay.idle_connections == 1
    relay.close()
    assert relay.idle_connections == 0


def test_the_pool_bounds_connections_and_waits_for_a_free_one(
    enclave: FakeEnclave, vsock: Path
) -> None:
    relay = pooled(vsock, 2, wait=5)
    enclave.delay_seconds = 0.2
    results: list[dict[str, object]] = []
    threads = [
        threading.Thread(target=lambda: results.append(relay.call("health", {}))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert all(result["status"] == "ok" for result in results)
    assert enclave.connections_accepted == 2


def test_an_exhausted_pool_is_503_server_busy_with_retry_after(
    enclave: FakeEnclave, vsock: Path
) -> None:
    relay = pooled(vsock, 1, wait=0.1)
    enclave.delay_seconds = 1
    holder = threading.Thread(target=lambda: relay.call("health", {}))
    holder.start()
    time.sleep(0.2)
    with pytest.raises(RelayError) as caught:
        relay.call("health", {})
    assert (caught.value.status, caught.value.code) == (503, "server_busy")
    assert caught.value.headers["Retry-After"] == "1"
    holder.join()


def test_a_connection_the_enclave_closed_while_idle_is_replaced(
    enclave: FakeEnclave, vsock: Path
) -> None:
    enclave.idle_timeout_seconds = 0.2
    relay = pooled(vsock, 4)
    assert relay.call("health", {})["status"] == "ok"
    time.sleep(0.5)  # the enclave closes the idle connection
    account_id = str(uuid.uuid4())
    created = relay.call(
        "generate_account",
        {
            "account_id": account_id,
            "key_id": KEY_ID,
            "credentials": CREDENTIALS,
            "auth": {"relay": {"principal": "test-client", "scopes": ["create"]}},
        },
    )
    assert created["account_id"] == account_id
    assert enclave.ops().count("generate_account") == 1
    assert enclave.connections_accepted == 2


def test_generate_account_is_never_sent_twice(enclave: FakeEnclave, vsock: Path) -> None:
    relay = pooled(vsock, 4)
    relay.call("health", {})  # a warm pooled connection
    enclave.drop_next = 1  # the enclave reads the request and dies before answering
    with pytest.raises(EnclaveUnavailable):
        relay.call(
            "generate_account",
            {"account_id": str(uuid.uuid4()), "key_id": KEY_ID, "credentials": CREDENTIALS},
        )
    assert enclave.ops().count("generate_account") == 1


def test_an_idempotent_op_lost_on_a_reused_connection_is_replayed_once(
    enclave: FakeEnclave, vsock: Path
) -> None:
    relay = pooled(vsock, 4)
    relay.call("health", {})
    enclave.drop_next = 1
    assert relay.call("health", {})["status"] == "ok"  # replayed on a fresh connection
    assert enclave.ops() == ["health", "health", "health"]
    enclave.drop_next = 2  # lost twice: a 503, never a third send
    with pytest.raises(EnclaveUnavailable):
        relay.call("health", {})
    assert enclave.ops().count("health") == 5


def test_an_enclave_dying_mid_request_gives_unavailable(enclave: FakeEnclave, vsock: Path) -> None:
    relay = pooled(vsock, 4, timeout=5)
    relay.call("health", {})
    enclave.delay_seconds = 1
    outcome: list[BaseException | dict[str, object]] = []

    def call() -> None:
        try:
            outcome.append(relay.call("health", {}))
        except RelayError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    enclave.kill()
    caller.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], EnclaveUnavailable)


def test_a_late_answer_is_never_read_as_another_requests_answer(
    enclave: FakeEnclave, vsock: Path
) -> None:
    relay = pooled(vsock, 1, timeout=0.3)
    enclave.delay_seconds = 0.6
    with pytest.raises(EnclaveUnavailable, match="in time"):
        relay.call("health", {})
    enclave.delay_seconds = 0
    time.sleep(0.5)  # the late answer is written to the connection the relay dropped
    assert relay.call("attest", {"nonce": "AAEC"})["attestation_document"]
    assert relay.idle_connections == 1
