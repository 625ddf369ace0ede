"""The upstream Ethereum node (``[relay] upstream_rpc_url``), as Web3Signer's eth1 mode uses it.

With an upstream node the relay is a client's only RPC endpoint:

- ``eth_sendTransaction`` (:class:`TransactionSender`): the relay fills in what the
  client left out (nonce, gas, fees, chain id) from the node, the enclave signs, and
  the relay sends ``eth_sendRawTransaction`` and answers the hash;
- every method the relay does not serve itself is forwarded to the node
  (:meth:`UpstreamClient.forward`) and its answer returned unchanged.

The HTTP client (urllib3, already in the relay's lock through botocore) never retries
and never follows redirects; every exchange is bounded in time (``timeout_seconds``
for the whole exchange) and size (:data:`MAX_RESPONSE_BYTES`). The URL can carry a
provider's API key, so it never appears in an error message or a log line.

Failures are typed (:class:`UpstreamError`, ``error.data.code`` on JSON-RPC):

- ``upstream_unavailable``: the node could not be reached, timed out or answered
  with an HTTP error; on ``eth_sendRawTransaction`` the message says whether the
  transaction may have reached the node (then it names the hash to look up);
- ``upstream_bad_response``: the node answered something that is not JSON-RPC;
- ``upstream_error``: the node refused a call the relay made to fill the transaction
  in (``eth_estimateGas`` reverting, for one); ``error.data.upstream`` is its error;
- ``upstream_rejected``: the node refused the signed transaction. A refused
  transaction is never reported as sent.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
#: EIP-2681: a transaction with nonce 2^64-1 or above is invalid.
MAX_NONCE = 2**64 - 2
#: How long a send for one account waits for the previous one to finish.
ACCOUNT_LOCK_SECONDS = 30.0
#: How long the relay trusts its own count of sent transactions over a node's lower one.
NONCE_MEMORY_SECONDS = 60.0
#: Accounts whose last sent nonce the relay remembers (oldest forgotten first).
MAX_REMEMBERED_ACCOUNTS = 10_000
#: What nodes answer when the same transaction is already in their pool: it was sent.
_ALREADY_KNOWN = re.compile(r"already known|known transaction|alreadyknown", re.IGNORECASE)
_QUANTITY_RE = re.compile(r"\A0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,63})\Z")
_HASH_RE = re.compile(r"\A0x[0-9a-fA-F]{64}\Z")


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
    if not isinstance(value, str) or not _QUANTITY_RE.match(value):
        raise bad_response(f"upstream node answered {method} with no 0x-hex quantity")
    return int(value, 16)


# -- nonces ---------------------------------------------------------------------------


class NonceTracker:
    """Serializes sends per account and remembers the next nonce of recent sends.

    A node's pending count can lag behind (a load-balanced provider, a send that has
    not propagated): for :data:`NONCE_MEMORY_SECONDS` after a send the relay uses its
    own count when the node's is lower. After that the node is right again, so a
    transaction that never made it does not leave a gap forever. A higher count from
    the node (someone else sent from the account) always wins.
    """

    def __init__(
        self,
        lock_seconds: float = ACCOUNT_LOCK_SECONDS,
        memory_seconds: float = NONCE_MEMORY_SECONDS,
        max_accounts: int = MAX_REMEMBERED_ACCOUNTS,
    ) -> None:
        self.lock_seconds = lock_seconds
        self.memory_seconds = memory_seconds
        self.max_accounts = max_accounts
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._next: OrderedDict[str, tuple[int, float]] = OrderedDict()

    @contextmanager
    def hold(self, address: str) -> Iterator[None]:
        """The account's lock, for one send; busy after ``lock_seconds`` of waiting."""
        key = address.lower()
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=self.lock_seconds):
                raise RelayError(
                    503,
                    RelayCode.SERVER_BUSY,
                    f"another eth_sendTransaction from {address} is still in progress",
                    {"Retry-After": "1"},
                )
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def next_nonce(self, address: str, pending_count: int) -> int:
        """The nonce for the next send: the node's pending count, or more if we know better."""
        with self._mutex:
            remembered = self._next.get(address.lower())
        if remembered is None:
            return pending_count
        nonce, at = remembered
        if time.monotonic() - at > self.memory_seconds:
            return pending_count
        return max(nonce, pending_count)

    def sent(self, address: str, nonce: int) -> None:
        """Record a transaction the node accepted."""
        key = address.lower()
        now = time.monotonic()
        with self._mutex:
            previous = self._next.pop(key, None)
            following = nonce + 1
            if previous is not None and now - previous[1] <= self.memory_seconds:
                following = max(following, previous[0])
            self._next[key] = (following, now)
            while len(self._next) > self.max_accounts:
                self._next.popitem(last=False)


