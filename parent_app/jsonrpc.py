"""Ethereum JSON-RPC 2.0 on the relay's port (``POST /``), for web3.py, ethers and Foundry.

Methods: ``eth_accounts``, ``eth_signTransaction``, ``eth_sign``, ``personal_sign``,
``eth_signTypedData_v4``, and ``eth_chainId`` / ``net_version`` only when
``[relay] chain_id`` is configured (without it they are "method not found": the
relay never guesses a chain).

Envelope rules: one request object or a batch (non-empty array, at most
``max_batch_requests``); a request without ``id`` is a notification and gets no
answer; every answer is HTTP 200. Parsing is as strict as the REST API: NaN,
Infinity and duplicate keys are parse errors, and a floating-point number anywhere in
a request makes that request fail with -32602 naming where the float was.

Errors: -32700 parse, -32600 invalid request, -32601 method not found, -32602
invalid params, -32603 internal. Relay and enclave failures use the EIP-1474 server
codes (``parent_app.errors.jsonrpc_code``) with the stable string code in
``error.data.code`` and the relay's or enclave's message unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enclave_app import strict_json
from parent_app.errors import EnclaveBadResponse, JsonRpcCode, RelayError, jsonrpc_code
from parent_app.metrics import RelayMetrics
from parent_app.rawtx import RawTransactionError, transaction_json
from parent_app.service import WalletService
from parent_app.storage import checksum_address

log = logging.getLogger(__name__)

#: JSON nesting allowed in a request (typed data nests a few levels; nothing needs 64).
MAX_JSON_DEPTH = 64
FLOAT_MESSAGE = "floating-point numbers are not accepted: send integers or 0x-hex strings"
_REQUEST_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class RpcError(Exception):
    """A JSON-RPC error object: numeric code, message and optional data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def invalid_params(message: str) -> RpcError:
    return RpcError(JsonRpcCode.INVALID_PARAMS, message)


def from_relay_error(error: RelayError) -> RpcError:
    return RpcError(jsonrpc_code(error.code), error.message, {"code": error.code})


# -- strict parsing ---------------------------------------------------------------


@dataclass(frozen=True)
class _Float:
    """Stands in for a float so the request it sits in can be refused with its id."""

    text: str


def loads(text: str) -> Any:
    """Strict JSON (enclave_app.strict_json) with floats kept as markers, so the error
    can name where the float was; raises StrictJsonError otherwise."""
    return strict_json.loads(text, max_depth=MAX_JSON_DEPTH, parse_float=_Float)


def float_path(value: Any, root: str) -> str | None:
    """Where the first float marker in ``value`` is (``params[0].value``), if any."""
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Float):
            return path
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        raise RpcError(JsonRpcCode.PARSE_ERROR, "parse error: empty body")
    try:
        return loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RpcError(JsonRpcCode.PARSE_ERROR, "parse error: body is not UTF-8") from None
    except RecursionError:
        raise RpcError(JsonRpcCode.PARSE_ERROR, "parse error: nested too deeply") from None
    except ValueError as exc:
        raise RpcError(JsonRpcCode.PARSE_ERROR, f"parse error: {exc}") from None


# -- parameter helpers --------------------------------------------------------------


def _positional(params: list[Any], method: str, names: tuple[str, ...]) -> list[Any]:
    if len(params) != len(names):
        raise invalid_params(f"{method} takes [{', '.join(names)}], got {len(params)} param(s)")
    return params


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise invalid_params(f"{name} must be a 0x-prefixed 20-byte address")
    try:
        return checksum_address(value)
    except ValueError as exc:
        raise invalid_params(f"{name}: {exc}") from None


def _hex_data(value: Any, name: str) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("0x")
        or len(value) % 2
        or not set(value[2:]) <= _HEX_DIGITS
    ):
        raise invalid_params(f"{name} must be 0x-prefixed hex bytes")
    return value


