"""Ethereum JSON-RPC 2.0 on the relay's port, for ethers, viem, Foundry and web3.py unchanged.

Two URLs serve the same methods; they differ only in what ``eth_signTransaction``
answers, because the clients disagree:

- ``POST /``: the signed raw transaction as a hex string, as anvil and Web3Signer
  answer (cast, ethers' ``Transaction.from`` and viem's ``parseTransaction`` need it);
- ``POST /geth``: geth's and Clef's ``{"raw": "0x..", "tx": {...}}`` (web3.py's
  ``sign_transaction`` reads that shape).

Methods served by the relay itself (never forwarded): ``eth_accounts``,
``eth_signTransaction``, ``eth_sign``, ``personal_sign``, ``eth_signTypedData_v4`` with
its geth alias ``eth_signTypedData`` and, where v3 and v4 agree,
``eth_signTypedData_v3``; ``eth_chainId`` and ``net_version`` from ``[relay] chain_id``;
and with ``[relay] upstream_rpc_url``, ``eth_sendTransaction``
(parent_app.send_transaction).
With an upstream node every other method is forwarded to it and its answer returned
unchanged, except signing methods (``eth_sign*``, ``personal_*``, ``account_*``,
``clef_*``, ``wallet_*``): no key outside the enclave ever signs through the relay.
Without one, other methods are -32601 with geth's wording (ethers then reports
``UNSUPPORTED_OPERATION``).

Envelope rules: one request object or a batch (non-empty array). A batch longer than
``max_batch_requests`` is answered element by element, each with -32005 and the
reason, so every client sees why. Within a batch every signature goes to the enclave
together, as one ``sign_batch`` op (:meth:`JsonRpcApi._sign_all`; a lone signature as
its single op), and every forwarded call goes to the node in one batch.

Authentication: the HTTP request is authenticated by the route (``parent_app.auth``:
401 without a stamp or a valid token). Each call then needs a scope: the signing
methods ``sign`` (a token's scope is checked here; a stamp goes to the enclave with the
exact body, which the enclave parses itself), every other method ``read`` (a token's
scope, or the stamp verified here). A stamp or approvals are good for one enclave op,
so a stamped or approved batch with ``eth_sendTransaction`` (one op of its own) and
any other signing call refuses the ``eth_sendTransaction`` calls (-32602).

A request without ``id`` is a notification: it runs and gets no answer.
Every answer is HTTP 200. Parsing is as strict as the REST API: NaN, Infinity and
duplicate keys are parse errors, and a float in a request for one of the relay's own
methods fails that request with -32602 naming where the float was (forwarded
requests keep theirs: cast sends fee-history percentiles as floats).

Errors: -32700 parse, -32600 invalid request, -32601 method not found, -32602
invalid params, -32603 internal. Relay and enclave failures use the EIP-1474 server
codes (``parent_app.errors.jsonrpc_code``) with the stable string code in
``error.data.code``, the message unchanged and, for an upstream node's refusal, the
node's own error in ``error.data.upstream``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

from enclave_app import strict_json
from parent_app.auth import Caller
from parent_app.errors import (
    EnclaveBadResponse,
    JsonRpcCode,
    RelayCode,
    RelayError,
    jsonrpc_code,
)
from parent_app.metrics import RelayMetrics
from parent_app.rawtx import RawTransactionError, transaction_json
from parent_app.send_transaction import TransactionSender
from parent_app.service import BatchItem, WalletService
from parent_app.storage import checksum_address
from parent_app.typed_data_v3 import V3MismatchError, check_v3_compatible
from parent_app.upstream import Answer, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

#: JSON nesting allowed in a request (typed data nests a few levels; nothing needs 64).
MAX_JSON_DEPTH = 64
FLOAT_MESSAGE = "floating-point numbers are not accepted: send integers or 0x-hex strings"
PRE_EIP155_MESSAGE = (
    "chainId 0 would make a pre-EIP-155 transaction, valid on every chain: only "
    "replay-protected (EIP-155) transactions are signed"
)
_REQUEST_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
#: Prefixes of methods that make a node or wallet sign with its own keys: never forwarded
#: (viem retries a failed eth_sendTransaction as wallet_sendTransaction, for one).
_SIGNING_PREFIXES = ("eth_sign", "personal_", "account_", "clef_", "wallet_")
_PROXIED_LABEL = "proxied"
#: Methods that make the enclave sign: they need the ``sign`` scope; every other method
#: (answered by the relay or forwarded to the node) needs ``read``.
SIGNING_METHODS = frozenset(
    {
        "eth_signTransaction",
        "eth_sendTransaction",
        "eth_sign",
        "personal_sign",
        "eth_signTypedData",
        "eth_signTypedData_v3",
        "eth_signTypedData_v4",
    }
)
ONE_OP_MESSAGE = (
    "a stamped or approved request reaches the enclave once (a stamp and an approval are "
    "good for one use): send eth_sendTransaction in a request of its own"
)


class SignedTxShape(Enum):
    """What eth_signTransaction answers: the raw hex string, or geth's {raw, tx}."""

    RAW = "raw"
    GETH = "geth"


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
    data: dict[str, Any] = {"code": error.code}
    if isinstance(error, UpstreamError) and error.upstream is not None:
        data["upstream"] = error.upstream
    return RpcError(jsonrpc_code(error.code), error.message, data)