# -- eth_sendTransaction --------------------------------------------------------------

SignTransaction = Callable[[str, dict[str, Any]], dict[str, str]]


class TransactionSender:
    """eth_sendTransaction: fill, sign in the enclave, send raw, answer the hash.

    What the client left out is filled as geth's own eth_sendTransaction and the JS
    clients do it:

    - ``chainId``: the request's, else the relay's default, else the node's; it must
      be the node's chain (a transaction signed for another chain is never sent);
    - fees: ``gasPrice`` given (or ``type`` 0/1) keeps a legacy/EIP-2930 transaction
      and fills ``gasPrice`` from ``eth_gasPrice``; otherwise EIP-1559 when the node
      reports a base fee (``eth_feeHistory``): ``maxPriorityFeePerGas`` from
      ``eth_maxPriorityFeePerGas`` (else ``eth_gasPrice`` minus the base fee) and
      ``maxFeePerGas`` = 2 x next base fee + priority fee; a node without base fee
      gets a legacy transaction;
    - ``gas``: ``eth_estimateGas`` of the call (from, to, value, data, access and
      authorization lists);
    - ``nonce``: under the account's lock, the node's pending transaction count, or
      the relay's own count of what it just sent (:class:`NonceTracker`); nonces of
      2^64-1 and above are refused (EIP-2681).

    Blob transactions need a sidecar that eth_sendTransaction cannot carry: they are
    refused here (sign with eth_signTransaction, send with the blobs yourself).
    """

    def __init__(
        self,
        client: UpstreamClient,
        sign: SignTransaction,
        *,
        default_chain_id: int | None,
        nonces: NonceTracker | None = None,
    ) -> None:
        self.client = client
        self.sign = sign
        self.default_chain_id = default_chain_id
        self.nonces = nonces or NonceTracker()

    def send(self, account_id: str, sender: str, transaction: Mapping[str, Any]) -> str:
        tx = {k: v for k, v in transaction.items() if v is not None}
        if "blobVersionedHashes" in tx or "maxFeePerBlobGas" in tx or _type(tx) == 3:
            raise _invalid(
                "blob transactions are not sent with eth_sendTransaction (no sidecar): sign "
                "with eth_signTransaction and send the raw transaction with its blobs"
            )
        tx["chainId"] = hex(self._chain_id(tx))
        self._fill_fees(tx)
        if "gas" not in tx and "gasLimit" not in tx:
            tx["gas"] = hex(self._estimate_gas(tx))
        with self.nonces.hold(sender):
            if "nonce" in tx:
                nonce = _quantity("nonce", tx["nonce"])
            else:
                pending = quantity_result(
                    "eth_getTransactionCount",
                    self._fill_call("eth_getTransactionCount", [sender, "pending"]),
                )
                nonce = self.nonces.next_nonce(sender, pending)
                tx["nonce"] = hex(nonce)
            if nonce > MAX_NONCE:
                raise _invalid(
                    f"nonce {nonce} is not allowed: EIP-2681 makes a nonce of 2^64-1 or "
                    "above invalid"
                )
            signed = self.sign(account_id, tx)
            tx_hash = self._send_raw(signed["raw_transaction"], signed["hash"])
            self.nonces.sent(sender, nonce)
        return tx_hash

    # -- filling ------------------------------------------------------------------

    def _chain_id(self, tx: Mapping[str, Any]) -> int:
        node = self._fill(self.client.chain_id, "eth_chainId")
        if "chainId" in tx:
            chain = _quantity("chainId", tx["chainId"])
        else:
            chain = self.default_chain_id if self.default_chain_id is not None else node
        if chain != node:
            raise _invalid(
                f"chain id {chain} is not the upstream node's chain id {node}: the relay "
                "sends a transaction only to the chain it is signed for"
            )
        return chain

    def _fill_fees(self, tx: dict[str, Any]) -> None:
        tx_type = _type(tx)
        if "gasPrice" in tx or tx_type in (0, 1):
            if "gasPrice" not in tx:
                tx["gasPrice"] = hex(self._quantity_call("eth_gasPrice", []))
            return
        has_max, has_tip = "maxFeePerGas" in tx, "maxPriorityFeePerGas" in tx
        if has_max and has_tip:
            return
        base_fee = self._next_base_fee()
        if base_fee is None:
            if tx_type is not None or has_max or has_tip:
                raise _invalid("the upstream node reports no base fee (no EIP-1559): send gasPrice")
            tx["gasPrice"] = hex(self._quantity_call("eth_gasPrice", []))
            return
        tip = _quantity("maxPriorityFeePerGas", tx["maxPriorityFeePerGas"]) if has_tip else None
        if tip is None:
            tip = self._priority_fee(base_fee)
            if has_max:
                tip = min(tip, _quantity("maxFeePerGas", tx["maxFeePerGas"]))
            tx["maxPriorityFeePerGas"] = hex(tip)
        if not has_max:
            tx["maxFeePerGas"] = hex(2 * base_fee + tip)

    def _next_base_fee(self) -> int | None:
        """The next block's base fee (eth_feeHistory's last entry); None before London."""
        try:
            history = self.client.call("eth_feeHistory", ["0x1", "latest", []])
        except NodeError:
            return None
        fees = history.get("baseFeePerGas") if isinstance(history, dict) else None
        if not isinstance(fees, list) or not fees:
            return None
        base_fee = quantity_result("eth_feeHistory", fees[-1])
        return base_fee or None

    def _priority_fee(self, base_fee: int) -> int:
        try:
            return quantity_result(
                "eth_maxPriorityFeePerGas", self.client.call("eth_maxPriorityFeePerGas", [])
            )
        except NodeError:
            return max(self._quantity_call("eth_gasPrice", []) - base_fee, 0)

    def _estimate_gas(self, tx: Mapping[str, Any]) -> int:
        keys = ("from", "to", "value", "data", "input", "accessList", "authorizationList")
        call = {k: tx[k] for k in keys if k in tx}
        for fee in ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas"):
            if fee in tx:
                call[fee] = tx[fee]
        return self._quantity_call("eth_estimateGas", [call])

    def _quantity_call(self, method: str, params: list[Any]) -> int:
        return quantity_result(method, self._fill_call(method, params))

    def _fill_call(self, method: str, params: list[Any]) -> Any:
        return self._fill(lambda: self.client.call(method, params), method)

    @staticmethod
    def _fill(call: Callable[[], Any], method: str) -> Any:
        try:
            return call()
        except NodeError as exc:
            raise UpstreamError(
                400,
                RelayCode.UPSTREAM_ERROR,
                f"upstream node refused {method}: {exc.message}",
                exc.error,
            ) from None

    # -- sending ------------------------------------------------------------------

    def _send_raw(self, raw: str, tx_hash: str) -> str:
        try:
            answer = self.client.call("eth_sendRawTransaction", [raw])
        except NodeError as exc:
            if _ALREADY_KNOWN.search(exc.message):
                return tx_hash  # the node already holds this very transaction
            raise UpstreamError(
                400,
                RelayCode.UPSTREAM_REJECTED,
                f"upstream node refused the transaction {tx_hash}: {exc.message}",
                exc.error,
            ) from None
        except UpstreamError as exc:
            if not exc.reached:
                raise  # never left the relay: not sent
            raise UpstreamError(
                exc.status,
                exc.code,
                f"{exc.message}; the transaction {tx_hash} may have reached the node: look it "
                "up before sending again",
            ) from None
        if not isinstance(answer, str) or not _HASH_RE.match(answer):
            raise bad_response(
                f"upstream node answered eth_sendRawTransaction with no hash; the transaction "
                f"{tx_hash} may have been sent: look it up before sending again"
            )
        if answer.lower() != tx_hash.lower():
            raise bad_response(
                f"upstream node answered hash {answer} for the transaction {tx_hash}"
            )
        return tx_hash


def _invalid(message: str) -> RelayError:
    return RelayError(400, RelayCode.INVALID_REQUEST, message)


def _quantity(name: str, value: Any) -> int:
    """A field the sender reads: an int or canonical 0x-hex quantity."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _QUANTITY_RE.match(value):
        return int(value, 16)
    raise _invalid(f"transaction.{name} must be an integer or a 0x-hex quantity")


def _type(tx: Mapping[str, Any]) -> int | None:
    return _quantity("type", tx["type"]) if "type" in tx else None
