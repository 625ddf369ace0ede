"""The HTTP server: stdlib ThreadingHTTPServer, bounded and hardened.

- at most ``max_concurrent_requests`` handler threads; beyond that a connection gets
  a short 503 ``server_busy`` and is closed, so a flood cannot exhaust memory;
- a socket timeout on every connection, so slow clients (slowloris) are dropped;
- one connection per request (``Connection: close``): no idle keep-alive sockets;
- bodies are refused by Content-Length before a byte is read; ``Expect: 100-continue``
  is answered only once the length and media type are acceptable;
- one access-log line per request (method, path, status, duration, request id):
  never bodies, query strings, headers or credentials.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from parent_app.config import RelaySettings
from parent_app.errors import RelayCode, RelayError, internal_error, invalid_request
from parent_app.routes import (
    Body,
    Call,
    MethodNotAllowedError,
    RelayApi,
    Response,
    error_response,
    parse_json_object,
)

access_log = logging.getLogger("parent_app.access")
log = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# After answering without reading an announced body, discard at most this much of it
# (for at most this long) before closing, so the client reads the answer instead of a
# reset ("lingering close"). Nothing discarded is parsed or kept.
LINGER_MAX_BYTES = 4 << 20
LINGER_SECONDS = 2.0
_REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
_UNSAFE_LOG_CHARS = re.compile(r"[^\x21-\x7e]")
_STATUS_CODES = {
    400: RelayCode.INVALID_REQUEST,
    408: RelayCode.REQUEST_TIMEOUT,
    414: RelayCode.INVALID_REQUEST,
    431: RelayCode.INVALID_REQUEST,
    501: RelayCode.NOT_IMPLEMENTED,
    505: RelayCode.INVALID_REQUEST,
}


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per request and at most ``max_concurrent`` of them: a flood is refused
    (``refuse_busy``), never queued without bound. Shared with the simulator's servers."""

    daemon_threads = True

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


