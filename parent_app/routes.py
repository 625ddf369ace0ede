"""The relay's HTTP API, independent of the socket server: routing, envelope checks,
caller authentication, and the mapping of service results to JSON responses.

The relay checks the envelope only (JSON object, top-level field types, UUIDs,
no floats anywhere); the enclave validates the transaction's fields.

Every endpoint but /healthz, /readyz, /metrics and /openapi.json authenticates its
caller (``parent_app.auth``): a request without a stamp or a bearer token gets 401
before its body is read, one with an invalid token or an unreadable stamp 401 before
anything runs. Read-only routes need the ``read`` scope at the relay; account creation
and signing carry the caller to the enclave (``auth``), which decides. JSON-RPC
authenticates the HTTP request the same way and each call of a batch by the scope its
method needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Any

from enclave_app import strict_json
from parent_app.audit_log import AuditLogWriter
from parent_app.auth import Caller, RelayAuth, has_credentials, unauthenticated
from parent_app.errors import RelayCode, RelayError, invalid_request
from parent_app.jsonrpc import MAX_JSON_DEPTH, JsonRpcApi, SignedTxShape
from parent_app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from parent_app.openapi import build_openapi
from parent_app.readiness import RETRY_AFTER_SECONDS as READINESS_RETRY_AFTER_SECONDS
from parent_app.service import CREATE_METADATA, MAX_BATCH_ITEMS, BatchItem, WalletService
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
    object (None for raw or absent bodies). ``raw`` keeps the exact body bytes,
    ``headers`` the request headers (lowercase names; a repeated header's values joined
    with ", ") and ``query_string`` the query as sent, for what must see them as sent
    (stamps, approvals, bearer tokens). ``caller`` is who sends it, once authenticated.
    """

    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any] | None
    raw: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = ""
    path: str = ""
    query_string: str = ""
    caller: Caller | None = None

    @property
    def target(self) -> str:
        """The request target as sent: path and ``?query`` (what a stamp signs)."""
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    @property
    def who(self) -> Caller:
        if self.caller is None:
            raise RuntimeError("this handler runs only for an authenticated caller")
        return self.caller


Handler = Callable[[Call], Response]


