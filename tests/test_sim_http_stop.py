"""The simulated KMS stops as an AWS endpoint is taken out of service: a request in
progress gets its whole answer, an idle kept-alive connection is closed, new
connections are refused; never a status line and headers without their body (which
botocore, reading without a length check, took for an empty success)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.principals import Principals
from tests.test_enclave_kms_answers import _read_message

REQUEST = (
    b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.ListKeys\r\n"
    b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"
)


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[KmsServer]:
    server = serve_kms(tmp_path / "state")
    yield server
    server.close()


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    head, body = _read_message(sock)
    return int(head.split()[1]), body


def test_a_stopping_kms_finishes_the_answer_in_progress_and_closes_idle_ones(
    kms: KmsServer, tmp_path: Path
) -> None:
    idle = socket.create_connection((kms.host, kms.port), timeout=10)
    idle.sendall(REQUEST)
    assert _answer(idle)[0] == 403  # unsigned: refused, and the connection kept
    inner = kms.service.call
    entered = threading.Event()

    def slow_call(*args: Any) -> Any:
        entered.set()
        time.sleep(1.0)
        return inner(*args)

    kms.service.call = slow_call  # type: ignore[method-assign,assignment]
    admin = Principals.load(tmp_path / "state").admin_credentials()
    client = boto3.session.Session().client(
        "kms",
        region_name="us-east-1",
        endpoint_url=kms.url,
        aws_access_key_id=admin.access_key_id,
        aws_secret_access_key=admin.secret_access_key,
        aws_session_token=admin.session_token,
        config=Config(retries={"max_attempts": 1}),
    )
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(client.list_keys()))
    caller.start()
    assert entered.wait(10)
    started = time.monotonic()
    kms.close()
    assert time.monotonic() - started < 5
    caller.join(10)
    (answer,) = answers
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "Keys" in answer  # the whole answer, parsed
    assert idle.recv(1) == b""  # closed without a byte
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((kms.host, kms.port), timeout=2)
