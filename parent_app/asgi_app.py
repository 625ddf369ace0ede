"""The relay as an ASGI application: the HTTP envelope around ``RelayApi``.

Routing, JSON parsing and the handlers stay in ``parent_app.routes`` (independent of
any server). This adapter:

- resolves the route first (404/405 before a body byte is read), and refuses a request
  to an authenticated route that carries no credentials at all (401);
- refuses bodies by their announced length (413) and media type (415) before reading
  them, and chunked bodies (411); ``Expect: 100-continue`` is answered only once both
  checks pass (the server sends "100 Continue" on the first read);
- runs the handler where its waits cannot hold up other connections: the signing
  routes and the account read on the loop's thread, suspended while they wait
  (``loop_bridge``; their only waits are the enclave call, which goes through the
  loop, and a record-cache miss or credential refresh, which go to the pool); the
  others in a bounded thread pool (the service layer blocks on the enclave and
  storage), so the event loop keeps parsing other connections. A request takes
  one of ``max_concurrent_requests`` slots only once it arrived whole (head and body),
  and holds it until its handler returns; with none free it is answered 503
  ``server_busy`` at once. Clients still sending (a slow or drip-feeding one) hold a
  connection and the request deadline's timer, never a slot;
- answers every error as JSON, with the request id, and records each request once.

Answers that refuse a body the client may still be sending carry ``Connection:
close``; the server protocol then drains that body for a bounded time before it
closes, so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor
from typing import Any

from prometheus_client import Gauge

from parent_app import loop_bridge
from parent_app.config import RelaySettings
from parent_app.errors import RelayError, internal_error, invalid_request, server_busy
from parent_app.http_envelope import (
    Recorder,
    announces_body,
    body_length,
    check_media_type,
    header_map,
    parse_query,
    request_id,
    response_headers,
)
from parent_app.routes import (
    Body,
    Call,
    Handler,
    MethodNotAllowedError,
    RelayApi,
    Response,
    error_response,
    parse_json_object,
)

log = logging.getLogger("parent_app.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Refusals of a body that was not read: the connection closes (after a bounded drain)
#: rather than receive a body nobody wants (an unauthenticated one included). Other
#: answers keep the connection; the server discards an unread body within the request
#: deadline.
_CLOSE_STATUSES = frozenset({400, 401, 411, 413, 415})


class ClientGoneError(Exception):
    """The connection ended (or its deadline passed) before the request was read."""


class ExecutionSlots:
    """Requests being answered (their handler runs), at most ``limit``; used on the
    event loop's thread only. ``gauge`` shows how many."""

    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self.active = 0
        # Read when /metrics is scraped, not written twice per request.
        gauge.set_function(lambda: self.active)

    def take(self) -> None:
        if self.active >= self.limit:
            raise server_busy("too many concurrent requests; retry shortly")
        self.active += 1

    def release(self) -> None:
        self.active -= 1


class RelayAsgiApp:
    def __init__(
        self,
        api: RelayApi,
        settings: RelaySettings,
        executor: Executor,
        recorder: Recorder,
        slots: ExecutionSlots,
    ) -> None:
        self.api = api
        self.settings = settings
        self.executor = executor
        self.recorder = recorder
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        started = time.monotonic()
        headers = header_map(scope["headers"])
        rid = request_id(headers)
        method: str = scope["method"]
        path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        route = "unmatched"
        body_read = not announces_body(headers)
        try:
            match = self.api.router.resolve(method, path)
            route = match.template
            self.api.admit(route)
            self.api.require_credentials(match.endpoint, headers)  # 401 before the body
            query_string = scope["query_string"].decode("latin-1")
            query = parse_query(query_string, match.endpoint.query)
            raw = b""
            body = None
            if match.endpoint.body is not Body.NONE:
                raw = await self._read_body(headers, receive)
                body_read = True
                if match.endpoint.body is Body.RAW:
                    pass  # the handler parses it (JSON-RPC: objects or batches)
                elif raw:
                    body = parse_json_object(raw)
                elif match.endpoint.body is Body.REQUIRED:
                    raise invalid_request("a JSON body is required")
            call = Call(
                match.params,
                query,
                body,
                raw,
                headers=headers,
                method=method,
                path=path,
                query_string=query_string,
            )
            self.slots.take()
            try:
                handler = match.endpoint.handler
                if match.endpoint.on_loop:
                    response = await loop_bridge.run(
                        self.executor, _answer, handler, call, route, rid
                    )
                else:
                    response = await asyncio.get_running_loop().run_in_executor(
                        self.executor, _answer, handler, call, route, rid
                    )
            finally:
                self.slots.release()
        except ClientGoneError:
            return  # nobody to answer; the protocol recorded the refusal if it made one
        except MethodNotAllowedError as exc:
            route = exc.template
            response = error_response(exc)
        except RelayError as exc:
            response = error_response(exc)
        close = not body_read and response.status in _CLOSE_STATUSES
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers(response, rid, close=close),
            }
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        self.recorder.record(
            method=method,
            path=path,
            route=route,
            status=response.status,
            seconds=time.monotonic() - started,
            request_id=rid,
        )

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        length = body_length(headers, self.settings.max_body_bytes)
        if length == 0:
            return b""
        check_media_type(headers.get("content-type"))
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError
            chunk = message.get("body", b"")
            chunks.append(chunk)
            received += len(chunk)
            if not message.get("more_body", False):
                break
        if received != length:  # the parser frames by Content-Length: defensive only
            raise invalid_request("body length does not match its Content-Length")
        return b"".join(chunks)


def _answer(handler: Handler, call: Call, route: str, rid: str) -> Response:
    """Run one handler (on a pool thread or the loop's); every failure becomes a JSON
    answer."""
    try:
        return handler(call)
    except RelayError as exc:
        return error_response(exc)
    except Exception:
        log.exception("unhandled error answering %s %s [%s]", call.method, route, rid)
        return error_response(internal_error())