def method_not_found(method: str, reason: str = "") -> RpcError:
    """geth's wording, which ethers maps to UNSUPPORTED_OPERATION."""
    shown = method if len(method) <= 64 and method.isprintable() else method[:64] + "..."
    message = f"the method {shown} does not exist/is not available"
    return RpcError(JsonRpcCode.METHOD_NOT_FOUND, f"{message}: {reason}" if reason else message)


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


def _with_floats(value: Any) -> Any:
    """``value`` with float markers as floats again, for a request forwarded unchanged."""
    if isinstance(value, _Float):
        number = float(value.text)
        if not math.isfinite(number):
            raise invalid_params(f"number {value.text[:32]} is out of range")
        return number
    if isinstance(value, dict):
        return {k: _with_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_floats(v) for v in value]
    return value


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


def _no_floats(params: list[Any]) -> list[Any]:
    where = float_path(params, "params")
    if where is not None:
        raise invalid_params(f"{FLOAT_MESSAGE} (at {where})")
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


def _transaction(params: list[Any], method: str) -> tuple[dict[str, Any], str]:
    """The transaction object of eth_signTransaction / eth_sendTransaction and its sender."""
    (transaction,) = _positional(params, method, ("transaction",))
    if not isinstance(transaction, dict):
        raise invalid_params("transaction must be a JSON object")
    if transaction.get("from") is None:
        raise invalid_params("transaction.from is required: the address to sign with")
    return transaction, _address(transaction["from"], "transaction.from")


def _refuse_pre_eip155(transaction: dict[str, Any]) -> None:
    if "chainId" in transaction and _parse_quantity(transaction["chainId"]) == 0:
        raise invalid_params(PRE_EIP155_MESSAGE)


def _typed_data(value: Any) -> dict[str, Any]:
    """EIP-712 typed data given as an object or as a string holding one."""
    if isinstance(value, str):
        try:
            value = loads(value)
        except (ValueError, RecursionError) as exc:
            raise invalid_params(f"typedData is not valid JSON: {exc}") from None
        where = float_path(value, "typedData")
        if where is not None:
            raise invalid_params(f"{FLOAT_MESSAGE} (at {where})")
    if not isinstance(value, dict):
        raise invalid_params("typedData must be a JSON object or a string holding one")
    return value


# -- deferred work: signatures for the enclave, calls for the node -----------------


@dataclass(frozen=True)
class Signing:
    """One enclave signature a method needs; a batch's signatures go to the enclave
    together. ``finish`` turns the service's result into the method's result."""

    op: str
    account_id: str
    payload: Any
    finish: Callable[[dict[str, str]], Any]


@dataclass(frozen=True)
class Forward:
    """A call for the upstream node, answered with the node's answer unchanged."""

    method: str
    params: list[Any]


@dataclass
class _Slot:
    """One request of a body: its id, and its outcome as it becomes known."""

    request_id: Any
    notification: bool
    label: str
    outcome: Any = None
    error: RpcError | None = None


@dataclass(frozen=True)
class _Context:
    """What every call of one HTTP body shares: the result shape and the caller."""

    shape: SignedTxShape
    caller: Caller
    #: A stamped or approved body that would need more than one enclave op.
    one_op_exceeded: bool = False


Method = Callable[[list[Any], _Context], Any]


# -- the API ------------------------------------------------------------------------


