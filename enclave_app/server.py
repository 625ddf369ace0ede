"""The enclave's framed request server: one I/O thread, a bounded worker pool.

The I/O thread multiplexes every connection with a selector (epoll on Linux, which
takes AF_VSOCK and AF_UNIX sockets alike). It accepts, reads frames into
per-connection buffers and parses each complete frame. Requests that may wait on KMS
or the NSM go to ``workers`` threads; the rest run inline, on the thread that took the
frame, with no hand-off (see "Inline" below). An idle connection costs a file
descriptor and a small buffer, never a thread, so local processes holding connections
open cannot stop signing.

Inline: ``Operations.runs_inline`` names the requests that only compute (``health``,
``stats``, the audit ops, and signing ops whose keys are all warm in the key cache); it
decides before anything changes state (the gate's stamp nonces and receipt slots come
later, in the op). The I/O thread runs them between reads, at most one pass over the
ready connections before it looks at its sockets again; a worker that answered a
connection's frame runs that connection's next inline frame itself. The process runs
one thread of Python at a time, so a hand-off to a worker buys no parallelism for such
a request, only a wake-up and a GIL hand-over each way. A key evicted between the check
and its use is unlocked through KMS on the thread running the op: correct, at the cost
of that thread stalling for a KMS round trip (the I/O thread serves nothing meanwhile;
``ops.INLINE_KEY_MARGIN_SECONDS`` makes expiry in that window near impossible, leaving
capacity evictions by concurrent cold unlocks).

Rules (each one has a test in tests/test_enclave_server.py):
- The frame cap is checked on the length prefix before any of the body is read:
  ``frame_too_large``, then the connection is closed. A zero length is ``bad_frame``.
- Several frames per connection; at most one executes at a time, and answers leave in
  request order. Frames a client pipelines wait in its buffer; while one executes,
  the connection is read only until a further 64 KiB is buffered.
- Admission: at most ``workers + queue_depth`` requests are admitted (executing on a
  worker or inline, or waiting for either). Beyond that a complete frame is answered
  ``server_busy`` at once (never dropped or reset); the connection stays usable.
- Requests that may wait on KMS or the NSM run on a worker, never on the I/O thread.
- Memory: the declared length of each frame being received is reserved against
  ``max_buffered_bytes`` (answers waiting for a slow reader count too). A frame that
  does not fit is answered ``server_busy`` and its body is skipped as it arrives,
  never buffered.
- Slow or silent peers hold no worker: only complete frames are executed. A frame
  must arrive whole within ``frame_timeout_seconds`` of its first byte (else
  ``bad_frame`` and close); a connection with nothing in flight is closed after
  ``idle_timeout_seconds`` without traffic, and so is one whose peer stops reading.
- At ``max_connections``, the connection idle the longest is closed to admit the new
  one; when none is idle, the new connection gets ``server_busy`` and is closed.
- Admissions and refusals are counted (``enclave_app.stats``, reported by the ``stats``
  op with the current connections and requests in flight).
- Every request gets an answer. Unexpected exceptions become ``internal_error`` with
  no details (the console log gets the exception type only: messages may carry data).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from enclave_app import wire
from enclave_app.config import EnclaveConfig
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.ops import Operations
from enclave_app.stats import EnclaveStats

log = logging.getLogger(__name__)

#: Bytes read per recv, and what a connection may buffer beyond its current frame.
READ_CHUNK = 64 * 1024
#: Connections accepted per wake-up of the listener.
_ACCEPT_BATCH = 64
#: Seconds between checks of timeouts and the periodic housekeeping.
_TICK_SECONDS = 0.5
#: After accept() fails for lack of descriptors, seconds before trying again.
_ACCEPT_BACKOFF_SECONDS = 0.2
#: Seconds stop() gives the workers to finish what they execute.
_STOP_GRACE_SECONDS = 5.0


_DEFAULTS = EnclaveConfig()


@dataclass(frozen=True)
class ServerLimits:
    """The server's bounds; defaults and meanings are ``EnclaveConfig``'s ``[server]``."""

    max_frame_bytes: int = _DEFAULTS.max_frame_bytes
    max_connections: int = _DEFAULTS.max_connections
    workers: int = _DEFAULTS.workers
    queue_depth: int = _DEFAULTS.queue_depth
    idle_timeout_seconds: float = _DEFAULTS.idle_timeout_seconds
    frame_timeout_seconds: float = _DEFAULTS.frame_timeout_seconds
    max_buffered_bytes: int = _DEFAULTS.max_buffered_bytes

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_connections, self.workers) < 1:
            raise ValueError("frame cap, connections and workers must be at least 1")
        if self.queue_depth < 0 or self.max_buffered_bytes < self.max_frame_bytes:
            raise ValueError("queue_depth >= 0 and max_buffered_bytes >= max_frame_bytes")

    def capacity(self) -> dict[str, int]:
        """What a client needs to size itself: reported by the ``health`` op."""
        return {
            "workers": self.workers,
            "queue_depth": self.queue_depth,
            "max_connections": self.max_connections,
            "max_frame_bytes": self.max_frame_bytes,
        }

    @classmethod
    def from_config(cls, config: EnclaveConfig, max_connections: int) -> ServerLimits:
        return cls(
            max_frame_bytes=config.max_frame_bytes,
            max_connections=max_connections,
            workers=config.workers,
            queue_depth=config.queue_depth,
            idle_timeout_seconds=config.idle_timeout_seconds,
            frame_timeout_seconds=config.frame_timeout_seconds,
            max_buffered_bytes=config.max_buffered_bytes,
        )


class _Connection:
    """One client connection. Fields are guarded by the server lock; only the I/O
    thread changes the selector registration (``events``) and closes the socket."""

    __slots__ = (
        "body_length",
        "broken",
        "busy",
        "close_after_flush",
        "closed",
        "discard",
        "eof",
        "events",
        "frame_started",
        "inbuf",
        "last_active",
        "outbuf",
        "sock",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        #: Declared body length of the frame being received (reserved), once known.
        self.body_length: int | None = None
        #: Body bytes of a refused frame still to skip.
        self.discard = 0
        #: When the first byte of the frame being received arrived (0: none).
        self.frame_started = 0.0
        self.last_active = now
        #: A request of this connection is queued or executing.
        self.busy = False
        self.eof = False
        self.broken = False
        self.close_after_flush = False
        self.closed = False
        self.events = 0

    def idle(self) -> bool:
        return not (
            self.busy or self.inbuf or self.outbuf or self.discard or self.close_after_flush
        )


#: A complete frame taken from a connection: its body and the bytes it reserved.
_Frame = tuple[_Connection, bytes, int]
#: A parsed request on its way to execution, with the bytes its frame reserved.
_Job = tuple[_Connection, wire.Request, int]


class EnclaveServer:
    def __init__(
        self,
        listener: socket.socket,
        operations: Operations,
        limits: ServerLimits | None = None,
        *,
        housekeeping: Callable[[], None] | None = None,
        stats: EnclaveStats | None = None,
    ) -> None:
        self._listener = listener
        self._operations = operations
        self._limits = limits or ServerLimits()
        self._housekeeping = housekeeping
        self._capacity = self._limits.workers + self._limits.queue_depth
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._admitted = 0  # requests queued or executing
        self._buffered = 0  # reserved request bytes + unsent answer bytes
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._dirty: list[_Connection] = []  # connections a worker changed
        self._ready: deque[_Job] = deque()  # inline requests for the I/O thread
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_pending = False
        self._stopping = threading.Event()
        self._accept_paused_until = 0.0
        self._workers = [
            threading.Thread(target=self._work, name=f"enclave-worker-{i}", daemon=True)
            for i in range(self._limits.workers)
        ]
        self._counts = (stats or EnclaveStats()).server
        if stats is not None:
            stats.watch_server(self.load)

    # -- lifecycle ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`; returns once every connection is closed."""
        self._listener.setblocking(False)
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        for worker in self._workers:
            worker.start()
        next_tick = time.monotonic() + _TICK_SECONDS
        try:
            while not self._stopping.is_set():
                timeout = 0.0 if self._ready else max(0.0, next_tick - time.monotonic())
                for key, mask in self._selector.select(timeout):
                    self._on_event(key.data, mask)
                self._run_ready()
                self._sync_dirty()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + _TICK_SECONDS
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the I/O thread to stop (safe from a signal handler or any thread)."""
        self._stopping.set()
        self._wake()

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def load(self) -> dict[str, int]:
        """Open connections and requests queued or executing, now."""
        with self._lock:
            return {"connections": len(self._connections), "in_flight": self._admitted}

    def _shutdown(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()
        for _ in self._workers:
            self._jobs.put(None)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for worker in self._workers:  # a worker in a KMS call may take longer: daemons
            if worker.is_alive():
                worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # -- I/O thread -----------------------------------------------------------------------

    def _on_event(self, data: object, mask: int) -> None:
        if data == "listener":
            self._accept()
        elif data == "wake":
            with contextlib.suppress(OSError):
                while self._wake_reader.recv(4096):
                    pass
            with self._lock:
                self._wake_pending = False
        elif isinstance(data, _Connection):
            if mask & selectors.EVENT_WRITE:
                self._on_writable(data)
            if mask & selectors.EVENT_READ:
                self._on_readable(data)
            self._sync(data)

    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: shed idle connections, back off
                log.warning("accept failed (%s): backing off", type(exc).__name__)
                self._close_longest_idle()
                self._accept_paused_until = now + _ACCEPT_BACKOFF_SECONDS
                self._selector.unregister(self._listener)
                return
            sock.setblocking(False)
            full = len(self._connections) >= self._limits.max_connections
            if full and not self._close_longest_idle():
                self._counts.add("busy_connections")
                _refuse(sock, "the enclave is at its connection limit; retry later")
                continue
            conn = _Connection(sock, now)
            with self._lock:
                self._connections[sock.fileno()] = conn
            self._sync(conn)

    def _close_longest_idle(self) -> bool:
        with self._lock:
            idle = [conn for conn in self._connections.values() if conn.idle()]
        if not idle:
            return False
        self._close(min(idle, key=lambda conn: conn.last_active))
        return True

    def _on_readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = None
        now = time.monotonic()
        taken: list[_Frame] = []
        with self._lock:
            if conn.closed:
                return
            if data is None:
                conn.broken = True
                return
            if not data:
                conn.eof = True
                return
            conn.last_active = now
            if not conn.inbuf and conn.body_length is None and not conn.discard:
                conn.frame_started = now
            conn.inbuf += data
            self._advance(conn, now, taken)
        self._route(taken, io_thread=True)

    def _on_writable(self, conn: _Connection) -> None:
        now = time.monotonic()
        taken: list[_Frame] = []
        with self._lock:
            if conn.closed or not conn.outbuf:
                return
            self._flush(conn, now)
            if not conn.outbuf:
                self._advance(conn, now, taken)
        self._route(taken, io_thread=True)

    def _run_ready(self) -> None:
        """One pass over the inline requests ready now; those it makes ready (the next
        frame a client pipelined) wait for the next pass, after the sockets' turn."""
        for _ in range(len(self._ready)):
            conn, request, reserved = self._ready.popleft()
            taken = self._finish(conn, self._execute(request), reserved, io_thread=True)
            self._route(taken, io_thread=True)
            self._sync(conn)

    def _sync(self, conn: _Connection) -> None:
        """Bring the selector registration in line with the connection's state, and
        close it when it is finished."""
        with self._lock:
            if conn.closed:
                return
            if conn.eof and not conn.busy and not conn.outbuf and not conn.close_after_flush:
                if conn.inbuf or conn.body_length is not None:
                    self._fail(conn, ErrorCode.BAD_FRAME, "connection closed mid-frame")
                else:
                    conn.broken = True
            done = conn.broken or (conn.close_after_flush and not conn.outbuf)
            reading = not (
                conn.eof
                or conn.close_after_flush
                or ((conn.busy or conn.outbuf) and len(conn.inbuf) >= READ_CHUNK)
            )
            events = (selectors.EVENT_READ if reading else 0) | (
                selectors.EVENT_WRITE if conn.outbuf else 0
            )
            # Under the lock: a worker reads ``events`` to know whether to wake us.
            if not done and events != conn.events:
                if not events:
                    self._selector.unregister(conn.sock)
                elif not conn.events:
                    self._selector.register(conn.sock, events, conn)
                else:
                    self._selector.modify(conn.sock, events, conn)
                conn.events = events
        if done:
            self._close(conn)

    def _sync_dirty(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, []
        for conn in dirty:
            self._sync(conn)

    def _close(self, conn: _Connection) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            if conn.body_length is not None:
                self._buffered -= conn.body_length
                conn.body_length = None
            self._buffered -= len(conn.outbuf)
            conn.inbuf.clear()
            conn.outbuf.clear()
            self._connections.pop(conn.sock.fileno(), None)
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()

    def _tick(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        limits = self._limits
        expired: list[_Connection] = []
        with self._lock:
            for conn in self._connections.values():
                if conn.busy or conn.close_after_flush:
                    continue
                if conn.outbuf or conn.idle():  # a peer that stopped reading, or silence
                    if now - conn.last_active > limits.idle_timeout_seconds:
                        expired.append(conn)
                elif conn.frame_started and now - conn.frame_started > limits.frame_timeout_seconds:
                    self._fail(
                        conn,
                        ErrorCode.BAD_FRAME,
                        f"frame not received within {limits.frame_timeout_seconds:g} s",
                    )
                    self._dirty.append(conn)
        for conn in expired:
            self._close(conn)
        self._sync_dirty()
        if self._housekeeping is not None:
            try:
                self._housekeeping()
            except Exception as exc:
                log.error("housekeeping failed: %s", type(exc).__name__)

    # -- shared by the I/O thread and workers (call with the lock held) --------------------

    def _advance(self, conn: _Connection, now: float, taken: list[_Frame]) -> None:
        """Consume what the input buffer allows: skip, reserve, refuse, or admit a
        complete frame into ``taken`` (the caller routes it once the lock is released)."""
        while not conn.close_after_flush and not conn.broken:
            if conn.discard:
                skipped = min(conn.discard, len(conn.inbuf))
                del conn.inbuf[:skipped]
                conn.discard -= skipped
                if conn.discard:
                    return
                conn.frame_started = now if conn.inbuf else 0.0
            elif conn.busy or conn.outbuf or not conn.inbuf:
                return  # one request at a time, answers in order
            elif conn.body_length is None:
                if not self._take_header(conn):
                    return
            elif len(conn.inbuf) >= conn.body_length:
                self._take_frame(conn, now, taken)
            else:
                return

    def _take_header(self, conn: _Connection) -> bool:
        """Check and reserve the next frame's length; False when nothing can go on."""
        if len(conn.inbuf) < wire.HEADER.size:
            return False
        limits = self._limits
        (length,) = wire.HEADER.unpack_from(conn.inbuf)
        if length > limits.max_frame_bytes:
            self._fail(
                conn,
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {length} bytes exceeds the cap of {limits.max_frame_bytes}",
            )
            return False
        if length == 0:
            self._fail(conn, ErrorCode.BAD_FRAME, "empty frame")
            return False
        del conn.inbuf[: wire.HEADER.size]
        if self._buffered + length > limits.max_buffered_bytes:
            conn.discard = length  # skipped as it arrives, never buffered
            self._counts.add("busy_memory")
            self._send(conn, _BUSY_MEMORY)
        else:
            self._buffered += length
            conn.body_length = length
        return True

    def _take_frame(self, conn: _Connection, now: float, taken: list[_Frame]) -> None:
        """Admit the complete frame at the head of the buffer into ``taken``, or refuse it."""
        length = conn.body_length or 0
        body = bytes(conn.inbuf[:length])
        del conn.inbuf[:length]
        conn.body_length = None
        conn.frame_started = now if conn.inbuf else 0.0
        if self._admitted >= self._capacity:
            self._buffered -= length
            self._counts.add("busy_workers")
            self._send(conn, _BUSY_WORKERS)
            return
        self._counts.add("admitted")
        self._admitted += 1
        conn.busy = True
        taken.append((conn, body, length))

    def _send(self, conn: _Connection, body: bytes) -> None:
        """Queue one answer frame and write as much of it as the socket takes now."""
        frame = wire.HEADER.pack(len(body)) + body
        self._buffered += len(frame)
        conn.outbuf += frame
        self._flush(conn, time.monotonic())

    def _flush(self, conn: _Connection, now: float) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        except OSError:
            conn.broken = True
            return
        if sent:
            del conn.outbuf[:sent]
            self._buffered -= sent
            conn.last_active = now

    def _fail(self, conn: _Connection, code: ErrorCode, message: str) -> None:
        """Answer a framing error, then close once the answer is out."""
        if conn.body_length is not None:
            self._buffered -= conn.body_length
            conn.body_length = None
        conn.inbuf.clear()
        conn.discard = 0
        conn.frame_started = 0.0
        self._send(conn, wire.error_frame(None, EnclaveError(code, message)))
        conn.close_after_flush = True

    # -- execution (I/O thread and workers, without the lock) -------------------------------

    def _route(self, taken: list[_Frame], *, io_thread: bool) -> None:
        """Parse each admitted frame and send it where it executes: a malformed one is
        answered here, an inline request runs on this thread (the I/O thread queues it
        for its next pass), any other goes to the workers."""
        while taken:
            conn, body, reserved = taken.pop()
            request = self._parse(body)
            if isinstance(request, bytes):
                taken += self._finish(conn, request, reserved, io_thread=io_thread)
            elif not self._operations.runs_inline(request.op, request.params):
                self._jobs.put((conn, request, reserved))
            elif io_thread:
                self._ready.append((conn, request, reserved))
            else:
                answer = self._execute_on_worker(request)
                taken += self._finish(conn, answer, reserved, io_thread=False)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, request, reserved = job
            answer = self._execute_on_worker(request)
            self._route(self._finish(conn, answer, reserved, io_thread=False), io_thread=False)

    def _execute_on_worker(self, request: wire.Request) -> bytes:
        try:
            return self._execute(request)
        except BaseException:  # _execute catches everything; belt and braces
            return _INTERNAL_ERROR

    @staticmethod
    def _parse(body: bytes) -> wire.Request | bytes:
        """The request, or the answer that refuses the frame."""
        try:
            return wire.parse_request(body)
        except EnclaveError as exc:
            return wire.error_frame(None, exc)
        except Exception as exc:
            log.error("a frame failed to parse unexpectedly: %s", type(exc).__name__)
            return _INTERNAL_ERROR

    def _execute(self, request: wire.Request) -> bytes:
        """The answer frame; never raises (unexpected exceptions: ``internal_error``)."""
        try:
            result = self._operations.dispatch(request.op, request.params)
            return wire.ok_frame(request.request_id, result)
        except EnclaveError as exc:
            return wire.error_frame(request.request_id, exc)
        except Exception as exc:
            log.error("request %s failed unexpectedly: %s", request.request_id, type(exc).__name__)
            return wire.error_frame(
                request.request_id,
                EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave"),
            )

    def _finish(
        self, conn: _Connection, answer: bytes, reserved: int, *, io_thread: bool
    ) -> list[_Frame]:
        """Release the request's slot and send its answer; returns the connection's next
        frame when one was waiting (to route). The I/O thread syncs the connection
        itself; a worker hands it over when the selector registration must change."""
        now = time.monotonic()
        taken: list[_Frame] = []
        with self._lock:
            self._admitted -= 1
            self._buffered -= reserved
            conn.busy = False
            if conn.closed:
                return taken
            self._send(conn, answer)
            if conn.inbuf and not conn.outbuf:
                conn.frame_started = now  # the next pipelined frame starts its clock now
            self._advance(conn, now, taken)
            if io_thread or (
                not (conn.outbuf or conn.broken or conn.eof or conn.close_after_flush)
                and conn.events & selectors.EVENT_READ
            ):
                return taken  # nothing for the I/O thread to change, or it is the caller
            self._dirty.append(conn)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()
        return taken

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full wake buffer already wakes the loop
            self._wake_writer.send(b"\0")


def _refuse(sock: socket.socket, message: str) -> None:
    with contextlib.suppress(OSError):
        sock.send(_frame(wire.error_frame(None, EnclaveError(ErrorCode.SERVER_BUSY, message))))
    sock.close()


def _frame(body: bytes) -> bytes:
    return wire.HEADER.pack(len(body)) + body


_BUSY_WORKERS = wire.error_frame(
    None, EnclaveError(ErrorCode.SERVER_BUSY, "every enclave worker is busy; retry later")
)
_BUSY_MEMORY = wire.error_frame(
    None, EnclaveError(ErrorCode.SERVER_BUSY, "the enclave's request buffers are full; retry later")
)
_INTERNAL_ERROR = wire.error_frame(
    None, EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave")
)
