"""The upstream Ethereum node (``[relay] upstream_rpc_url``), as Web3Signer's eth1 mode uses it.

With an upstream node the relay is a client's only RPC endpoint:

- ``eth_sendTransaction`` (parent_app.send_transaction): the relay fills in what the
  client left out from the node, the enclave signs, and the relay sends
  ``eth_sendRawTransaction`` and answers the hash;
- every method the relay does not serve itself is forwarded to the node
  (:meth:`UpstreamClient.forward`) and its answer returned unchanged.

The HTTP client (urllib3, already in the relay's lock through botocore) never retries
and never follows redirects; every exchange is bounded in time (``timeout_seconds``
for the whole exchange) and size (:data:`MAX_RESPONSE_BYTES`). The URL can carry a
provider's API key, so it never appears in an error message or a log line.

Failures are typed (:class:`UpstreamError`, ``error.data.code`` on JSON-RPC):

- ``upstream_unavailable``: the node could not be reached, timed out or answered
  with an HTTP error (``reached`` is False only when the request certainly never got
  there);
- ``upstream_bad_response``: the node answered something that is not JSON-RPC;
- ``upstream_error`` and ``upstream_rejected``: the node refused a call made to fill a
  transaction in, or the signed transaction (parent_app.send_transaction).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from parent_app.errors import RelayCode, RelayError

#: The largest answer read from the node (a proxied eth_getLogs can be large).
MAX_RESPONSE_BYTES = 16 << 20
#: The longest text kept from a node's error message.
MAX_UPSTREAM_MESSAGE = 512
#: A node's error ``data`` is passed on when its JSON is at most this long.
MAX_UPSTREAM_DATA = 4096
QUANTITY_RE = re.compile(r"\A0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,63})\Z")


class UpstreamError(RelayError):
    """A typed upstream failure; ``upstream`` is the node's own error object, if any, and
    ``reached`` is False only when the request certainly never got to the node."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        upstream: Mapping[str, Any] | None = None,
        *,
        reached: bool = True,
    ) -> None:
        super().__init__(status, code, message)
        self.upstream = dict(upstream) if upstream is not None else None
        self.reached = reached


def unavailable(message: str, *, reached: bool = True) -> UpstreamError:
    return UpstreamError(503, RelayCode.UPSTREAM_UNAVAILABLE, message, reached=reached)


def bad_response(message: str) -> UpstreamError:
    return UpstreamError(502, RelayCode.UPSTREAM_BAD_RESPONSE, message)