class JsonRpcApi:
    def __init__(
        self,
        service: WalletService,
        *,
        chain_id: int | None,
        max_batch_requests: int,
        metrics: RelayMetrics,
        upstream: UpstreamClient | None = None,
    ) -> None:
        self.service = service
        self.chain_id = chain_id
        self.max_batch_requests = max_batch_requests
        self.metrics = metrics
        self.upstream = upstream
        self.sender = (
            None
            if upstream is None
            else TransactionSender(upstream, service.sign_transaction, default_chain_id=chain_id)
        )
        # Methods get params as parsed, floats included; each checks its own.
        self.methods: dict[str, Method] = {
            "eth_accounts": self.eth_accounts,
            "eth_chainId": self.eth_chain_id,
            "net_version": self.net_version,
            "eth_signTransaction": self.eth_sign_transaction,
            "eth_sendTransaction": self.eth_send_transaction,
            "eth_sign": self.eth_sign,
            "personal_sign": self.personal_sign,
            "eth_signTypedData": self.eth_sign_typed_data,
            "eth_signTypedData_v3": self.eth_sign_typed_data_v3,
            "eth_signTypedData_v4": self.eth_sign_typed_data_v4,
        }

    # -- envelope ---------------------------------------------------------------

    def handle(self, raw: bytes, shape: SignedTxShape, caller: Caller) -> bytes | None:
        """The answer body for one HTTP body, or None when nothing is to be answered."""
        try:
            message = _parse_body(raw)
        except RpcError as exc:
            self.metrics.jsonrpc_requests.inc("invalid", str(exc.code))
            return _dump(_error_response(None, exc))
        if not isinstance(message, list):
            answers = self._run([message], shape, caller)
            return _dump(answers[0]) if answers else None
        if not message:
            self.metrics.jsonrpc_requests.inc("invalid", str(JsonRpcCode.INVALID_REQUEST))
            error = RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: empty batch")
            return _dump(_error_response(None, error))
        self.metrics.jsonrpc_batches.inc()
        if len(message) > self.max_batch_requests:
            answers = self._refuse_batch(message)
        else:
            answers = self._run(message, shape, caller)
        return _dump(answers) if answers else None

    def _refuse_batch(self, messages: list[Any]) -> list[dict[str, Any]]:
        """Every element of an over-long batch gets the reason (a client that matches
        answers by id would otherwise see 'missing response' for each)."""
        error = RpcError(
            JsonRpcCode.LIMIT_EXCEEDED,
            f"batch of {len(messages)} requests exceeds the limit of {self.max_batch_requests} "
            "([relay] max_batch_requests): send smaller batches",
            {"code": RelayCode.BATCH_TOO_LARGE},
        )
        answers = []
        for message in messages:
            try:
                request_id, notification = _request_id(message)
            except RpcError:
                request_id, notification = None, False
            self.metrics.jsonrpc_requests.inc("invalid", str(error.code))
            if not notification:
                answers.append(_error_response(request_id, error))
        return answers

    def _run(
        self, messages: list[Any], shape: SignedTxShape, caller: Caller
    ) -> list[dict[str, Any]]:
        """Answers in request order: methods first, then the signatures and the
        forwarded calls they left, each kind in one round trip."""
        signing_calls = sum(
            1 for m in messages if isinstance(m, dict) and m.get("method") in SIGNING_METHODS
        )
        context = _Context(shape, caller, caller.one_shot and signing_calls > 1)
        slots = [self._start(message, context) for message in messages]
        signing = [s for s in slots if isinstance(s.outcome, Signing)]
        if signing:
            results = self._sign_all([s.outcome for s in signing], caller)
            for slot, result in zip(signing, results, strict=True):
                self._settle(slot, partial(_finish_signing, slot.outcome, result))
        forwarding = [s for s in slots if isinstance(s.outcome, Forward)]
        if forwarding:
            forwarded = self._forward_all([s.outcome for s in forwarding])
            for slot, answer in zip(forwarding, forwarded, strict=True):
                self._settle(slot, partial(_forwarded, answer))
        answers = (self._answer(slot) for slot in slots)
        return [answer for answer in answers if answer is not None]

    def _start(self, message: Any, context: _Context) -> _Slot:
        slot = _Slot(request_id=None, notification=False, label="invalid")
        try:
            slot.request_id, slot.notification = _request_id(message)
            method = _method(message)
            params = _params(message)
            handler = self.methods.get(method)
            scope = "sign" if method in SIGNING_METHODS else "read"
            if handler is not None:
                slot.label = method
                self._settle(slot, lambda: self._call(handler, params, context, scope))
            else:
                slot.label = "unknown"
                context.caller.require(scope)
                slot.outcome = self._forward_or_refuse(method, params)
                slot.label = _PROXIED_LABEL
        except RpcError as exc:
            slot.error = exc
        except RelayError as exc:
            slot.error = from_relay_error(exc)
        return slot

    @staticmethod
    def _call(handler: Method, params: list[Any], context: _Context, scope: str) -> Any:
        context.caller.require(scope)
        return handler(params, context)

    def _settle(self, slot: _Slot, run: Callable[[], Any]) -> None:
        """Run one step of a request, turning every failure into its JSON-RPC error."""
        try:
            slot.outcome = run()
        except RpcError as exc:
            slot.error = exc
        except RelayError as exc:
            slot.error = from_relay_error(exc)
        except Exception:
            log.exception("unhandled error in JSON-RPC method %s", slot.label)
            slot.error = RpcError(
                JsonRpcCode.INTERNAL_ERROR, "internal error", {"code": "internal_error"}
            )

    def _answer(self, slot: _Slot) -> dict[str, Any] | None:
        if slot.error is not None:
            self.metrics.jsonrpc_requests.inc(slot.label, str(slot.error.code))
            if slot.notification and slot.error.code != JsonRpcCode.INVALID_REQUEST:
                return None  # a well-formed notification gets no answer, even an error
            return _error_response(slot.request_id, slot.error)
        outcome = slot.outcome
        if isinstance(outcome, Answer) and outcome.error is not None:
            self.metrics.jsonrpc_requests.inc(slot.label, str(outcome.error["code"]))
            answer = {"jsonrpc": "2.0", "id": slot.request_id, "error": outcome.error}
        else:
            self.metrics.jsonrpc_requests.inc(slot.label, "ok")
            result = outcome.result if isinstance(outcome, Answer) else outcome
            answer = {"jsonrpc": "2.0", "id": slot.request_id, "result": result}
        return None if slot.notification else answer

    # -- the two round trips ----------------------------------------------------

    def _sign_all(self, items: list[Signing], caller: Caller) -> list[dict[str, str] | RelayError]:
        """Each item's service result, or the RelayError that item failed with: one
        enclave op for the whole list (``sign_batch``; a lone item as its single op)."""
        batch = [BatchItem(item.op, item.account_id, item.payload) for item in items]
        try:
            auth = caller.enclave_auth("sign")
            if len(batch) == 1:
                return [self.service.sign_one(batch[0], auth)]
            outcomes = self.service.sign_batch(batch, auth)
        except RelayError as exc:  # the frame as a whole failed: every item says why
            return [exc] * len(items)
        return [o.error if o.error is not None else (o.result or {}) for o in outcomes]

    def _forward_all(self, calls: list[Forward]) -> list[Answer | UpstreamError]:
        if self.upstream is None:  # a Forward is only ever made with an upstream
            raise RuntimeError("no upstream node to forward to")
        return self.upstream.forward([(call.method, call.params) for call in calls])

    def _forward_or_refuse(self, method: str, params: list[Any]) -> Forward:
        if method.startswith(_SIGNING_PREFIXES):
            raise method_not_found(method, "the relay never forwards signing methods")
        if self.upstream is None:
            raise method_not_found(method)
        return Forward(method, _with_floats(params))

    # -- methods ------------------------------------------------------------------

    def eth_accounts(self, params: list[Any], context: _Context) -> list[str]:
        _positional(params, "eth_accounts", ())
        return self.service.addresses()

    def eth_chain_id(self, params: list[Any], context: _Context) -> Any:
        if self.chain_id is None:
            return self._forward_or_unset("eth_chainId", params)
        _positional(params, "eth_chainId", ())
        return hex(self.chain_id)

    def net_version(self, params: list[Any], context: _Context) -> Any:
        if self.chain_id is None:
            return self._forward_or_unset("net_version", params)
        _positional(params, "net_version", ())
        return str(self.chain_id)

    def _forward_or_unset(self, method: str, params: list[Any]) -> Forward:
        """Without [relay] chain_id the node's chain is the answer, if there is a node."""
        if self.upstream is None:
            raise method_not_found(method, "no chain id is configured ([relay] chain_id)")
        return Forward(method, _with_floats(params))

    def eth_sign_transaction(self, params: list[Any], context: _Context) -> Signing:
        transaction, sender = _transaction(_no_floats(params), "eth_signTransaction")
        account_id = self.service.account_id_for_address(sender)
        geth = context.shape is SignedTxShape.GETH
        finish = _geth_signed_transaction if geth else _raw_transaction
        return Signing("sign_transaction", account_id, self._with_chain_id(transaction), finish)

    def _with_chain_id(self, transaction: dict[str, Any]) -> dict[str, Any]:
        """The request's own chainId, or the default chain id when it gives none.

        Which chains may be signed for is the signing policy's decision, made in the
        enclave (issue 11): the relay passes every chainId on unchanged, except 0,
        which would be a pre-EIP-155 transaction.
        """
        if transaction.get("chainId") is None:
            if self.chain_id is None:
                return transaction  # the enclave refuses what needs one
            return {**transaction, "chainId": hex(self.chain_id)}
        _refuse_pre_eip155(transaction)
        return transaction

    def eth_send_transaction(self, params: list[Any], context: _Context) -> str:
        if self.sender is None:
            raise method_not_found(
                "eth_sendTransaction",
                "the relay sends only with an upstream node ([relay] upstream_rpc_url); "
                "sign with eth_signTransaction and send with eth_sendRawTransaction",
            )
        transaction, sender = _transaction(_no_floats(params), "eth_sendTransaction")
        if context.one_op_exceeded:
            raise invalid_params(ONE_OP_MESSAGE)
        account_id = self.service.account_id_for_address(sender)
        _refuse_pre_eip155(transaction)
        auth = context.caller.enclave_auth("sign")
        return self.sender.send(account_id, sender, transaction, auth)

    def eth_sign(self, params: list[Any], context: _Context) -> Signing:
        address, data = _positional(_no_floats(params), "eth_sign", ("address", "data"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        return Signing("sign_message", account_id, _hex_data(data, "data"), _signature)

    def personal_sign(self, params: list[Any], context: _Context) -> Signing:
        data, address = _positional(_no_floats(params), "personal_sign", ("data", "address"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        if not isinstance(data, str):
            raise invalid_params("data must be a string: 0x-hex bytes or UTF-8 text")
        return Signing("sign_message", account_id, data, _signature)

    def eth_sign_typed_data_v4(self, params: list[Any], context: _Context) -> Signing:
        return self._typed_data("eth_signTypedData_v4", params)

    def eth_sign_typed_data(self, params: list[Any], context: _Context) -> Signing:
        """geth's name for v4 ([address, typedData]), which web3.py sends."""
        if params and isinstance(params[0], list):
            raise invalid_params(
                "eth_signTypedData takes [address, typedData] (geth's EIP-712, as v4); "
                "the legacy v1 form ([typedDataArray, address]) is not signed"
            )
        return self._typed_data("eth_signTypedData", params)

    def eth_sign_typed_data_v3(self, params: list[Any], context: _Context) -> Signing:
        signing = self._typed_data("eth_signTypedData_v3", params)
        try:
            check_v3_compatible(signing.payload)
        except V3MismatchError as exc:
            raise invalid_params(str(exc)) from None
        return signing

    def _typed_data(self, method: str, params: list[Any]) -> Signing:
        address, typed = _positional(_no_floats(params), method, ("address", "typedData"))
        account_id = self.service.account_id_for_address(_address(address, "address"))
        return Signing("sign_typed_data", account_id, _typed_data(typed), _signature)


# -- results ------------------------------------------------------------------------


def _finish_signing(item: Signing, result: dict[str, str] | RelayError) -> Any:
    if isinstance(result, RelayError):
        raise result
    return item.finish(result)


def _forwarded(answer: Answer | UpstreamError) -> Answer:
    if isinstance(answer, UpstreamError):
        raise answer
    return answer


def _signature(result: dict[str, str]) -> str:
    return result["signature"]


def _decoded(raw: str) -> dict[str, Any]:
    """The signed transaction as geth's JSON; the enclave's bytes must decode."""
    try:
        return transaction_json(bytes.fromhex(raw[2:]))
    except (RawTransactionError, ValueError) as exc:
        raise EnclaveBadResponse(f"enclave returned an undecodable transaction: {exc}") from None


def _raw_transaction(result: dict[str, str]) -> str:
    """anvil's and Web3Signer's answer: the raw transaction (checked to decode)."""
    _decoded(result["raw_transaction"])
    return result["raw_transaction"]


def _geth_signed_transaction(result: dict[str, str]) -> dict[str, Any]:
    """geth's SignTransactionResult: the raw bytes and the transaction decoded from them."""
    raw = result["raw_transaction"]
    return {"raw": raw, "tx": _decoded(raw)}


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
    if isinstance(params, dict):
        raise invalid_params("params must be an array: named params are not supported")
    if not isinstance(params, list):
        raise RpcError(JsonRpcCode.INVALID_REQUEST, "invalid request: params must be an array")
    return params


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


def _dump(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
