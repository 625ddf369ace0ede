"""The relay's HTTP server: uvicorn on the uvloop event loop with the httptools parser
(docs/performance.md says why this one, with the measurements), hardened by a
connection protocol of our own (``RelayProtocol``, uvicorn's documented ``http=``
extension point):

- keep-alive: an idle connection is closed after ``keep_alive_timeout_seconds``,
  including a fresh connection that never sends a byte;
- the listen backlog is ``listen_backlog`` (at least 1,024);
- at most ``max_connections`` connections are open, beyond it the client gets 503
  ``server_busy`` with ``Retry-After``, as JSON; at most ``max_concurrent_requests``
  requests are answered at once (``asgi_app.ExecutionSlots``: a request takes a slot
  only once it arrived whole, so clients still sending hold a connection, never a slot);
- a request must arrive whole (request line, headers and body) within
  ``request_deadline_seconds`` of its first byte (blank lines before a request line
  count), or it gets 408 and the connection closes: a client that drips bytes
  (slowloris) is cut off when the deadline passes, and never held anything but its
  connection meanwhile. uvicorn itself has no header-read timeout; this is it;
- the request line and headers are capped at ``MAX_HEAD_BYTES`` (431 beyond);
- malformed requests get JSON errors (400, 501 for unknown methods), never plain text;
- an answer sent before the request body was read (413, 411, 415, 408, 503) is
  followed by a lingering close: the server half-closes, then reads and discards what
  the client still sends, for at most ``LINGER_SECONDS`` / ``LINGER_MAX_BYTES``,
  before it closes. Clients that write their whole body before reading (urllib,
  requests, httpx) read the answer instead of a connection reset;
- a refusal never overtakes the answer to a request pipelined before it: that answer
  leaves first, then the connection closes without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from parent_app.asgi_app import ExecutionSlots, RelayAsgiApp
from parent_app.config import RelaySettings
from parent_app.errors import RelayCode, RelayError, invalid_request, server_busy
from parent_app.http_envelope import Recorder, new_request_id, response_headers
from parent_app.routes import RelayApi, error_response

log = logging.getLogger(__name__)

LINGER_SECONDS = 5.0
LINGER_MAX_BYTES = 64 << 20
#: After a 408, the slow client gets a short drain only.
DEADLINE_LINGER_SECONDS = 1.0
MAX_HEAD_BYTES = 64 * 1024
GRACEFUL_SHUTDOWN_SECONDS = 10
_METHOD_TOKEN = re.compile(rb"\A\s*[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} ")


class FrontState:
    """What every connection of one server shares (all on the event loop's thread)."""

    def __init__(self, settings: RelaySettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder


class _LingeringTransport:
    """The transport as uvicorn's request cycle sees it:

    - writes made in one turn of the loop leave together, in one send: uvicorn writes
      an answer's head and its body separately, and each send on a loopback or local
      socket costs the kernel a delivery to the peer (about a tenth of the relay's
      system time per request, measured);
    - ``close()`` sends what is pending, then becomes a lingering close while the
      client may still be sending the request's body.
    """

    def __init__(self, transport: asyncio.Transport, protocol: RelayProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._protocol.loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Send what this turn wrote (a no-op when nothing is pending)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RelayProtocol(HttpToolsProtocol):
    front: ClassVar[FrontState]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.front.settings.keep_alive_timeout_seconds  # type: ignore[assignment]
        self.lingering = False
        self._raw: asyncio.Transport = None  # type: ignore[assignment]  # set on connection
        self._refused = False
        self._in_message = False
        self._headers_done = False
        self._deadline: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_budget = 0
        self._head_bytes = 0
        self._head_tail = b""
        self._method = ""
        self._path = ""

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        # uvicorn arms the idle timer only between requests; a connection that never
        # sends a byte must not stay open either.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        if len(self.connections) > self.front.settings.max_connections:
            self._refuse(server_busy("too many open connections; retry shortly"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def close_connection(self) -> None:
        """Close now, or linger while the current request's body may still arrive."""
        self._flush()
        if self._in_message and not self.lingering and not self._raw.is_closing():
            self._linger(LINGER_SECONDS)
        else:
            self._raw.close()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._linger_budget -= len(data)
            if self._linger_budget <= 0:
                self._raw.close()
            return
        if self._refused:
            return
        if not self._headers_done and self._count_head(data):
            return
        if self._deadline is None:  # a request's first byte (blank lines before one count)
            self._start_deadline()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._no_upgrade()
        except httptools.HttpParserInvalidMethodError:
            if _METHOD_TOKEN.match(data):  # a method, just not one we know: 501
                self._parse_refusal(
                    RelayError(501, RelayCode.NOT_IMPLEMENTED, "unknown HTTP method")
                )
            else:
                self._parse_refusal(invalid_request("malformed HTTP request line"))
        except httptools.HttpParserError:
            if not self._refused:
                self._parse_refusal(invalid_request("malformed HTTP request"))

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        self._method = ""
        self._path = ""
        if self._deadline is None:  # a pipelined request begins in the same chunk
            self._start_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._method = self.parser.get_method().decode("latin-1")
        self._path = self.url.split(b"?", 1)[0].decode("latin-1")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._headers_done = False
        self._head_bytes = 0
        self._head_tail = b""
        self._cancel_deadline()
        super().on_message_complete()

    # -- refusals -------------------------------------------------------------------------

    def _count_head(self, data: bytes) -> bool:
        """Count request-line and header bytes; True (and a 431) past MAX_HEAD_BYTES."""
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
        self._head_tail = window[-3:]
        if self._head_bytes <= MAX_HEAD_BYTES:
            return False
        self._refuse(
            RelayError(
                431,
                RelayCode.INVALID_REQUEST,
                f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
            )
        )
        return True

    def _deadline_passed(self) -> None:
        self._deadline = None
        cycle = self.cycle
        answered = self._headers_done and cycle is not None and cycle.response_started
        writing = cycle is not None and cycle.response_started and not cycle.response_complete
        if answered or writing or self.pipeline:
            # Answered already (the rest of its body is too slow), or an earlier answer is
            # being written or queued (pipelining): no 408 can be slotted in; close.
            self._flush()
            self._raw.close()
            return
        self._refuse(
            RelayError(
                408,
                RelayCode.REQUEST_TIMEOUT,
                "the request did not arrive whole within "
                f"{self.front.settings.request_deadline_seconds:g} s",
            ),
            linger_seconds=DEADLINE_LINGER_SECONDS,
        )

    def _parse_refusal(self, error: RelayError) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self._in_message:
            # A request is being answered and garbage follows it: finish that answer,
            # then close; nothing after it is parsed.
            cycle.keep_alive = False
            self._refused = True
            return
        self._refuse(error)

    def _no_upgrade(self) -> None:
        """CONNECT or an Upgrade request: answered as a plain request, then closed."""
        cycle = self.cycle
        if self._headers_done and cycle is not None:
            cycle.keep_alive = False
            self._refused = True
            if cycle.response_complete:
                self.close_connection()
            return
        self._refuse(RelayError(501, RelayCode.NOT_IMPLEMENTED, "protocol upgrades"))

    def _refuse(self, error: RelayError, *, linger_seconds: float = LINGER_SECONDS) -> None:
        """Answer before (or instead of) the application, then close with a linger."""
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self._headers_done:
            # An earlier request (pipelined before this one) is still being answered: a
            # refusal written now would be read as its answer. Nothing after it is
            # parsed; the connection closes once its answer is out.
            cycle.keep_alive = False
            self._cancel_deadline()
            return
        self._flush()  # an answer written before this refusal leaves first
        response = error_response(error)
        request_id = new_request_id()
        head = [STATUS_LINE[response.status]]
        for name, value in response_headers(response, request_id, close=True):
            head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        if not self._raw.is_closing():
            self._raw.write(b"".join(head) + response.body)
        self.front.recorder.record(
            method=self._method or "-",
            path=self._path,
            route="unmatched",
            status=response.status,
            seconds=0.0,
            request_id=request_id,
        )
        self._linger(linger_seconds)

    def _linger(self, seconds: float) -> None:
        self._flush()
        if self.lingering or self._raw.is_closing():
            return
        self.lingering = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        self._linger_budget = LINGER_MAX_BYTES
        if self._raw.can_write_eof():
            self._raw.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(seconds, self._raw.close)

    def _flush(self) -> None:
        """Send the answer bytes the request cycle wrote this turn, before the raw
        transport is written to or closed directly."""
        if isinstance(self.transport, _LingeringTransport):
            self.transport.flush()

    def _start_deadline(self) -> None:
        self._deadline = self.loop.call_later(
            self.front.settings.request_deadline_seconds, self._deadline_passed
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the relay's entry point owns the
    signals (uvicorn would re-raise them after shutdown, ending the process with the
    signal instead of exit status 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RelayServer:
    """Bound on construction (so the port is known), served by ``serve_forever``."""

    def __init__(self, api: RelayApi, settings: RelaySettings) -> None:
        self.api = api
        self.settings = settings
        self._socket = _listen(settings)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_requests, thread_name_prefix="relay-handler"
        )
        recorder = Recorder(api.metrics)
        protocol = type(
            "BoundRelayProtocol", (RelayProtocol,), {"front": FrontState(settings, recorder)}
        )
        slots = ExecutionSlots(settings.max_concurrent_requests, api.metrics.in_flight)
        config = uvicorn.Config(
            RelayAsgiApp(api, settings, self._executor, recorder, slots),
            http=protocol,
            loop="uvloop",
            lifespan="off",
            ws="none",
            interface="asgi3",
            backlog=settings.listen_backlog,
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        self._server = _Server(config)
        self._running = False
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Serve until ``shutdown()``; blocks the calling thread."""
        self._stopped.clear()
        self._running = True
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._running = False
            self._stopped.set()

    def request_stop(self) -> None:
        """Ask the serving loop to stop (safe from a signal handler); returns at once."""
        self._server.should_exit = True

    def shutdown(self, timeout: float = GRACEFUL_SHUTDOWN_SECONDS + 5) -> None:
        """Stop accepting, finish the requests in progress, return when stopped."""
        self._server.should_exit = True
        if self._running:
            self._stopped.wait(timeout)

    def server_close(self) -> None:
        self._socket.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api.close()  # the audit log writer's last pull needs the enclave
        self.api.service.enclave.close()
        self.api.service.storage.close()


def _listen(settings: RelaySettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    return socket.create_server(
        (settings.listen_host, settings.listen_port),
        family=family,
        backlog=settings.listen_backlog,
    )


def wait_until_serving(server: RelayServer, timeout: float = 10.0) -> None:
    """Block until ``server`` accepts connections (tests and the entry point)."""
    deadline = time.monotonic() + timeout
    while not server._server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("the relay did not start serving in time")
        time.sleep(0.01)
