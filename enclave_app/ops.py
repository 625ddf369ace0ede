"""The enclave's operations. Each handler validates its own params and returns a
JSON-ready result; errors are raised as ``EnclaveError`` with a stable code.

Signing ops share one shape: ``account`` (the stored record), ``credentials``, ``auth``
(who asks: see ``enclave_app.auth.authenticate``) and one payload field. Every payload
is validated in full, and judged by the signing policy, before any KMS call
(``enclave_app.gate``). ``sign_batch`` signs up to 100 payloads for up to 100 accounts
in one frame: it authenticates the frame once, judges each item, unlocks each distinct
account once (the cold ones in parallel) and answers per item.

Two ops serve the relay's readiness and metrics: ``kms_probe`` (can this image still
unlock keys? see ``enclave_app.kms_probe``) and ``stats`` (the enclave's counters, see
``enclave_app.stats``).

:meth:`Operations.runs_inline` tells the server which requests cannot wait on KMS or
the NSM, so it may run them without handing them to a worker (``enclave_app.server``):
``health``, ``stats``, the audit ops, and signing ops whose every key is warm with at
least ``INLINE_KEY_MARGIN_SECONDS`` of its cache lifetime left. It only reads: it
parses the records (through the record cache) and peeks at the key cache, before the
gate consumes a stamp or reserves a receipt. The answer is a prediction, never a
permission: a key evicted between the check and its use (the cache was full and a cold
unlock made room, or the thread stalled past the margin) is unlocked through KMS where
the op runs, which costs that thread a KMS round trip and changes no answer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from enclave_app import __version__, validation
from enclave_app.account_metadata import parse_metadata
from enclave_app.accounts import AccountVault, SealedAccount
from enclave_app.auth.intents import OpItem
from enclave_app.auth.keys import StampKeyEntry
from enclave_app.auth.receipts import audit_head_op, audit_receipts_op
from enclave_app.config import EnclaveConfig
from enclave_app.errors import EnclaveError, ErrorCode, invalid
from enclave_app.gate import Gate, Pass
from enclave_app.kms import AwsCredentials
from enclave_app.kms_probe import KmsProber
from enclave_app.nsm import Nsm
from enclave_app.policy import Op, Permit, PolicyDeniedError, typed_data_facts
from enclave_app.policy.conditions import Payload
from enclave_app.signing import messages, transactions, typed_data
from enclave_app.signing.keys import SigningKey
from enclave_app.signing.messages import SignedMessage
from enclave_app.stats import EnclaveStats
from enclave_app.wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)

MAX_NONCE_BYTES = 512
MAX_USER_DATA_BYTES = 512
#: Bounds of one sign_batch frame.
MAX_BATCH_ACCOUNTS = 100
MAX_BATCH_ITEMS = 100
#: Distinct credential sets whose parsed form is remembered (the relay uses one role).
_CREDENTIAL_CACHE_ENTRIES = 8
DEFAULT_RECORD_CACHE_ENTRIES = 1024
#: A key runs inline only with this much of its cache lifetime left (see runs_inline).
INLINE_KEY_MARGIN_SECONDS = 1.0
#: Ops that only read enclave memory (and sign with the receipt key): never KMS or NSM.
_MEMORY_OPS = frozenset({"health", "stats", "audit_receipts", "audit_head"})

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]
#: A validated payload, ready to be signed by the account's key.
Signer = Callable[[SigningKey], dict[str, Any]]


@dataclass(frozen=True)
class Prepared:
    """A validated payload: how to sign it, what the policy judges, and (for digest
    signatures) the digest the receipt names."""

    sign: Signer
    facts: Payload
    digest: bytes | None = None

    def reference(self, result: Mapping[str, Any]) -> str:
        """What the receipt of the signature names: the tx hash, or the signed digest."""
        if "hash" in result:
            return str(result["hash"])
        return "0x" + (self.digest or b"").hex()


@dataclass(frozen=True)
class _SigningOp:
    payload: str
    """The name of the params field that carries what is signed."""
    prepare: Callable[[Operations, object, SealedAccount], Prepared]
    """Validate the payload for this account (before any KMS call)."""


class Operations:
    def __init__(
        self,
        nsm: Nsm,
        vault: AccountVault,
        *,
        gate: Gate,
        allow_pre_eip155: bool,
        record_cache_entries: int = DEFAULT_RECORD_CACHE_ENTRIES,
        capacity: Mapping[str, int] | None = None,
        stats: EnclaveStats | None = None,
        prober: KmsProber | None = None,
    ) -> None:
        self._nsm = nsm
        self._stats = stats or EnclaveStats()
        self._prober = prober or KmsProber(vault.kms, EnclaveConfig.kms_probe_interval_seconds)
        # The server's bounds, reported by health so the relay can size its pool.
        self._capacity = dict(capacity or {})
        self._vault = vault
        self._gate = gate
        self._allow_pre_eip155 = allow_pre_eip155
        # Parsing a record is a pure function of its five strings: remember it, keyed
        # by exactly those strings (every byte of the record is in the key).
        self._parse_record = functools.lru_cache(maxsize=record_cache_entries)(
            validation.sealed_account_from_fields
        )
        self._parse_credentials = functools.lru_cache(maxsize=_CREDENTIAL_CACHE_ENTRIES)(
            validation.credentials_from_fields
        )
        self.handlers: dict[str, Handler] = {
            "health": self.health,
            "attest": self.attest,
            "generate_account": self.generate_account,
            "sign_batch": self.sign_batch,
            "audit_receipts": functools.partial(audit_receipts_op, gate.receipts),
            "audit_head": functools.partial(audit_head_op, gate.receipts),
            "kms_probe": self.kms_probe,
            "stats": self.stats,
        }
        for op in _SIGNING_OPS:
            self.handlers[op] = functools.partial(self._sign_one, op)

    def dispatch(self, op: str, params: Mapping[str, Any]) -> dict[str, Any]:
        handler = self.handlers.get(op)
        if handler is None:
            raise EnclaveError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
        return handler(params)

    def runs_inline(self, op: str, params: Mapping[str, Any]) -> bool:
        """Whether ``op`` can complete without waiting on KMS or the NSM (module doc).

        Side-effect free and never raises: anything it cannot judge (an unknown op,
        malformed params, a cold or unparseable record) is False, for a worker.
        """
        if op in _MEMORY_OPS:
            return True
        try:
            if op in _SIGNING_OPS:
                records: Sequence[object] = [params["account"]]
            elif op == "sign_batch":
                records = _bounded_list(params, "accounts", MAX_BATCH_ACCOUNTS)
            else:
                return False
            return all(
                self._vault.is_warm(self._account(record), INLINE_KEY_MARGIN_SECONDS)
                for record in records
            )
        except Exception:
            return False

    def health(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, set(), set())
        return {
            "status": "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "capacity": self._capacity,
            "policy_sha256": self._gate.engine.policy.sha256,
        }

    def kms_probe(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Whether each pinned key still releases data keys to this image (cached)."""
        validation.check_params(params, {"credentials"}, set())
        return self._prober.probe(self._credentials(params["credentials"]))

    def stats(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The enclave's counters and gauges, for the relay's /metrics."""
        validation.check_params(params, set(), set())
        stats = self._stats
        lookups = stats.key_cache_lookups
        return {
            "boot_id": stats.boot_id,
            "start_time_ms": round(stats.start_time * 1000),
            "uptime_ms": round(stats.uptime() * 1000),
            "kms": stats.kms_snapshot(),
            "key_cache": {
                "hits": lookups.get("hit"),
                "misses": lookups.get("miss"),
                **self._vault.cache_level(),
            },
            "recipient_keys": self._vault.kms.recipient_key_level(),
            "server": stats.server_snapshot(),
            "kms_probe": self._prober.report(),
            "policy": self._gate.describe(),
        }

    def attest(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, set(), {"nonce", "user_data"})
        nonce = _optional_b64(params, "nonce", MAX_NONCE_BYTES)
        user_data = _optional_b64(params, "user_data", MAX_USER_DATA_BYTES)
        document = self._nsm.attest(user_data=user_data, nonce=nonce, public_key=None)
        return {"attestation_document": validation.b64(document)}

    def generate_account(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A new account; ``labels`` and ``stamp_keys`` are sealed with it, and so is the
        principal that created it (``created_by``)."""
        validation.check_params(
            params, {"account_id", "key_id", "credentials", "auth"}, {"labels", "stamp_keys"}
        )
        account_id = validation.account_id(params["account_id"])
        key_id = validation.key_id(params["key_id"])
        credentials = self._credentials(params["credentials"])
        asked = {name: params[name] for name in ("labels", "stamp_keys") if name in params}
        item = OpItem("generate_account", account_id, "", asked)
        with self._gate.open("generate_account", params["auth"], [item]) as frame:
            try:
                metadata = parse_metadata(asked, "params")
            except EnclaveError as exc:
                frame.failed(0, exc)
                raise
            decision = frame.authorize_create([key.scopes for key in metadata.stamp_keys])
            metadata = replace(metadata, created_by=frame.principal_name)
            try:
                account = self._vault.generate(account_id, key_id, credentials, metadata)
            except EnclaveError as exc:
                frame.failed(0, exc)
                raise
            frame.signed(0, decision.rule, account.address)
        return {
            "account_id": account.account_id,
            "address": account.address,
            "key_id": account.key_id,
            "encrypted_private_key": validation.b64(account.encrypted_private_key),
            "encrypted_data_key": validation.b64(account.encrypted_data_key),
            **account.metadata.to_record(),
        }

    def sign_batch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sign many payloads in one frame; see docs/architecture.md for the shape.

        Envelope errors (shape, bounds, an index outside ``accounts``, an unknown item
        op) fail the frame with ``invalid_params``; anything about one item (its
        payload, its account's unlock, its signature) fails that item only.
        """
        validation.check_params(params, {"credentials", "accounts", "items", "auth"}, set())
        credentials = self._credentials(params["credentials"])
        records = _bounded_list(params, "accounts", MAX_BATCH_ACCOUNTS)
        accounts = [self._batch_account(i, record) for i, record in enumerate(records)]
        if len({account.account_id for account in accounts}) != len(accounts):
            raise invalid("accounts must not repeat an account_id")
        items = _bounded_list(params, "items", MAX_BATCH_ITEMS)
        envelopes = [_batch_envelope(i, item, len(accounts)) for i, item in enumerate(items)]
        op_items = [
            OpItem(
                op,
                accounts[index].account_id,
                accounts[index].address,
                item.get(_SIGNING_OPS[op].payload),
            )
            for item, (op, index) in zip(items, envelopes, strict=True)
        ]
        # A key bound to one account stamps for that account only.
        keys = _account_keys(accounts[0]) if len(accounts) == 1 else None
        with self._gate.open("sign_batch", params["auth"], op_items, keys) as frame:
            prepared = [
                self._prepare_item(item, op, accounts[index])
                for item, (op, index) in zip(items, envelopes, strict=True)
            ]
            permits = [
                _authorize(frame, i, op, accounts[index], ready)
                for i, ((op, index), ready) in enumerate(zip(envelopes, prepared, strict=True))
            ]
            needed = sorted(
                {
                    index
                    for (_, index), permit in zip(envelopes, permits, strict=True)
                    if isinstance(permit, Permit)
                }
            )
            unlocked = dict(
                zip(
                    needed,
                    self._vault.unlock_many([accounts[i] for i in needed], credentials),
                    strict=True,
                )
            )
            results = []
            for i, ((_, index), ready, permit) in enumerate(
                zip(envelopes, prepared, permits, strict=True)
            ):
                outcome: dict[str, Any] | EnclaveError
                if isinstance(permit, EnclaveError):
                    outcome = permit
                elif isinstance(ready, EnclaveError):  # never: such items have no permit
                    outcome = ready
                else:
                    outcome = _sign_item(ready.sign, unlocked[index])
                    _settle(frame, i, permit, ready, outcome)
                results.append(_item_result(outcome))
        return {"results": results}

    # -- signing ops ------------------------------------------------------------------

    def _sign_one(self, op: str, params: Mapping[str, Any]) -> dict[str, Any]:
        signing_op = _SIGNING_OPS[op]
        validation.check_params(
            params, {"account", "credentials", "auth", signing_op.payload}, set()
        )
        account = self._account(params["account"])
        credentials = self._credentials(params["credentials"])
        payload = params[signing_op.payload]
        item = OpItem(op, account.account_id, account.address, payload)
        with self._gate.open(op, params["auth"], [item], _account_keys(account)) as frame:
            try:
                ready = signing_op.prepare(self, payload, account)
            except EnclaveError as exc:
                frame.failed(0, exc)
                raise
            permit = frame.authorize(0, Op(op), account, ready.facts)
            try:
                result = ready.sign(self._vault.unlock(account, credentials))
            except EnclaveError as exc:
                frame.failed(0, exc, permit)
                raise
            except Exception:
                frame.failed(0, _INTERNAL, permit)
                raise
            frame.signed(0, permit.decision.rule, ready.reference(result), permit)
        return result

    def _prepare_transaction(self, value: object, account: SealedAccount) -> Prepared:
        tx = transactions.parse_transaction(
            _payload_object(value, "transaction"), allow_pre_eip155=self._allow_pre_eip155
        )
        transactions.require_sender(tx, account.address)

        def sign(key: SigningKey) -> dict[str, Any]:
            signed = transactions.sign_transaction(key, tx)
            return {"raw_transaction": "0x" + signed.raw.hex(), "hash": "0x" + signed.hash.hex()}

        return Prepared(sign, tx)

    def _prepare_message(self, value: object, account: SealedAccount) -> Prepared:
        """EIP-191 version 0x45 (personal_sign and eth_sign)."""
        message = messages.message_bytes(value)
        return _digest_signer(messages.eip191_digest(message), message)

    def _prepare_typed_data(self, value: object, account: SealedAccount) -> Prepared:
        """EIP-712 (eth_signTypedData_v4)."""
        data = _payload_object(value, "typed_data")
        digest = typed_data.hash_typed_data(data).digest
        return _digest_signer(digest, typed_data_facts(data))

    def _prepare_authorization(self, value: object, account: SealedAccount) -> Prepared:
        """An EIP-7702 authorization tuple {chainId, address, nonce}."""
        authorization = transactions.parse_authorization(
            "authorization", _payload_object(value, "authorization")
        )

        def sign(key: SigningKey) -> dict[str, Any]:
            return {"authorization": transactions.sign_authorization(key, authorization).to_json()}

        return Prepared(sign, authorization, authorization.digest())

    # -- envelope parts ---------------------------------------------------------------

    def _account(self, value: object, name: str = "account") -> SealedAccount:
        fields = validation.record_fields(value, name)
        if all(type(field) is str for field in fields):
            return self._parse_record(*fields)
        return validation.sealed_account_from_fields(*fields)  # refuses, with the reason

    def _credentials(self, value: object) -> AwsCredentials:
        fields = validation.credential_fields(value)
        if all(type(field) is str or field is None for field in fields):
            return self._parse_credentials(*fields)
        return validation.credentials_from_fields(*fields)  # refuses, with the reason

    def _batch_account(self, i: int, value: object) -> SealedAccount:
        try:
            return self._account(value, f"accounts[{i}]")
        except EnclaveError as exc:
            raise invalid(f"accounts[{i}]: {exc.message}") from None

    def _prepare_item(
        self, item: Mapping[str, Any], op: str, account: SealedAccount
    ) -> Prepared | EnclaveError:
        signing_op = _SIGNING_OPS[op]
        try:
            validation.check_params(item, {"op", "account", signing_op.payload}, set())
            return signing_op.prepare(self, item[signing_op.payload], account)
        except EnclaveError as exc:
            return exc


_SIGNING_OPS: dict[str, _SigningOp] = {
    "sign_transaction": _SigningOp("transaction", Operations._prepare_transaction),
    "sign_message": _SigningOp("message", Operations._prepare_message),
    "sign_typed_data": _SigningOp("typed_data", Operations._prepare_typed_data),
    "sign_authorization": _SigningOp("authorization", Operations._prepare_authorization),
}


_INTERNAL = EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave")


def _digest_signer(digest: bytes, facts: Payload) -> Prepared:
    def sign(key: SigningKey) -> dict[str, Any]:
        return _signature(messages.sign_digest_65(key, digest))

    return Prepared(sign, facts, digest)


def _account_keys(account: SealedAccount) -> Mapping[str, StampKeyEntry]:
    return {key.id: key for key in account.metadata.stamp_keys}


def _authorize(
    frame: Pass, index: int, op: str, account: SealedAccount, ready: Prepared | EnclaveError
) -> Permit | EnclaveError:
    """The item's permit, or (recorded) the error that refuses it."""
    if isinstance(ready, EnclaveError):
        frame.failed(index, ready)
        return ready
    try:
        return frame.authorize(index, Op(op), account, ready.facts)
    except PolicyDeniedError as exc:
        return exc


def _settle(
    frame: Pass,
    index: int,
    permit: Permit,
    ready: Prepared,
    outcome: dict[str, Any] | EnclaveError,
) -> None:
    if isinstance(outcome, EnclaveError):
        frame.failed(index, outcome, permit)
    else:
        frame.signed(index, permit.decision.rule, ready.reference(outcome), permit)


def _signature(signed: SignedMessage) -> dict[str, Any]:
    return {"signature": "0x" + signed.signature.hex(), "digest": "0x" + signed.digest.hex()}


def _payload_object(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    return value


def _bounded_list(params: Mapping[str, Any], name: str, maximum: int) -> Sequence[Any]:
    value = params[name]
    if not isinstance(value, list) or not 1 <= len(value) <= maximum:
        raise invalid(f"{name} must be a list of 1 to {maximum} entries")
    return value


def _batch_envelope(i: int, item: object, accounts: int) -> tuple[str, int]:
    """The item's op and account index; anything wrong here fails the whole frame."""
    if not isinstance(item, dict):
        raise invalid(f"items[{i}] must be an object")
    op = item.get("op")
    if not isinstance(op, str) or op not in _SIGNING_OPS:
        raise invalid(f"items[{i}].op must be one of {', '.join(sorted(_SIGNING_OPS))}")
    index = item.get("account")
    if type(index) is not int or not 0 <= index < accounts:
        raise invalid(f"items[{i}].account must be an index into accounts (0 to {accounts - 1})")
    return op, index


def _sign_item(signer: Signer, key: SigningKey | EnclaveError) -> dict[str, Any] | EnclaveError:
    if isinstance(key, EnclaveError):
        return key
    try:
        return signer(key)
    except EnclaveError as exc:
        return exc
    except Exception as exc:  # one item's surprise must not sink the batch
        log.error("batch item failed unexpectedly: %s", type(exc).__name__)
        return EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave")


def _item_result(outcome: dict[str, Any] | EnclaveError) -> dict[str, Any]:
    if isinstance(outcome, EnclaveError):
        return {"ok": False, "error": {"code": str(outcome.code), "message": outcome.message}}
    return {"ok": True, "result": outcome}


def _optional_b64(params: Mapping[str, Any], name: str, max_bytes: int) -> bytes | None:
    value = params.get(name)
    if value is None:
        return None
    return validation.base64_bytes(value, name, max_bytes, allow_empty=True)
