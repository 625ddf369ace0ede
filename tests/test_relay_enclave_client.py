"""EnclaveClient against a real framed server on the simulated vsock transport."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport
from parent_app.enclave_client import EnclaveClient
from parent_app.errors import EnclaveBadResponse, EnclaveUnavailable, RelayError
from tests.fake_enclave import FakeEnclave, remove_tree, short_tempdir


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


def client(vsock: Path, timeout: float = 2, max_frame_bytes: int = 4096) -> EnclaveClient:
    return EnclaveClient(Transport.unix(vsock), 16, 5000, timeout, max_frame_bytes)


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