def _parse_quantity(value: Any) -> int | None:
    """An int or canonical 0x-hex quantity, else None (the enclave explains what is wrong)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x") and 2 < len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


# -- the API ------------------------------------------------------------------------

Method = Callable[[list[Any]], Any]


class JsonRpcApi:
    def __init__(
        self,
        service: WalletService,
        *,
        chain_id: int | None,
        max_batch_requests: int,
        metrics: RelayMetrics,
    ) -> None:
        self.service = service
        self.chain_id = chain_id
        self.max_batch_requests = max_batch_requests
        self.metrics = metrics
        self.methods: dict[str, Method] = {
            "eth_accounts": self.eth_accounts,
            "eth_signTransaction": self.eth_sign_transaction,
            "eth_sign": self.eth_sign,
            "personal_sign": self.personal_sign,
            "eth_signTypedData_v4": self.eth_sign_typed_data_v4,
        }
        if chain_id is not None:
            self.methods["eth_chainId"] = self.eth_chain_id
            self.methods["net_version"] = self.net_version

    # -- envelope ---------------------------------------------------------------

    def handle(self, raw: bytes) -> bytes | None:
        """The answer body for one HTTP body, or None when nothing is to be answered."""
        try:
            message = _parse_body(raw)
        except RpcError as exc:
            self.metrics.jsonrpc_requests.inc("invalid", str(exc.code))
            return _dump(_error_response(None, exc))
        if isinstance(message, list):
            answers = self._batch(message)
            if isinstance(answers, dict):
                return _dump(answers)
            return _dump(answers) if answers else None
        answer = self._one(message)
        return None if answer is None else _dump(answer)

    def _batch(self, messages: list[Any]) -> list[dict[str, Any]] | dict[str, Any]:
        if not messages:
            self.metrics.jsonrpc_requests.inc("invalid", str(JsonRpcCode.INVALID_REQUEST))
            error = RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: empty batch")
            return _error_response(None, error)
        if len(messages) > self.max_batch_requests:
            self.metrics.jsonrpc_requests.inc("invalid", str(JsonRpcCode.INVALID_REQUEST))
            error = RpcError(
                JsonRpcCode.INVALID_REQUEST,
                f"invalid request: batch of {len(messages)} requests exceeds the limit of "
                f"{self.max_batch_requests}",
            )
            return _error_response(None, error)
        self.metrics.jsonrpc_batches.inc()
        answers = [self._one(message) for message in messages]
        return [answer for answer in answers if answer is not None]

    def _one(self, message: Any) -> dict[str, Any] | None:
        request_id: Any = None
        notification = False
        label = "invalid"
        try:
            request_id, notification = _request_id(message)
            method = _method(message)
            label = method if method in self.methods else "unknown"
            result = self._call(method, _params(message))
        except RpcError as exc:
            self.metrics.jsonrpc_requests.inc(label, str(exc.code))
            if notification and exc.code != JsonRpcCode.INVALID_REQUEST:
                return None  # a well-formed notification gets no answer, even an error
            return _error_response(request_id, exc)
        self.metrics.jsonrpc_requests.inc(label, "ok")
        if notification:
            return None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _call(self, method: str, params: list[Any]) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise RpcError(JsonRpcCode.METHOD_NOT_FOUND, _not_found_message(method))
        try:
            return handler(params)
        except RelayError as exc:
            raise from_relay_error(exc) from None
        except RpcError:
            raise
        except Exception:
            log.exception("unhandled error in JSON-RPC method %s", method)
            raise RpcError(
                JsonRpcCode.INTERNAL_ERROR, "internal error", {"code": "internal_error"}
            ) from None

    # -- methods ------------------------------------------------------------------

    def eth_accounts(self, params: list[Any]) -> list[str]:
        _positional(params, "eth_accounts", ())
        return self.service.addresses()

    def eth_chain_id(self, params: list[Any]) -> str:
        _positional(params, "eth_chainId", ())
        return hex(self._configured_chain_id())

    def net_version(self, params: list[Any]) -> str:
        _positional(params, "net_version", ())
        return str(self._configured_chain_id())

    def _configured_chain_id(self) -> int:
        if self.chain_id is None:  # the methods are only registered with a chain id
            raise RpcError(JsonRpcCode.METHOD_NOT_FOUND, "no chain id is configured")
        return self.chain_id

    def eth_sign_transaction(self, params: list[Any]) -> dict[str, Any]:
        (transaction,) = _positional(params, "eth_signTransaction", ("transaction",))
        if not isinstance(transaction, dict):
            raise invalid_params("transaction must be a JSON object")
        if "from" not in transaction:
            raise invalid_params("transaction.from is required: the address to sign with")
        sender = _address(transaction["from"], "transaction.from")
        account_id = self.service.account_id_for_address(sender)
        transaction = self._with_chain_id(transaction)
        signed = self.service.sign_transaction(account_id, transaction)
        raw = signed["raw_transaction"]
        try:
            tx = transaction_json(bytes.fromhex(raw[2:]))
        except (RawTransactionError, ValueError) as exc:
            raise EnclaveBadResponse(
                f"enclave returned an undecodable transaction: {exc}"
            ) from None
        return {"raw": raw, "tx": tx}

    def _with_chain_id(self, transaction: dict[str, Any]) -> dict[str, Any]:
        """Fill chainId from the configuration when absent; refuse another chain's id."""
        if self.chain_id is None:
            return transaction
        if "chainId" not in transaction:
            return {**transaction, "chainId": hex(self.chain_id)}
        given = _parse_quantity(transaction["chainId"])
        if given is not None and given != self.chain_id:
            raise invalid_params(
                f"transaction.chainId {given} does not match this relay's chain id {self.chain_id}"
            )
        return transaction

    def eth_sign(self, params: list[Any]) -> str:
        address, data = _positional(params, "eth_sign", ("address", "data"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        return self.service.sign_message(account_id, _hex_data(data, "data"))["signature"]

    def personal_sign(self, params: list[Any]) -> str:
        data, address = _positional(params, "personal_sign", ("data", "address"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        if not isinstance(data, str):
            raise invalid_params("data must be a string: 0x-hex bytes or UTF-8 text")
        return self.service.sign_message(account_id, data)["signature"]

    def eth_sign_typed_data_v4(self, params: list[Any]) -> str:
        address, typed = _positional(params, "eth_signTypedData_v4", ("address", "typedData"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        if isinstance(typed, str):
            try:
                typed = loads(typed)
            except (ValueError, RecursionError) as exc:
                raise invalid_params(f"typedData is not valid JSON: {exc}") from None
            where = float_path(typed, "typedData")
            if where is not None:
                raise invalid_params(f"{FLOAT_MESSAGE} (at {where})")
        if not isinstance(typed, dict):
            raise invalid_params("typedData must be a JSON object or a string holding one")
        return self.service.sign_typed_data(account_id, typed)["signature"]


# -- envelope helpers ---------------------------------------------------------------


def _request_id(message: Any) -> tuple[Any, bool]:
    """(id, is_notification); the id is checked first so later errors can echo it."""
    if not isinstance(message, dict):
        raise RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: expected a JSON object")
    if "id" not in message:
        return None, True
    request_id = message["id"]
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
        raise RpcError(
            JsonRpcCode.INVALID_REQUEST, "invalid request: id must be a string or integer"
        )
    return request_id, False


def _method(message: dict[str, Any]) -> str:
    if message.get("jsonrpc") != "2.0":
        raise RpcError(JsonRpcCode.INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"')
    unknown = sorted(set(message) - _REQUEST_MEMBERS)
    if unknown:
        raise RpcError(
            JsonRpcCode.INVALID_REQUEST, f"invalid request: unknown member(s) {', '.join(unknown)}"
        )
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: method must be a string")
    return method


def _params(message: dict[str, Any]) -> list[Any]:
    params = message.get("params", [])
    where = float_path(params, "params")
    if where is not None:
        raise invalid_params(f"{FLOAT_MESSAGE} (at {where})")
    if isinstance(params, dict):
        raise invalid_params("params must be an array: named params are not supported")
    if not isinstance(params, list):
        raise RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: params must be an array")
    return params


def _not_found_message(method: str) -> str:
    shown = method if len(method) <= 64 and method.isprintable() else method[:64] + "..."
    if method in ("eth_chainId", "net_version"):
        return f"method {shown} is not available: no chain id is configured ([relay] chain_id)"
    return f"method {shown} does not exist or is not available"


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


def _dump(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
