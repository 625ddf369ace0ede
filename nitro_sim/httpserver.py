"""The simulator's HTTP servers: stdlib ThreadingHTTPServer with a bound on threads.

The simulated KMS and IMDS are development stand-ins; they never share code with the
relay (the simulator must not import ``parent_app``). They stop as AWS endpoints are
taken out of service: ``drain()`` lets every request in progress finish its answer and
closes the idle kept-alive connections, so no caller ever gets half an answer from a
stopping service. Handlers write each answer in one piece (``WholeAnswers``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: How long ``drain()`` waits for the requests in progress by default.
DRAIN_SECONDS = 5.0


class WholeAnswers:
    """Mixed into a ``BaseHTTPRequestHandler``: status line, headers and body leave in
    one write when the handler returns (``handle_one_request`` flushes the buffered
    ``wfile``), never as a head followed later by a body."""

    wbufsize = 256 * 1024


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per connection and at most ``max_concurrent`` of them: a flood is
    refused (``refuse_busy``), never queued without bound."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_concurrent: int,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._all_done = threading.Condition(self._open_lock)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refuse_busy(request)
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._finished(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._finished(request)

    def _finished(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
            self._all_done.notify_all()
        self._slots.release()

    def refuse_busy(self, request: Any) -> None:
        self.shutdown_request(request)

    def drain(self, budget: float = DRAIN_SECONDS) -> bool:
        """After the listener closed: end every connection once its current request is
        answered (reading stops, so an idle one ends at once and a busy one after its
        answer), waiting at most ``budget`` s. True when none was left open."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + budget
        with self._all_done:
            while self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_done.wait(left)
        return True
