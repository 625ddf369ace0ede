"""eth_sendTransaction through the upstream node, as Web3Signer's eth1 mode does it.

Failures of the node are typed (parent_app.upstream): ``upstream_error`` when it
refuses a call made to fill the transaction in (``eth_estimateGas`` reverting, for
one; ``error.data.upstream`` is its error), ``upstream_rejected`` when it refuses the
signed transaction (never reported as sent), ``upstream_unavailable`` when a send's
answer is lost (the message names the hash to look up before sending again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from parent_app.errors import RelayCode, RelayError
from parent_app.nonces import NonceTracker
from parent_app.upstream import (
    QUANTITY_RE,
    NodeError,
    UpstreamClient,
    UpstreamError,
    bad_response,
    quantity_result,
)

#: EIP-2681: a transaction with nonce 2^64-1 or above is invalid.
MAX_NONCE = 2**64 - 2
#: What nodes answer when the same transaction is already in their pool: it was sent.
_ALREADY_KNOWN = re.compile(r"already known|known transaction|alreadyknown", re.IGNORECASE)
_HASH_RE = re.compile(r"\A0x[0-9a-fA-F]{64}\Z")

#: ``sign(account_id, transaction, auth)``: the enclave's signature for the caller ``auth``.
SignTransaction = Callable[[str, dict[str, Any], Mapping[str, Any]], dict[str, str]]


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

    Fields the client gave are passed on as given (a stamp covers them: the enclave
    accepts only fill-ins of fields the client left out).
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

    def send(
        self,
        account_id: str,
        sender: str,
        transaction: Mapping[str, Any],
        auth: Mapping[str, Any],
    ) -> str:
        tx = {k: v for k, v in transaction.items() if v is not None}
        if "blobVersionedHashes" in tx or "maxFeePerBlobGas" in tx or _type(tx) == 3:
            raise _invalid(
                "blob transactions are not sent with eth_sendTransaction (no sidecar): sign "
                "with eth_signTransaction and send the raw transaction with its blobs"
            )
        chain_id = self._chain_id(tx)
        tx.setdefault("chainId", hex(chain_id))
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
            signed = self.sign(account_id, tx, auth)
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
    if isinstance(value, str) and QUANTITY_RE.match(value):
        return int(value, 16)
    raise _invalid(f"transaction.{name} must be an integer or a 0x-hex quantity")


def _type(tx: Mapping[str, Any]) -> int | None:
    return _quantity("type", tx["type"]) if "type" in tx else None