class RelayHTTPServer(BoundedThreadingHTTPServer):
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, api: RelayApi, settings: RelaySettings) -> None:
        self.api = api
        self.settings = settings
        family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
        self.address_family = family
        super().__init__(
            (settings.listen_host, settings.listen_port),
            RelayRequestHandler,
            settings.max_concurrent_requests,
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def refuse_busy(self, request: socket.socket) -> None:
        error = RelayError(503, RelayCode.SERVER_BUSY, "too many concurrent requests")
        response = error_response(error)
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + response.body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
        self.api.metrics.observe_request("unmatched", "other", 503, 0.0)
        access_log.warning(
            "refused a connection: %d handlers busy", self.settings.max_concurrent_requests
        )

    def server_close(self) -> None:
        super().server_close()
        self.api.service.storage.close()


class RelayRequestHandler(BaseHTTPRequestHandler):
    server: RelayHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "nitro-wallet-relay"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Per-recv timeout: a client that stalls (slowloris) is dropped.
        self.connection.settimeout(self.server.settings.request_timeout_seconds)
        self._request_id = uuid.uuid4().hex
        self._started = time.monotonic()
        self._body_consumed = False

    # Every method goes through one dispatcher; the router answers 405 where needed.
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def version_string(self) -> str:
        return self.server_version

    def handle_expect_100(self) -> bool:
        return True  # answered in _read_body, once the length and media type are checked

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        supplied = self.headers.get("X-Request-Id", "")
        if _REQUEST_ID_RE.match(supplied):
            self._request_id = supplied
        route = "unmatched"
        try:
            url = urlsplit(self.path)
            match = self.server.api.router.resolve(self.command, url.path)
            route = match.template
            query = _parse_query(url.query, match.endpoint.query)
            body = None
            raw = b""
            if match.endpoint.body is not Body.NONE:
                raw = self._read_body()
                if match.endpoint.body is Body.RAW:
                    pass  # the handler parses it (JSON-RPC)
                elif raw:
                    body = parse_json_object(raw)
                elif match.endpoint.body is Body.REQUIRED:
                    raise invalid_request("a JSON body is required")
            response = match.endpoint.handler(Call(match.params, query, body, raw))
        except MethodNotAllowedError as exc:
            route = exc.template
            response = error_response(exc)
        except RelayError as exc:
            response = error_response(exc)
        except TimeoutError:
            response = error_response(
                RelayError(408, RelayCode.REQUEST_TIMEOUT, "request body timed out")
            )
        except Exception:
            log.exception(
                "unhandled error answering %s %s [%s]", self.command, route, self._request_id
            )
            response = error_response(internal_error())
        self._send(response, route)
        if not self._body_consumed and self._announces_body():
            self._linger()

    def _announces_body(self) -> bool:
        if self.headers.get("Transfer-Encoding") is not None:
            return True
        length = (self.headers.get("Content-Length") or "").strip()
        return length not in ("", "0")

    def _linger(self) -> None:
        deadline = time.monotonic() + LINGER_SECONDS
        budget = LINGER_MAX_BYTES
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.25)
            while budget > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(65536, budget))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise RelayError(
                411, RelayCode.LENGTH_REQUIRED, "send the body with a Content-Length (no chunking)"
            )
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""
        text = lengths[0].strip()
        if len(lengths) > 1 or not text.isascii() or not text.isdigit() or len(text) > 15:
            raise invalid_request("Content-Length must be one non-negative integer")
        length = int(text)
        limit = self.server.settings.max_body_bytes
        if length > limit:
            self.close_connection = True
            raise RelayError(
                413, RelayCode.BODY_TOO_LARGE, f"body of {length} bytes exceeds {limit} bytes"
            )
        if length == 0:
            return b""
        _check_media_type(self.headers.get("Content-Type"))
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        data = self.rfile.read(length)
        self._body_consumed = True
        if len(data) != length:
            raise invalid_request("body is shorter than its Content-Length")
        return data

    def _send(self, response: Response, route: str) -> None:
        self.close_connection = True
        # Count before answering: a client that reads /metrics right after this
        # response must already see it.
        duration = time.monotonic() - self._started
        method = self.command if self.command in KNOWN_METHODS else "other"
        self.server.api.metrics.observe_request(route, method, response.status, duration)
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Request-Id", self._request_id)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            self.wfile.flush()
        except OSError as exc:
            log.debug("client went away before the answer was sent: %s", type(exc).__name__)
        self._log_access(response.status, duration)

    def _log_access(self, status: int, duration: float) -> None:
        path = urlsplit(getattr(self, "path", "") or "").path[:256]
        access_log.info(
            "%s %s %d %.1fms request_id=%s",
            _UNSAFE_LOG_CHARS.sub("?", self.command or "-")[:16],
            _UNSAFE_LOG_CHARS.sub("?", path) or "-",
            status,
            duration * 1000,
            self._request_id,
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, long URI, unknown method) as JSON."""
        error = RelayError(
            code,
            str(_STATUS_CODES.get(code, RelayCode.INVALID_REQUEST)),
            message or "malformed request",
        )
        self._send(error_response(error), "unmatched")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _account writes the access log

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.server: " + format, *args)


def _parse_query(text: str, allowed: frozenset[str]) -> dict[str, str]:
    if not text:
        return {}
    try:
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except ValueError:
        raise invalid_request("malformed query string") from None
    unknown = sorted(set(pairs) - allowed)
    if unknown:
        raise invalid_request(f"unknown query parameter(s): {', '.join(unknown)}")
    query: dict[str, str] = {}
    for name, values in pairs.items():
        if len(values) != 1:
            raise invalid_request(f"query parameter {name} given more than once")
        query[name] = values[0]
    return query


def _check_media_type(header: str | None) -> None:
    if header is None:
        raise RelayError(
            415, RelayCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"
        )
    media, _, params = header.partition(";")
    if media.strip().lower() != "application/json":
        raise RelayError(
            415, RelayCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise RelayError(415, RelayCode.UNSUPPORTED_MEDIA_TYPE, "JSON bodies must be UTF-8")
