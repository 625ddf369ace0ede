"""The simulator's HTTP servers: stdlib ThreadingHTTPServer with a bound on threads.

The simulated KMS and IMDS are development stand-ins; they never share code with the
relay (the simulator must not import ``parent_app``).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per request and at most ``max_concurrent`` of them: a flood is refused
    (``refuse_busy``), never queued without bound."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_concurrent: int,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def refuse_busy(self, request: Any) -> None:
        self.shutdown_request(request)