class NodeError(Exception):
    """The node answered a JSON-RPC error object (kept, trimmed, in ``error``)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error
        self.message: str = error["message"]


def validate_url(url: str) -> str:
    """An http(s) URL with a host and no user info or fragment (keys go in the path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user info; put a provider key in the path as usual")
    if parts.fragment or port == 0 or any(c.isspace() for c in url):
        raise ValueError("must be an http(s) URL without fragment or blanks")
    return url


# -- the HTTP client ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One JSON-RPC answer from the node: exactly one of ``result`` / ``error`` is meaningful."""

    result: Any = None
    error: dict[str, Any] | None = None


class UpstreamClient:
    """JSON-RPC over HTTP to one node. Thread-safe; one bounded connection pool."""

    def __init__(
        self, url: str, timeout_seconds: float, max_response_bytes: int = MAX_RESPONSE_BYTES
    ) -> None:
        self._url = validate_url(url)
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=8,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
        )
        self._ids = itertools.count(1)
        self._chain_id: int | None = None

    def close(self) -> None:
        self._pool.clear()

    # -- exchanges ------------------------------------------------------------------

    def call(self, method: str, params: list[Any]) -> Any:
        """The node's result for one call; NodeError when it answers an error."""
        (answer,) = self.exchange([(method, params)])
        if answer.error is not None:
            raise NodeError(answer.error)
        return answer.result

    def forward(self, calls: list[tuple[str, list[Any]]]) -> list[Answer | UpstreamError]:
        """Each call's answer, in order: one HTTP request for all (a batch for several).
        A failure of the exchange as a whole is every call's answer."""
        try:
            return list(self.exchange(calls))
        except UpstreamError as exc:
            return [exc] * len(calls)

    def exchange(self, calls: list[tuple[str, list[Any]]]) -> list[Answer]:
        ids = [next(self._ids) for _ in calls]
        requests = [
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            for request_id, (method, params) in zip(ids, calls, strict=True)
        ]
        payload: Any = requests[0] if len(requests) == 1 else requests
        body = self._post(json.dumps(payload, separators=(",", ":")).encode())
        return _match_answers(body, ids)

    def _post(self, body: bytes) -> Any:
        deadline = time.monotonic() + self.timeout_seconds
        try:
            response = self._pool.request(
                "POST",
                self._url,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",
                },
                preload_content=False,
                redirect=False,
            )
        except (NewConnectionError, ConnectTimeoutError) as exc:
            message = f"upstream node unreachable: {_describe(exc)}"
            raise unavailable(message, reached=False) from None
        except ReadTimeoutError:
            raise self._timeout() from None
        except HTTPError as exc:
            raise unavailable(f"upstream node failed: {_describe(exc)}") from None
        try:
            data = self._read(response, deadline)
        finally:
            response.release_conn()
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            if response.status != 200:
                raise unavailable(f"upstream node answered HTTP {response.status}") from None
            raise bad_response("upstream node answered something that is not JSON") from None
        if response.status != 200 and not _looks_like_jsonrpc(parsed):
            raise unavailable(f"upstream node answered HTTP {response.status}")
        return parsed

    def _read(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    response.close()
                    raise self._timeout()
                chunk = response.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > self.max_response_bytes:
                    response.close()
                    raise bad_response(f"upstream answer exceeds {self.max_response_bytes} bytes")
                chunks.append(chunk)
        except ReadTimeoutError:
            raise self._timeout() from None
        except HTTPError as exc:
            raise unavailable(f"upstream node failed: {_describe(exc)}") from None

    def _timeout(self) -> UpstreamError:
        return unavailable(f"upstream node did not answer within {self.timeout_seconds:g} s")

    # -- what the sender needs ---------------------------------------------------

    def chain_id(self) -> int:
        """The node's chain id (asked once: a node does not change chains)."""
        if self._chain_id is None:
            self._chain_id = quantity_result("eth_chainId", self.call("eth_chainId", []))
        return self._chain_id


def _describe(exc: Exception) -> str:
    """An exception's kind without its text (which can hold the URL and its key)."""
    if isinstance(exc, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(exc, NewConnectionError):
        return "connection failed"
    if isinstance(exc, ProtocolError):
        return "connection broken"
    return type(exc).__name__


def _looks_like_jsonrpc(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(i, dict) and i.get("jsonrpc") == "2.0" for i in items)


def _match_answers(body: Any, ids: list[int]) -> list[Answer]:
    """The answers for ``ids`` in order; the node may answer a batch in any order."""
    items = body if isinstance(body, list) else [body]
    by_id: dict[int, Answer] = {}
    for item in items:
        if not isinstance(item, dict):
            raise bad_response("upstream node answered a JSON-RPC item that is not an object")
        request_id = item.get("id")
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            by_id[request_id] = _answer(item)
        elif len(ids) == 1 and request_id is None and "error" in item:
            by_id[ids[0]] = _answer(item)  # an error about the whole request
    missing = [i for i in ids if i not in by_id]
    if missing and len(items) == 1 and isinstance(body, dict) and "error" in body:
        return [_answer(body)] * len(ids)  # one error for the whole batch
    if missing:
        raise bad_response("upstream node left a request unanswered")
    return [by_id[i] for i in ids]


def _answer(item: dict[str, Any]) -> Answer:
    if "error" in item:
        return Answer(error=_node_error(item["error"]))
    if "result" not in item:
        raise bad_response("upstream node answered without result or error")
    return Answer(result=item["result"])


def _node_error(error: Any) -> dict[str, Any]:
    """The node's error object as the relay passes it on: code, message, small data."""
    if not isinstance(error, dict):
        raise bad_response("upstream node answered an error that is not an object")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, int) or isinstance(code, bool):
        raise bad_response("upstream node answered an error without an integer code")
    kept: dict[str, Any] = {"code": code, "message": str(message)[:MAX_UPSTREAM_MESSAGE]}
    if "data" in error and len(json.dumps(error["data"])) <= MAX_UPSTREAM_DATA:
        kept["data"] = error["data"]
    return kept


def quantity_result(method: str, value: Any) -> int:
    if not isinstance(value, str) or not QUANTITY_RE.match(value):
        raise bad_response(f"upstream node answered {method} with no 0x-hex quantity")
    return int(value, 16)
