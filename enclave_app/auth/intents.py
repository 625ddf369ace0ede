"""What a stamped HTTP request asks the enclave to do, and the check that an op is it.

The relay turns an HTTP request into enclave ops; a hostile relay could turn it into
other ops. So the enclave parses the stamped request itself (strict JSON, the same
routes and JSON-RPC methods the relay serves) into ``Intent``s and every op item must
be one of them: the same op, the same account, and a payload strictly equal to the
stamped one (types included: ``1`` is not ``true``, ``"0x1"`` is not ``1``).

Routes (REST, ``/v1``):

- ``POST /v1/accounts`` -> ``generate_account``: the account id from the body, if any;
  the payload is the rest of the body (labels, account-bound keys), which the op's
  metadata must equal, so a relay cannot bind a key of its own to the new account
- ``POST /v1/accounts/{id}/sign/transaction`` ``{"transaction"}`` -> ``sign_transaction``
- ``POST /v1/accounts/{id}/sign/transactions`` ``{"transactions": [...]}`` -> one
  ``sign_transaction`` per element (the batch route: one ``sign_batch`` op)
- ``POST /v1/accounts/{id}/sign/message`` ``{"message"}`` -> ``sign_message``
- ``POST /v1/accounts/{id}/sign/typed-data`` ``{"typed_data"}`` -> ``sign_typed_data``
- ``POST /v1/accounts/{id}/sign/authorization`` ``{"authorization"}`` -> ``sign_authorization``

JSON-RPC (``POST /`` and ``POST /geth``, which differ only in the shape of an answer; one
request or a batch): ``eth_signTransaction [tx]`` and ``eth_sendTransaction [tx]``
(account = ``tx.from``), ``eth_sign [address, data]``, ``personal_sign [data, address]``,
``eth_signTypedData_v4 [address, typedData]`` and geth's names for the same,
``eth_signTypedData`` and ``eth_signTypedData_v3`` (typedData an object or a JSON string
holding one). Other methods ask nothing of the enclave and yield no intent.

Relay fill-ins: only for JSON-RPC transactions, and only for fields the client left
out, the relay may add ``chainId`` (from its configured chain) and, for
``eth_sendTransaction``, the fields it fetches from the node (nonce, gas, fees, type).
Every field the client sent must reach the enclave unchanged, and nothing may be
dropped. The signing policy still judges the filled-in values.

A request may carry several intents (a JSON-RPC batch): the op items must match a
subsequence of them, in order, each intent used at most once. The relay may leave an
intent out (it refused it itself), never add or change one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave_app import strict_json
from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["AccountRef", "Intent", "OpItem", "match_items", "parse_intents", "required_scopes"]

CREATE = "generate_account"
SIGN_TRANSACTION = "sign_transaction"
SIGN_MESSAGE = "sign_message"
SIGN_TYPED_DATA = "sign_typed_data"
SIGN_AUTHORIZATION = "sign_authorization"
SIGNING_OPS = frozenset({SIGN_TRANSACTION, SIGN_MESSAGE, SIGN_TYPED_DATA, SIGN_AUTHORIZATION})
MAX_JSON_DEPTH = 64

#: Fields the relay may add to a JSON-RPC transaction the client left them out of.
SIGN_TRANSACTION_FILLABLE = frozenset({"chainId"})
SEND_TRANSACTION_FILLABLE = frozenset(
    {
        "chainId",
        "nonce",
        "gas",
        "gasPrice",
        "maxFeePerGas",
        "maxPriorityFeePerGas",
        "maxFeePerBlobGas",
        "type",
    }
)

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SIGN_ROUTE = re.compile(
    rf"/v1/accounts/(?P<id>{_UUID})/sign/"
    r"(?P<kind>transactions|transaction|message|typed-data|authorization)"
)
_JSONRPC_TARGETS = frozenset({"/", "/geth"})
_TYPED_DATA_METHODS = frozenset(
    {"eth_signTypedData_v4", "eth_signTypedData", "eth_signTypedData_v3"}
)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_REST_PAYLOAD = {
    "transaction": (SIGN_TRANSACTION, "transaction"),
    "message": (SIGN_MESSAGE, "message"),
    "typed-data": (SIGN_TYPED_DATA, "typed_data"),
    "authorization": (SIGN_AUTHORIZATION, "authorization"),
}


@dataclass(frozen=True)
class AccountRef:
    """Which account the client meant: by id (REST) or by address (JSON-RPC, lower case)."""

    account_id: str | None = None
    address: str | None = None

    def matches(self, account_id: str, address: str) -> bool:
        if self.account_id is not None:
            return self.account_id == account_id
        if self.address is not None:
            return self.address == address.lower()
        return True  # account creation without a requested id: any fresh id


@dataclass(frozen=True)
class Intent:
    op: str
    account: AccountRef
    payload: Any
    fillable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OpItem:
    """One thing an op asks to do: a single op is one item, ``sign_batch`` one per entry."""

    op: str
    account_id: str
    address: str
    payload: Any


def required_scopes(intents: Sequence[Intent]) -> frozenset[str]:
    return frozenset("create" if intent.op == CREATE else "sign" for intent in intents)


def parse_intents(method: str, target: str, body: bytes) -> tuple[Intent, ...]:
    """The intents of a request; ``request_mismatch`` when it is not one the relay serves."""
    if method != "POST":
        raise _mismatch(f"{method} requests ask nothing of the enclave")
    if target == "/v1/accounts":
        return (_create_intent(body),)
    found = _SIGN_ROUTE.fullmatch(target)
    if found is not None and found["kind"] == "transactions":
        return _batch_intents(found["id"], body)
    if found is not None:
        op, field = _REST_PAYLOAD[found["kind"]]
        document = _object(body)
        if set(document) != {field}:
            raise _mismatch(f"the stamped body must be exactly {{{field!r}: ...}}")
        return (Intent(op, AccountRef(account_id=found["id"]), document[field]),)
    if target in _JSONRPC_TARGETS:
        return _jsonrpc_intents(body)
    raise _mismatch("the stamped path is not a route that reaches the enclave")


def match_items(intents: Sequence[Intent], items: Sequence[OpItem]) -> None:
    """Raise ``request_mismatch`` unless ``items`` match a subsequence of ``intents``."""
    position = 0
    for index, item in enumerate(items):
        while position < len(intents) and not _matches(intents[position], item):
            position += 1
        if position == len(intents):
            where = f"item {index}" if len(items) > 1 else "the op"
            raise _mismatch(
                f"{where} ({item.op} for account {item.account_id}) is not what the stamped "
                "request asks for: op, account and payload must be exactly the client's"
            )
        position += 1


def _matches(intent: Intent, item: OpItem) -> bool:
    if intent.op != item.op or not intent.account.matches(item.account_id, item.address):
        return False
    if intent.fillable:
        return _transaction_matches(intent.payload, item.payload, intent.fillable)
    return json_equal(intent.payload, item.payload)


def _transaction_matches(stamped: Any, given: Any, fillable: frozenset[str]) -> bool:
    if not isinstance(stamped, dict) or not isinstance(given, dict):
        return False
    if not set(stamped) <= set(given):
        return False  # the relay dropped a field the client sent
    return all(
        json_equal(stamped[name], value) if name in stamped else name in fillable
        for name, value in given.items()
    )


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality with exact types (``True`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- REST ----------------------------------------------------------------------------


def _create_intent(body: bytes) -> Intent:
    document = _object(body) if body.strip() else {}
    requested = document.get("account_id")
    if requested is not None and not (
        isinstance(requested, str) and re.fullmatch(_UUID, requested)
    ):
        raise _mismatch("the stamped account_id must be a lowercase UUID")
    metadata = {name: value for name, value in document.items() if name != "account_id"}
    return Intent(CREATE, AccountRef(account_id=requested), metadata)


def _batch_intents(account_id: str, body: bytes) -> tuple[Intent, ...]:
    document = _object(body)
    transactions = document.get("transactions")
    if set(document) != {"transactions"} or not isinstance(transactions, list):
        raise _mismatch("the stamped body must be exactly {'transactions': [...]}")
    account = AccountRef(account_id=account_id)
    return tuple(Intent(SIGN_TRANSACTION, account, tx) for tx in transactions)


# -- JSON-RPC ------------------------------------------------------------------------


def _jsonrpc_intents(body: bytes) -> tuple[Intent, ...]:
    document = _parse(body)
    requests = document if isinstance(document, list) else [document]
    intents: list[Intent] = []
    for request in requests:
        if not isinstance(request, dict):
            continue  # the relay answers -32600; nothing reaches the enclave
        method, params = request.get("method"), request.get("params", [])
        if not isinstance(params, list):
            continue
        intent = _jsonrpc_intent(method, params)
        if intent is not None:
            intents.append(intent)
    return tuple(intents)


def _jsonrpc_intent(method: object, params: list[Any]) -> Intent | None:
    if method in ("eth_signTransaction", "eth_sendTransaction") and len(params) == 1:
        tx = params[0]
        sender = tx.get("from") if isinstance(tx, dict) else None
        fillable = (
            SIGN_TRANSACTION_FILLABLE
            if method == "eth_signTransaction"
            else SEND_TRANSACTION_FILLABLE
        )
        return _signing(SIGN_TRANSACTION, sender, tx, fillable)
    if method == "eth_sign" and len(params) == 2:
        return _signing(SIGN_MESSAGE, params[0], params[1])
    if method == "personal_sign" and len(params) == 2:
        return _signing(SIGN_MESSAGE, params[1], params[0])
    if method in _TYPED_DATA_METHODS and len(params) == 2:
        typed = params[1]
        if isinstance(typed, str):
            try:
                typed = strict_json.loads(typed, max_depth=MAX_JSON_DEPTH)
            except strict_json.StrictJsonError:
                return None  # the relay refuses it too
        return _signing(SIGN_TYPED_DATA, params[0], typed)
    return None


def _signing(
    op: str, address: object, payload: Any, fillable: frozenset[str] = frozenset()
) -> Intent | None:
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        return None  # the relay refuses a bad address: no op for it
    return Intent(op, AccountRef(address=address.lower()), payload, fillable)


# -- parsing -------------------------------------------------------------------------


def _parse(body: bytes) -> Any:
    try:
        return strict_json.loads(body, max_depth=MAX_JSON_DEPTH)
    except strict_json.StrictJsonError as exc:
        raise _mismatch(f"the stamped body is not strict JSON: {exc}") from None


def _object(body: bytes) -> Mapping[str, Any]:
    document = _parse(body)
    if not isinstance(document, dict):
        raise _mismatch("the stamped body must be a JSON object")
    return document


def _mismatch(message: str) -> EnclaveError:
    return EnclaveError(ErrorCode.REQUEST_MISMATCH, message)
