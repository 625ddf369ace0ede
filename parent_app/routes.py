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
from parent_app.service import WalletService
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
    """One request as a handler sees it: path parameters, query and parsed body."""

    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any] | None
    raw: bytes = b""


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
    response = json_response(
        error.status, {"error": {"code": error.code, "message": error.message}}
    )
    return Response(response.status, response.body, response.content_type, error.headers)


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


def _object_field(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    _only_fields(body, {name})
    value = body.get(name)
    if not isinstance(value, dict):
        raise invalid_request(f"{name} must be a JSON object")
    return value


def _rpc_response(answer: bytes | None) -> Response:
    return Response(204, b"") if answer is None else Response(200, answer)


# -- the API ----------------------------------------------------------------------


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
        status = "ready" if readiness.ready else "not_ready"
        return json_response(
            200 if readiness.ready else 503, {"status": status, "checks": readiness.checks}
        )

    def metrics_text(self, call: Call) -> Response:
        return Response(200, self.metrics.expose().encode(), METRICS_CONTENT_TYPE)

    def openapi(self, call: Call) -> Response:
        return Response(200, self._openapi)
