"""Client side of the parent <-> enclave protocol, over a bounded pool of persistent
connections (several frames per connection, one frame in flight per connection).

Framing and message shapes come from ``enclave_app.wire`` and addressing from
``enclave_app.transport``; this module adds the connection policy and sorts failures
into kinds the relay answers differently:

- the enclave answered an error frame -> ``EnclaveError`` with the enclave's code;
- every pooled connection stayed busy past the wait bound -> 503 ``server_busy``;
- the enclave could not be reached, died mid-request or did not answer in time ->
  ``EnclaveUnavailable`` (503): never a wrong or partial answer;
- the enclave answered something that breaks the protocol -> ``EnclaveBadResponse``.

Reuse and replay. An idle connection is checked (a non-blocking peek) before it is
used, so one the enclave closed while idle is dropped, never written to. The enclave
can still close one between that check and our frame; the request then fails with
"closed before any answer byte". It is sent again, once, on a fresh connection, only
when the enclave cannot have acted on it:
- the frame was not completely written (the enclave never read a whole request); or
- nothing at all came back on a *reused* connection and the op is idempotent
  (``REPLAYABLE_OPS``: health, attest and signing, which is deterministic).
``generate_account`` is never sent twice once written: a lost answer there is a 503,
and the caller retries with the same ``account_id`` (creation is keyed by it).
A connection that failed in any way, or timed out, is closed, never returned to the
pool, so a late answer can never be read as the answer to another request.

Two ways to wait, one protocol. Called on a pool thread, a call blocks on its socket.
Called from a handler the relay runs on its event loop (``loop_bridge.on_loop()``),
it waits through the loop instead (``_LoopIO``): the same frames, deadlines and
failure kinds, on the same pooled connections, without blocking the loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
import socket
import threading
import time
from typing import Any, Protocol

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport
from parent_app import loop_bridge
from parent_app.errors import EnclaveBadResponse, EnclaveUnavailable, RelayError, server_busy

#: Ops whose repetition cannot change anything: a second identical request gets the same
#: signature (RFC 6979) or a fresh health/attestation answer.
REPLAYABLE_OPS = frozenset(
    {
        "health",
        "attest",
        "sign_transaction",
        "sign_message",
        "sign_typed_data",
        "sign_authorization",
        "sign_batch",
    }
)


#: On the loop, a call waiting for a free pooled connection is woken when one is given
#: back; it also looks again this often (a wake-up may go to a waiter that gave up).
_POOL_RECHECK_SECONDS = 0.05


class _NotDelivered(Exception):  # noqa: N818 (internal signal, never escapes)
    """The frame did not reach the enclave whole: it cannot have acted on it."""


class _ClosedBeforeAnswer(Exception):  # noqa: N818 (internal signal, never escapes)
    """The enclave closed the connection before sending a single byte of an answer."""


class EnclaveClient:
    def __init__(
        self,
        transport: Transport,
        cid: int,
        port: int,
        timeout: float,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
        *,
        pool_size: int = 16,
        pool_wait_seconds: float = 1.0,
    ) -> None:
        self.transport = transport
        self.cid = cid
        self.port = port
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self.pool_size = pool_size
        self.pool_wait_seconds = pool_wait_seconds
        self._slots = threading.BoundedSemaphore(pool_size)
        self._idle: list[socket.socket] = []  # LIFO: the warmest connection first
        self._lock = threading.Lock()
        self._closed = False
        #: Calls on an event loop waiting for a slot, oldest first (guarded by _lock).
        self._loop_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Frame ids only pair an answer with its request: a random prefix and a counter.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)

    # -- the one entry point ----------------------------------------------------------

    def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send ``op`` and return its result; raise the enclave's ``EnclaveError`` or a
        ``RelayError`` (unavailable, bad response, busy pool, frame too large)."""
        request_id = f"{self._id_prefix}{next(self._ids):016x}"
        frame = wire.request_frame(wire.Request(request_id=request_id, op=op, params=params))
        if len(frame) > self.max_frame_bytes:
            raise RelayError(
                413,
                str(ErrorCode.FRAME_TOO_LARGE),
                f"request of {len(frame)} bytes exceeds the enclave frame cap of "
                f"{self.max_frame_bytes}",
            )
        if not self._take_slot():
            raise server_busy("every enclave connection is busy; retry shortly")
        try:
            answer = self._exchange(op, frame, time.monotonic() + self.timeout)
        finally:
            self._give_slot_back()
        return _result(answer, request_id)

    def close(self) -> None:
        """Close the idle connections; connections in use close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    @property
    def idle_connections(self) -> int:
        with self._lock:
            return len(self._idle)

    # -- connections ------------------------------------------------------------------

    def _take_slot(self) -> bool:
        """A pooled connection's slot, waiting at most ``pool_wait_seconds``; on the
        loop the handler is suspended until a slot is given back (the loop serves the
        calls that will free one), never woken to look for nothing."""
        if not loop_bridge.on_loop():
            return self._slots.acquire(timeout=self.pool_wait_seconds)
        deadline = time.monotonic() + self.pool_wait_seconds
        loop = asyncio.get_running_loop()
        while not self._slots.acquire(blocking=False):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            woken: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._loop_waiters.append(woken)
            try:
                if self._slots.acquire(blocking=False):  # given back before we queued
                    return True
                with contextlib.suppress(TimeoutError):
                    loop_bridge.wait(woken, min(left, _POOL_RECHECK_SECONDS))
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._loop_waiters.remove(woken)
        return True

    def _give_slot_back(self) -> None:
        """Release a slot and wake the call on a loop that has waited for one longest."""
        self._slots.release()
        with self._lock:
            woken = self._loop_waiters.popleft() if self._loop_waiters else None
        if woken is None:
            return
        loop = woken.get_loop()
        if loop_bridge.on_loop() and asyncio.get_running_loop() is loop:
            loop.call_soon(_wake, woken)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, woken)

    def _exchange(self, op: str, frame: bytes, deadline: float) -> bytes:
        sock, reused = self._checkout(deadline)
        first_try = True
        io: type[_SocketIO] = _LoopIO if loop_bridge.on_loop() else _BlockingIO
        while True:
            try:
                answer = _round_trip(io(sock), frame, deadline, self.max_frame_bytes)
            except (_NotDelivered, _ClosedBeforeAnswer) as exc:
                sock.close()
                could_not_act = isinstance(exc, _NotDelivered) or (reused and op in REPLAYABLE_OPS)
                if not (first_try and could_not_act):
                    raise EnclaveUnavailable(
                        "the enclave closed the connection without answering"
                    ) from None
                sock, reused, first_try = self._connect(deadline), False, False
                continue
            except BaseException:
                sock.close()
                raise
            self._checkin(sock)
            return answer

    def _checkout(self, deadline: float) -> tuple[socket.socket, bool]:
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None:
                return self._connect(deadline), False
            if _still_open(sock):
                return sock, True
            sock.close()

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self, deadline: float) -> socket.socket:
        try:  # a connect waits only when the enclave's backlog is full: off the loop
            return loop_bridge.off_loop(
                self.transport.connect, self.cid, self.port, _remaining(deadline)
            )
        except TimeoutError:
            raise EnclaveUnavailable("timed out connecting to the enclave") from None
        except (OSError, ValueError) as exc:
            raise EnclaveUnavailable(f"cannot connect to the enclave ({_reason(exc)})") from None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _still_open(sock: socket.socket) -> bool:
    """True when an idle connection has neither been closed by the enclave nor carries
    stray bytes (either makes it unusable)."""
    try:
        sock.settimeout(0.0)  # a timeout would make Python wait for readability first
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read: open and quiet
    except OSError:
        return False
    return False  # end of stream (closed) or bytes nobody asked for


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise EnclaveUnavailable("the enclave did not answer in time")
    return left


class _SocketIO(Protocol):
    """A pooled connection's sends and receives, each bounded by ``timeout`` seconds."""

    def __init__(self, sock: socket.socket) -> None: ...

    def sendall(self, data: bytes, timeout: float) -> None: ...

    def recv(self, size: int, timeout: float) -> bytes: ...


