"""``StampAuth`` on a real ``requests`` call: the stamp a server receives verifies
against exactly what went over the wire (method, path with query, body bytes)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
import requests

from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from nitro_wallet.stamping import KeyFileError, StampAuth
from tests.authhelpers import entry, key_file

KEY = key_file("ops-1", "p256")


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, bytes, str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append((self.command, self.path, body, self.headers.get("X-Stamp")))
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def verify_seen() -> None:
    verifier = StampVerifier(ReplayMemory(8))
    for method, path, body, stamp in Recorder.seen:
        assert stamp is not None
        verifier.verify(stamp, method, path, body, {"ops-1": entry(KEY)})


def test_requests_with_stamp_auth_sends_a_stamp_of_what_it_sent(server: str) -> None:
    auth = StampAuth(KEY)
    body = b'{"message": "Hello, nitro-wallet"}'
    url = f"{server}/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/message"
    requests.post(url, data=body, auth=auth, timeout=10).raise_for_status()
    requests.get(f"{server}/v1/accounts?limit=5&cursor=a%20b", auth=auth, timeout=10)
    requests.post(url, json={"message": "é"}, auth=auth, timeout=10)  # serialised before auth
    assert [seen[1] for seen in Recorder.seen][1] == "/v1/accounts?limit=5&cursor=a%20b"
    verify_seen()


def test_stamp_auth_refuses_an_approver_key() -> None:
    with pytest.raises(KeyFileError):
        StampAuth(key_file("alice", kind="approver"))
