"""The relay's HTTP API, independent of the socket server: routing, envelope checks,
and the mapping of service results to JSON responses.

The relay checks the envelope only (JSON object, top-level field types, UUIDs,
no floats anywhere); the enclave validates the transaction's fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from enclave_app import strict_json
from parent_app.errors import RelayCode, RelayError, invalid_request
from parent_app.jsonrpc import MAX_JSON_DEPTH, JsonRpcApi, SignedTxShape
from parent_app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from parent_app.openapi import build_openapi
from parent_app.service import MAX_BATCH_ITEMS, BatchItem, WalletService
from parent_app.storage import InvalidCursorError
from parent_app.upstream import UpstreamClient

JSON_CONTENT_TYPE = "application/json"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_ATTESTATION_INPUT_BYTES = 512  # the enclave's (and the NSM's) limit for nonce, user_data
_UUID_RE = re.compile(
    r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


class Body(Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"
    RAW = "raw"  # the handler parses the bytes itself (JSON-RPC: objects or batches)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One request as a handler sees it, independent of the HTTP server.

    ``params`` are the path parameters, ``query`` the query, ``body`` the parsed JSON
    object (None for raw or absent bodies). ``raw`` keeps the exact body bytes and
    ``headers`` the request headers (lowercase names; a repeated header's values joined
    with ", "), for what must see them as sent (stamps, approvals, bearer tokens).
    """

    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any] | None
    raw: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = ""
    path: str = ""


Handler = Callable[[Call], Response]


@dataclass(frozen=True)
class Endpoint:
    method: str
    handler: Handler
    body: Body = Body.NONE
    query: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Route:
    template: str
    pattern: re.Pattern[str]
    endpoints: dict[str, Endpoint]


@dataclass(frozen=True)
class Match:
    template: str
    endpoint: Endpoint
    params: dict[str, str]


def json_response(status: int, payload: Mapping[str, Any]) -> Response:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return Response(status, body)


def error_response(error: RelayError) -> Response:
    """``{"error": {"code", "message"}}``; every 503 tells the caller when to retry."""
    response = json_response(
        error.status, {"error": {"code": error.code, "message": error.message}}
    )
    headers = dict(error.headers)
    if error.status == 503:
        headers.setdefault("Retry-After", "1")
    return Response(response.status, response.body, response.content_type, headers)


