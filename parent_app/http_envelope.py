"""The HTTP envelope around the API, independent of the server library: request ids,
body-length and media-type rules, the query string, the headers every answer carries,
and the access log plus request metrics.

Both the ASGI application (requests the server parsed) and the connection protocol
(requests refused before the application sees them: malformed, too slow, too many)
answer through these helpers, so every answer has the same shape.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

from parent_app.errors import RelayCode, RelayError, invalid_request
from parent_app.metrics import RelayMetrics
from parent_app.routes import Response

access_log = logging.getLogger("parent_app.access")

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
_UNSAFE_LOG_CHARS = re.compile(r"[^\x21-\x7e]")
_MAX_QUERY_FIELDS = 16


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers as lowercase name -> value; a repeated header's values are joined
    with ", " (RFC 9110 list semantics), so nothing a client sent is silently dropped."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def request_id(headers: Mapping[str, str]) -> str:
    """The caller's X-Request-Id when it is safe to echo and log, else a fresh one."""
    supplied = headers.get("x-request-id", "")
    return supplied if _REQUEST_ID_RE.match(supplied) else new_request_id()


_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits, unique per process run: a random prefix and a counter. Request ids
    trace, they authorise nothing, so they need not be unpredictable (and a getrandom
    call per request, as uuid4 makes, showed in the relay's profile)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def announces_body(headers: Mapping[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    return headers.get("content-length", "").strip() not in ("", "0")


def body_length(headers: Mapping[str, str], limit: int) -> int:
    """The announced body length, checked before a byte of the body is read.

    Chunked bodies are refused with 411: every client of this API knows its JSON body's
    length, and a length known up front lets the cap apply before reading.
    """
    if "transfer-encoding" in headers:
        raise RelayError(
            411, RelayCode.LENGTH_REQUIRED, "send the body with a Content-Length (no chunking)"
        )
    text = headers.get("content-length")
    if text is None:
        return 0
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise invalid_request("Content-Length must be one non-negative integer")
    length = int(text)
    if length > limit:
        raise RelayError(
            413, RelayCode.BODY_TOO_LARGE, f"body of {length} bytes exceeds {limit} bytes"
        )
    return length


def check_media_type(header: str | None) -> None:
    media, _, params = (header or "").partition(";")
    if media.strip().lower() != "application/json":  # an absent header included
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


def parse_query(text: str, allowed: frozenset[str]) -> dict[str, str]:
    if not text:
        return {}
    try:
        pairs = parse_qs(
            text, keep_blank_values=True, strict_parsing=True, max_num_fields=_MAX_QUERY_FIELDS
        )
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


def response_headers(
    response: Response, request_id: str, *, close: bool = False
) -> list[tuple[bytes, bytes]]:
    """The headers of every answer: type, length, request id, no caching, no sniffing."""
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", str(len(response.body)).encode("ascii")),
        (b"x-request-id", request_id.encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    )
    if close:
        headers.append((b"connection", b"close"))
    return headers


class Recorder:
    """Counts every answer and writes one access-log line per request: method, path
    (no query string), status, duration, request id. Never bodies, headers or
    credentials."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics

    def record(
        self,
        *,
        method: str,
        path: str,
        route: str,
        status: int,
        seconds: float,
        request_id: str,
    ) -> None:
        label = method if method in KNOWN_METHODS else "other"
        self.metrics.observe_request(route, label, status, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return  # the line is not built when nobody reads it
        access_log.info(
            "%s %s %d %.1fms request_id=%s",
            _UNSAFE_LOG_CHARS.sub("?", method or "-")[:16],
            _UNSAFE_LOG_CHARS.sub("?", path[:256]) or "-",
            status,
            seconds * 1000,
            request_id,
        )