@dataclass(frozen=True)
class Endpoint:
    method: str
    handler: Handler
    body: Body = Body.NONE
    query: frozenset[str] = frozenset()
    #: Closed by default: only the probes, the metrics and the API description are open.
    authenticated: bool = True
    #: The handler runs on the event loop's thread (``parent_app.loop_bridge``): every
    #: wait on its path goes through the loop (the enclave call) or off it (a storage
    #: read, a credential refresh). Others run on the handler pool.
    on_loop: bool = False


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


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a new account asks to seal with it, as sent (the enclave validates it)."""
    asked = {name: body[name] for name in CREATE_METADATA if name in body}
    for name, value in asked.items():
        if not isinstance(value, list):
            raise invalid_request(f"{name} must be an array")
    return asked


def _rpc_response(answer: bytes | None) -> Response:
    return Response(204, b"") if answer is None else Response(200, answer)


# -- the API ----------------------------------------------------------------------

#: Routes still served while the relay drains: the probes and the metrics.
DRAIN_EXEMPT_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class RelayApi:
    def __init__(
        self,
        service: WalletService,
        auth: RelayAuth,
        *,
        chain_id: int | None = None,
        max_batch_requests: int = 100,
        upstream: UpstreamClient | None = None,
        audit: AuditLogWriter | None = None,
    ) -> None:
        self.service = service
        self.auth = auth
        self.audit = audit
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
        add = self._add
        add("/v1/accounts", Endpoint("POST", self.create_account, Body.OPTIONAL))
        add(
            "/v1/accounts",
            Endpoint("GET", self.list_accounts, query=frozenset({"limit", "cursor"})),
        )
        add("/v1/accounts/{account_id}", Endpoint("GET", self.get_account, on_loop=True))
        add(
            "/v1/accounts/{account_id}/sign/transaction",
            Endpoint("POST", self.sign_transaction, Body.REQUIRED, on_loop=True),
        )
        add(
            "/v1/accounts/{account_id}/sign/transactions",
            Endpoint("POST", self.sign_transactions, Body.REQUIRED, on_loop=True),
        )
        add(
            "/v1/accounts/{account_id}/sign/message",
            Endpoint("POST", self.sign_message, Body.REQUIRED, on_loop=True),
        )
        add(
            "/v1/accounts/{account_id}/sign/typed-data",
            Endpoint("POST", self.sign_typed_data, Body.REQUIRED, on_loop=True),
        )
        add(
            "/v1/accounts/{account_id}/sign/authorization",
            Endpoint("POST", self.sign_authorization, Body.REQUIRED, on_loop=True),
        )
        add(
            "/v1/attestation",
            Endpoint("GET", self.attestation, query=frozenset({"nonce", "user_data"})),
        )
        add("/v1/audit/head", Endpoint("GET", self.audit_head, query=frozenset({"nonce"})))
        add("/", Endpoint("POST", self.jsonrpc, Body.RAW))
        add("/geth", Endpoint("POST", self.jsonrpc_geth, Body.RAW))
        add("/healthz", Endpoint("GET", self.healthz, authenticated=False))
        add("/readyz", Endpoint("GET", self.readyz, authenticated=False))
        add("/metrics", Endpoint("GET", self.metrics_text, authenticated=False))
        add("/openapi.json", Endpoint("GET", self.openapi, authenticated=False))

    def _add(self, template: str, endpoint: Endpoint) -> None:
        """Route ``endpoint``; an authenticated one's handler gets the identified caller."""
        if endpoint.authenticated:
            endpoint = replace(endpoint, handler=partial(self._identified, endpoint.handler))
        self.router.add(template, endpoint)

    def _identified(self, handler: Handler, call: Call) -> Response:
        caller = self.auth.identify(call.method, call.target, call.headers, call.raw)
        return handler(replace(call, caller=caller))

    def require_credentials(self, endpoint: Endpoint, headers: Mapping[str, str]) -> None:
        """401 for a request to an authenticated endpoint without a stamp or a token: the
        server calls this before it reads the body."""
        if endpoint.authenticated and not has_credentials(headers):
            raise unauthenticated()

    def close(self) -> None:
        """Stop the audit log writer after its last pull (the server is closing)."""
        if self.audit is not None:
            self.audit.stop()

    def set_draining(self, draining: bool) -> None:
        """Drain mode (rolling upgrades): new requests except the probes and the metrics
        get 503 ``draining``; requests already admitted finish."""
        self.draining = draining
        self.metrics.set_draining(draining)

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
        _only_fields(body, {"account_id", *CREATE_METADATA})
        account_id = parse_uuid(body["account_id"], "account_id") if "account_id" in body else None
        metadata = _metadata(body)
        auth = call.who.enclave_auth("create")
        return json_response(201, self.service.create_account(account_id, auth, metadata))

    def get_account(self, call: Call) -> Response:
        call.who.require("read")
        account_id = parse_uuid(call.params["account_id"], "account_id")
        return json_response(200, self.service.get_account(account_id))

    def list_accounts(self, call: Call) -> Response:
        call.who.require("read")
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
        auth = call.who.enclave_auth("sign")
        return json_response(200, self.service.sign_transaction(account_id, transaction, auth))

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
        auth = call.who.enclave_auth("sign")
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
            outcomes = self.service.sign_batch(items, auth)
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
        auth = call.who.enclave_auth("sign")
        return json_response(200, self.service.sign_message(account_id, message, auth))

    def sign_typed_data(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        typed_data = _object_field(call.body or {}, "typed_data")
        auth = call.who.enclave_auth("sign")
        return json_response(200, self.service.sign_typed_data(account_id, typed_data, auth))

    def sign_authorization(self, call: Call) -> Response:
        account_id = parse_uuid(call.params["account_id"], "account_id")
        authorization = _object_field(call.body or {}, "authorization")
        auth = call.who.enclave_auth("sign")
        result = self.service.sign_authorization(account_id, authorization, auth)
        return json_response(200, result)

    def attestation(self, call: Call) -> Response:
        call.who.require("read")
        nonce = parse_hex_query(call.query.get("nonce"), "nonce")
        user_data = parse_hex_query(call.query.get("user_data"), "user_data")
        return json_response(200, self.service.attest(nonce, user_data))

    def audit_head(self, call: Call) -> Response:
        """The enclave's signed receipt head for the caller's nonce; the audit log holds
        the head (and maybe more) when this answers (``audit verify --head``)."""
        call.who.require("read")
        nonce = parse_hex_query(call.query.get("nonce"), "nonce")
        if nonce is None:
            raise invalid_request("nonce is required: 16 to 64 random bytes in hex")
        head = self.service.audit_head(nonce)
        if self.audit is not None:
            self.audit.drain()
        return json_response(200, head)

    def jsonrpc(self, call: Call) -> Response:
        """Ethereum JSON-RPC: HTTP 200 for every answer, 204 when nothing is answered."""
        return _rpc_response(self.rpc.handle(call.raw, SignedTxShape.RAW, call.who))

    def jsonrpc_geth(self, call: Call) -> Response:
        """The same JSON-RPC with geth's eth_signTransaction result ({raw, tx})."""
        return _rpc_response(self.rpc.handle(call.raw, SignedTxShape.GETH, call.who))

    def healthz(self, call: Call) -> Response:
        return json_response(200, {"status": "ok"})

    def readyz(self, call: Call) -> Response:
        """200 only when ready; degraded, not ready and draining are 503 (readiness.py)."""
        report = self.service.readiness()
        body = report.to_json()
        status = report.http_status
        if self.draining:
            body["status"], status = "draining", 503
        headers = {} if status == 200 else {"Retry-After": str(READINESS_RETRY_AFTER_SECONDS)}
        return Response(status, json_response(status, body).body, headers=headers)

    def metrics_text(self, call: Call) -> Response:
        return Response(200, self.metrics.expose(), METRICS_CONTENT_TYPE)

    def openapi(self, call: Call) -> Response:
        return Response(200, self._openapi)
