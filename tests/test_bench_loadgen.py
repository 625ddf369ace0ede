"""bench.loadgen against a small keep-alive HTTP server: it counts every answer of the
run (the CPU profile divides by that count), and only the timed window's for rates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.run import load


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_a_counted_run_reports_every_answer(port: int) -> None:
    result = load(port, [REQUEST], 2, count=40, keep_bodies=2)
    assert result["answered_total"] == 40
    assert result["answers"] == 40
    assert result["statuses"] == {"200": 40}
    assert result["bodies"] == ['{"ok":true}'] * 2


def test_a_timed_run_counts_its_warmup_and_tail_apart_from_its_window(port: int) -> None:
    result = load(port, [REQUEST], 2, seconds=0.4, warmup=0.3, keep_bodies=0)
    assert result["answers"] > 0
    assert result["answered_total"] > result["answers"]  # the warmup's answers too
    assert sum(result["statuses"].values()) == result["answers"]
