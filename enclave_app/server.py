"""The enclave's framed request server: one thread per connection, a bounded number
of connections, several requests per connection, and an answer for every request.

The server never dies on a request: protocol errors get a typed error frame,
unexpected exceptions get ``internal_error`` with no details (they stay in the
enclave's console log as an exception type only, since messages may carry data).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.ops import Operations

log = logging.getLogger(__name__)

IDLE_TIMEOUT_SECONDS = 60.0


class EnclaveServer:
    def __init__(
        self,
        listener: socket.socket,
        operations: Operations,
        *,
        max_frame_bytes: int,
        max_connections: int,
    ) -> None:
        self._listener = listener
        self._operations = operations
        self._max_frame_bytes = max_frame_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            if not self._slots.acquire(blocking=False):
                self._refuse_busy(conn)
                continue
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(IDLE_TIMEOUT_SECONDS)
        try:
            while self._serve_one(conn):
                pass
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()

    def _serve_one(self, conn: socket.socket) -> bool:
        """Answer one request; False when the connection must end."""
        try:
            body = wire.read_frame(conn, self._max_frame_bytes)
        except EnclaveError as exc:
            # Oversized or broken framing: answer, then drop the connection unread.
            wire.write_frame(conn, wire.error_frame(None, exc))
            return False
        if body is None:
            return False
        request_id: str | None = None
        try:
            request = wire.parse_request(body)
            request_id = request.request_id
            result = self._operations.dispatch(request.op, request.params)
            reply = wire.ok_frame(request_id, result)
        except EnclaveError as exc:
            reply = wire.error_frame(request_id, exc)
        except Exception as exc:
            log.error("request %s failed unexpectedly: %s", request_id, type(exc).__name__)
            reply = wire.error_frame(
                request_id, EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave")
            )
        wire.write_frame(conn, reply)
        return True

    @staticmethod
    def _refuse_busy(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            wire.write_frame(
                conn,
                wire.error_frame(
                    None, EnclaveError(ErrorCode.INTERNAL, "enclave is at its connection limit")
                ),
            )
        conn.close()