class _BlockingIO:
    """On a pool thread: the socket blocks, up to its timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def recv(self, size: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(size)


class _LoopIO:
    """In a handler on the event loop (``loop_bridge``): the socket never blocks, the
    handler is suspended while the loop waits for it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    def sendall(self, data: bytes, timeout: float) -> None:
        loop_bridge.wait(self.loop.sock_sendall(self.sock, data), timeout)

    def recv(self, size: int, timeout: float) -> bytes:
        try:  # the rest of an answer is usually there already
            return self.sock.recv(size)
        except BlockingIOError:
            return loop_bridge.wait(self.loop.sock_recv(self.sock, size), timeout)


def _round_trip(io: _SocketIO, frame: bytes, deadline: float, max_bytes: int) -> bytes:
    try:
        io.sendall(wire.HEADER.pack(len(frame)) + frame, _remaining(deadline))
    except TimeoutError:
        raise EnclaveUnavailable("the enclave did not take the request in time") from None
    except OSError:
        raise _NotDelivered from None
    try:
        header = _recv_exact(io, wire.HEADER.size, deadline, first=True)
        (length,) = wire.HEADER.unpack(header)
        if length > max_bytes:
            raise EnclaveBadResponse(
                f"enclave answer refused: frame of {length} bytes exceeds the cap of {max_bytes}"
            )
        if length == 0:
            raise EnclaveBadResponse("enclave answer refused: empty frame")
        return _recv_exact(io, length, deadline, first=False)
    except TimeoutError:
        raise EnclaveUnavailable("the enclave did not answer in time") from None
    except ConnectionResetError:
        raise EnclaveUnavailable("the enclave reset the connection mid-answer") from None
    except OSError as exc:
        raise EnclaveUnavailable(f"enclave connection failed ({_reason(exc)})") from None


def _recv_exact(io: _SocketIO, size: int, deadline: float, *, first: bool) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        try:
            chunk = io.recv(min(remaining, 1 << 16), _remaining(deadline))
        except ConnectionResetError:
            if first and not chunks:
                raise _ClosedBeforeAnswer from None
            raise
        if not chunk:
            if first and not chunks:
                raise _ClosedBeforeAnswer
            raise EnclaveUnavailable("the enclave closed the connection mid-answer")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _result(answer: bytes, request_id: str) -> dict[str, Any]:
    """The result of an answer frame, parsed once; the enclave's own error frames raise
    its ``EnclaveError``, anything else that breaks the protocol is a bad response."""
    try:
        message = wire.decode_object(answer)
    except EnclaveError as exc:
        raise EnclaveBadResponse(f"enclave answer is not a protocol frame: {exc.message}") from None
    try:
        return wire.response_result(message, request_id)
    except EnclaveError as exc:
        if message.get("ok") is False and isinstance(message.get("error"), dict):
            raise  # an error the enclave reported: its code stands
        raise EnclaveBadResponse(f"enclave answer breaks the protocol: {exc.message}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