def _compile(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\{([a-z_]+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile(f"\\A{regex}\\Z")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, template: str, endpoint: Endpoint) -> None:
        for route in self.routes:
            if route.template == template:
                route.endpoints[endpoint.method] = endpoint
                return
        self.routes.append(Route(template, _compile(template), {endpoint.method: endpoint}))

    def resolve(self, method: str, path: str) -> Match:
        """The endpoint for (method, path); 404 for no route, 405 (with Allow) for a method."""
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            endpoint = route.endpoints.get(method)
            if endpoint is None:
                allow = ", ".join(sorted(route.endpoints))
                raise MethodNotAllowedError(route.template, allow)
            return Match(route.template, endpoint, found.groupdict())
        raise RelayError(404, RelayCode.NOT_FOUND, "no such route")


class MethodNotAllowedError(RelayError):
    def __init__(self, template: str, allow: str) -> None:
        super().__init__(
            405,
            RelayCode.METHOD_NOT_ALLOWED,
            f"method not allowed; allowed: {allow}",
            {"Allow": allow},
        )
        self.template = template


# -- strict JSON ------------------------------------------------------------------


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON (enclave_app.strict_json): UTF-8, bounded depth, no floats, NaN,
    Infinity or duplicate keys, and an object at the top."""
    try:
        value = strict_json.loads(raw, max_depth=MAX_JSON_DEPTH)
    except strict_json.StrictJsonError as exc:
        raise RelayError(400, RelayCode.INVALID_JSON, f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid_request("body must be a JSON object")
    return value


def _only_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}")


def parse_uuid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _UUID_RE.match(value):
        raise invalid_request(f"{name} must be a UUID (8-4-4-4-12 hex digits)")
    return value.lower()


def _parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE_SIZE
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise invalid_request(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    limit = int(text)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise invalid_request(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return limit


def parse_hex_query(text: str | None, name: str) -> bytes | None:
    """A query value as hex bytes (optional 0x), at most MAX_ATTESTATION_INPUT_BYTES."""
    if text is None:
        return None
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if not digits:
        raise invalid_request(f"{name} must not be empty: omit it or send hex bytes")
    if not digits.isascii() or len(digits) % 2:
        raise invalid_request(f"{name} must be hex bytes (an even number of hex digits)")
    try:
        value = bytes.fromhex(digits)
    except ValueError:
        raise invalid_request(f"{name} must be hex bytes (an even number of hex digits)") from None
    if len(value) > MAX_ATTESTATION_INPUT_BYTES:
        raise invalid_request(f"{name} must be at most {MAX_ATTESTATION_INPUT_BYTES} bytes")
    return value


def _item_error(error: RelayError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message}}


def _object_field(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    _only_fields(body, {name})
    value = body.get(name)
    if not isinstance(value, dict):
        raise invalid_request(f"{name} must be a JSON object")
    return value


def _rpc_response(answer: bytes | None) -> Response:
    return Response(204, b"") if answer is None else Response(200, answer)


# -- the API ----------------------------------------------------------------------

#: Routes still served while the relay drains: the probes and the metrics.
DRAIN_EXEMPT_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class RelayApi:
    def __init__(
        self,
        service: WalletService,
        *,
        chain_id: int | None = None,
        max_batch_requests: int = 100,
        upstream: UpstreamClient | None = None,
    ) -> None:
        self.service = service
        self.metrics = service.metrics
        self.draining = False
        self.rpc = JsonRpcApi(
            service,
            chain_id=chain_id,
            max_batch_requests=max_batch_requests,
            metrics=service.metrics,
            upstream=upstream,
        )
        self._openapi = json.dumps(build_openapi(), separators=(",", ":")).encode()
        self.router = Router()
        add = self.router.add
        add("/v1/accounts", Endpoint("POST", self.create_account, Body.OPTIONAL))
        add(
            "/v1/accounts",
            Endpoint("GET", self.list_accounts, query=frozenset({"limit", "cursor"})),
        )
        add("/v1/accounts/{account_id}", Endpoint("GET", self.get_account))
        add(
            "/v1/accounts/{account_id}/sign/transaction",
            Endpoint("POST", self.sign_transaction, Body.REQUIRED),
        )
        add(
            "/v1/accounts/{account_id}/sign/transactions",
            Endpoint("POST", self.sign_transactions, Body.REQUIRED),
        )
        add(
            "/v1/accounts/{account_id}/sign/message",
            Endpoint("POST", self.sign_message, Body.REQUIRED),
        )
        add(
            "/v1/accounts/{account_id}/sign/typed-data",
            Endpoint("POST", self.sign_typed_data, Body.REQUIRED),
        )
        add(
            "/v1/accounts/{account_id}/sign/authorization",
            Endpoint("POST", self.sign_authorization, Body.REQUIRED),
        )
        add(
            "/v1/attestation",
            Endpoint("GET", self.attestation, query=frozenset({"nonce", "user_data"})),
        )
        add("/", Endpoint("POST", self.jsonrpc, Body.RAW))
        add("/geth", Endpoint("POST", self.jsonrpc_geth, Body.RAW))
        add("/healthz", Endpoint("GET", self.healthz))
        add("/readyz", Endpoint("GET", self.readyz))
        add("/metrics", Endpoint("GET", self.metrics_text))
        add("/openapi.json", Endpoint("GET", self.openapi))

    def set_draining(self, draining: bool) -> None:
        """Drain mode (rolling upgrades): new requests except the probes and the metrics
        get 503 ``draining``; requests already admitted finish."""
        self.draining = draining
        self.metrics.draining.set(1 if draining else 0)

    def admit(self, route: str) -> None:
        """Raise the 503 a draining relay answers to a request for ``route``."""
        if self.draining and route not in DRAIN_EXEMPT_ROUTES:
            raise RelayError(
                503,
                RelayCode.DRAINING,
                "the relay is draining for maintenance; retry on another host or shortly",
                {"Retry-After": "5"},
            )

    def create_account(self, call: Call) -> Response:
        body = call.body or {}
        _only_fields(body, {"account_id"})
        account_id = parse_uuid(body["account_id"], "account_id") if "account_id" in body else None
        return json_response(201, self.service.create_account(account_id))

    def get_account(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        return json_response(200, self.service.get_account(account_id))

    def list_accounts(self, call: Call) -> Response:
        limit = _parse_limit(call.query.get("limit"))
        cursor = call.query.get("cursor")
        try:
            page = self.service.list_accounts(limit, cursor)
        except InvalidCursorError as exc:
            raise invalid_request(str(exc)) from None
        return json_response(200, page)

    def sign_transaction(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        transaction = _object_field(call.body or {}, "transaction")
        return json_response(200, self.service.sign_transaction(account_id, transaction))

    def sign_transactions(self, call: Call) -> Response:
        """A batch: ``{"transactions": [...]}`` (1 to 100), one enclave frame, results in
        order, each ``{"raw_transaction", "hash"}`` or ``{"error": {"code", "message"}}``."""
        account_id = parse_uuid(call.params["account_id"], "account_id")
        body = call.body or {}
        _only_fields(body, {"transactions"})
        transactions = body.get("transactions")
        if not isinstance(transactions, list) or not 1 <= len(transactions) <= MAX_BATCH_ITEMS:
            raise invalid_request(
                f"transactions must be an array of 1 to {MAX_BATCH_ITEMS} transaction objects"
            )
        self.service.get_account(account_id)  # 404 for the whole request, not per item
        results: list[dict[str, Any] | None] = [None] * len(transactions)
        items: list[BatchItem] = []
        positions: list[int] = []
        for position, transaction in enumerate(transactions):
            if isinstance(transaction, dict):
                items.append(BatchItem("sign_transaction", account_id, transaction))
                positions.append(position)
            else:
                error = invalid_request(f"transactions[{position}] must be a JSON object")
                results[position] = _item_error(error)
        if items:
            outcomes = self.service.sign_batch(items)
            for position, outcome in zip(positions, outcomes, strict=True):
                results[position] = (
                    outcome.result if outcome.error is None else _item_error(outcome.error)
                )
        return json_response(200, {"results": results})

    def sign_message(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        body = call.body or {}
        _only_fields(body, {"message"})
        message = body.get("message")
        if not isinstance(message, str):
            raise invalid_request("message must be a string: 0x-hex bytes or UTF-8 text")
        return json_response(200, self.service.sign_message(account_id, message))

    def sign_typed_data(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        typed_data = _object_field(call.body or {}, "typed_data")
        return json_response(200, self.service.sign_typed_data(account_id, typed_data))

    def sign_authorization(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        authorization = _object_field(call.body or {}, "authorization")
        return json_response(200, self.service.sign_authorization(account_id, authorization))

    def attestation(self, call: Call) -> Response:
        nonce = parse_hex_query(call.query.get("nonce"), "nonce")
        user_data = parse_hex_query(call.query.get("user_data"), "user_data")
        return json_response(200, self.service.attest(nonce, user_data))

    def jsonrpc(self, call: Call) -> Response:
        """Ethereum JSON-RPC: HTTP 200 for every answer, 204 when nothing is answered."""
        return _rpc_response(self.rpc.handle(call.raw, SignedTxShape.RAW))

    def jsonrpc_geth(self, call: Call) -> Response:
        """The same JSON-RPC with geth's eth_signTransaction result ({raw, tx})."""
        return _rpc_response(self.rpc.handle(call.raw, SignedTxShape.GETH))

    def healthz(self, call: Call) -> Response:
        return json_response(200, {"status": "ok"})

    def readyz(self, call: Call) -> Response:
        readiness = self.service.readiness()
        if self.draining:
            payload = {"status": "draining", "checks": readiness.checks}
            return Response(503, json_response(503, payload).body, headers={"Retry-After": "5"})
        status = "ready" if readiness.ready else "not_ready"
        return json_response(
            200 if readiness.ready else 503, {"status": status, "checks": readiness.checks}
        )

    def metrics_text(self, call: Call) -> Response:
        return Response(200, self.metrics.expose(), METRICS_CONTENT_TYPE)

    def openapi(self, call: Call) -> Response:
        return Response(200, self._openapi)
