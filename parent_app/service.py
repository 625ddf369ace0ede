"""What the relay does, independent of HTTP: create, read, list accounts and sign.

The enclave validates every transaction field itself (one place for that logic);
the service checks what the enclave answers before storing or returning it, since
storage must only ever hold records the enclave actually produced for that id.

Every op that reaches the enclave for a caller (account creation and signing) carries
``auth``: who asks, as ``parent_app.auth.Caller.enclave_auth`` made it; the enclave
authenticates it and applies the signing policy. An account's metadata (labels,
account-bound stamp keys, creator) comes back from ``generate_account``, is stored as
given and goes back with every op on the account: the enclave binds it into the sealed
key, so a record whose metadata was changed does not open.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave_app.errors import EnclaveError, ErrorCode
from parent_app.credentials import CredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.enclave_stats import EnclaveStatsSource
from parent_app.errors import (
    AccountExists,
    AccountNotFound,
    EnclaveBadResponse,
    RelayCode,
    RelayError,
    from_enclave,
    invalid_request,
)
from parent_app.metrics import RelayMetrics
from parent_app.readiness import ReadinessMonitor, ReadinessReport
from parent_app.storage import (
    MAX_CIPHERTEXT_BYTES,
    METADATA_FIELDS,
    AccountPage,
    AccountRecord,
    Storage,
    checksum_address,
    format_time,
    is_uuid,
    metadata_text,
)

_HEX_RE = re.compile(r"\A0x(?:[0-9a-fA-F]{2})+\Z")
_HASH_RE = re.compile(r"\A0x[0-9a-fA-F]{64}\Z")
_SIGNATURE_RE = re.compile(r"\A0x[0-9a-fA-F]{130}\Z")
_QUANTITY_RE = re.compile(r"\A0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,63})\Z")
_AUTHORIZATION_FIELDS = frozenset({"chainId", "address", "nonce", "yParity", "r", "s"})
#: eth_accounts lists at most this many addresses (the REST list pages through all).
MAX_LISTED_ADDRESSES = 10_000
#: An attestation document is a few KiB; anything larger is not one.
MAX_ATTESTATION_BYTES = 64 * 1024
_B64_RE = re.compile(r"\A[A-Za-z0-9+/]+={0,2}\Z")


#: A sign_batch frame carries at most this many items and this many accounts.
MAX_BATCH_ITEMS = 100
#: What ``POST /v1/accounts`` may ask to seal with a new account (the enclave checks them).
CREATE_METADATA = ("labels", "stamp_keys")
#: Who asks: the ``auth`` param of an enclave op (``parent_app.auth.Caller.enclave_auth``).
Auth = Mapping[str, Any]
#: Ops after which the enclave holds new audit receipts (allowed or refused decisions).
DECISION_OPS = frozenset(
    {
        "generate_account",
        "sign_transaction",
        "sign_message",
        "sign_typed_data",
        "sign_authorization",
        "sign_batch",
    }
)
#: The nonce of a signed audit head: 16 to 64 bytes (the enclave's bounds).
AUDIT_NONCE_BYTES = (16, 64)
#: Signing ops a batch may mix, and the name of each one's payload field.
BATCH_PAYLOADS: Mapping[str, str] = {
    "sign_transaction": "transaction",
    "sign_message": "message",
    "sign_typed_data": "typed_data",
    "sign_authorization": "authorization",
}


@dataclass(frozen=True)
class BatchItem:
    """One signing request of a batch: ``op`` (a key of ``BATCH_PAYLOADS``), the
    account, and the op's payload (transaction, message, typed data, authorization)."""

    op: str
    account_id: str
    payload: Any


@dataclass(frozen=True)
class BatchOutcome:
    """What one item of a batch came to: ``result`` (the single op's answer) or
    ``error``; exactly one of the two is set."""

    result: dict[str, Any] | None = None
    error: RelayError | None = None


class WalletService:
    def __init__(
        self,
        storage: Storage,
        enclave: EnclaveClient,
        credentials: CredentialSource,
        key_id: str,
        metrics: RelayMetrics | None = None,
        on_decision: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self.enclave = enclave
        self.credentials = credentials
        self.key_id = key_id
        self.metrics = metrics or RelayMetrics()
        #: Called after every op that made a decision (the audit log writer's wake-up).
        self.on_decision = on_decision
        self.enclave_stats = EnclaveStatsSource(lambda: self._call("stats", {}))
        self.readiness_monitor = ReadinessMonitor(
            storage, credentials, self._call, key_id, self.enclave_stats
        )
        self.metrics.watch(self.readiness_monitor, self.enclave_stats)

    # -- enclave -----------------------------------------------------------------

    def _call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        self.metrics.enclave_calls.inc(op)
        try:
            return self.enclave.call(op, params)
        except EnclaveError as exc:
            self.metrics.enclave_errors.inc(op, str(exc.code))
            raise from_enclave(exc) from None
        except RelayError as exc:
            self.metrics.enclave_errors.inc(op, exc.code)
            raise
        finally:
            if op in DECISION_OPS and self.on_decision is not None:
                self.on_decision()

    # -- audit -------------------------------------------------------------------

    def audit_receipts(self, params: dict[str, Any]) -> dict[str, Any]:
        """The enclave's sealed receipts after ``params["after"]`` (the log writer's pull)."""
        return self._call("audit_receipts", params)

    def audit_head(self, nonce: bytes) -> dict[str, Any]:
        """The enclave's sealed receipt head, signed together with ``nonce``."""
        low, high = AUDIT_NONCE_BYTES
        if not low <= len(nonce) <= high:
            raise invalid_request(f"nonce must be {low} to {high} bytes")
        head = self._call("audit_head", {"nonce": nonce.hex()})
        if set(head) != {"seg", "n", "hash", "nonce", "sig"} or head["nonce"] != nonce.hex():
            raise EnclaveBadResponse("enclave answered audit_head without a head for this nonce")
        return head

    # -- accounts ----------------------------------------------------------------

    def create_account(
        self,
        account_id: str | None,
        auth: Auth,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """A new account; ``metadata`` (``labels``, ``stamp_keys``) goes to the enclave
        exactly as the caller sent it (a stamp covers it)."""
        account_id = str(uuid.uuid4()) if account_id is None else account_id
        if not is_uuid(account_id):
            raise ValueError("account_id must be a canonical lowercase UUID")
        asked = dict(metadata or {})
        if not set(asked) <= set(CREATE_METADATA):
            raise ValueError(f"metadata holds only {CREATE_METADATA}")
        if self.storage.get(account_id) is not None:  # spare the enclave a KMS call
            raise AccountExists(f"account {account_id} already exists")
        credentials = self.credentials.get()
        result = self._call(
            "generate_account",
            {
                "account_id": account_id,
                "key_id": self.key_id,
                "credentials": credentials.to_params(),
                "auth": dict(auth),
                **asked,
            },
        )
        record = _record_from_enclave(result, account_id, self.key_id)
        self.storage.insert(record)  # durable before we answer; AccountExists on a race
        return {"account_id": record.account_id, "address": record.address}

    def get_account(self, account_id: str) -> dict[str, Any]:
        return public_view(self._load(account_id))

    def list_accounts(self, limit: int, cursor: str | None) -> dict[str, Any]:
        page: AccountPage = self.storage.list(limit, cursor)
        return {
            "accounts": [public_view(record) for record in page.records],
            "next_cursor": page.next_cursor,
        }

    def sign_transaction(
        self, account_id: str, transaction: dict[str, Any], auth: Auth
    ) -> dict[str, str]:
        result = self._sign("sign_transaction", account_id, "transaction", transaction, auth)
        return _transaction_result(result)

    def sign_message(self, account_id: str, message: str, auth: Auth) -> dict[str, str]:
        """EIP-191 (personal_sign): ``message`` is 0x-hex bytes or UTF-8 text."""
        result = self._sign("sign_message", account_id, "message", message, auth)
        return _signature_result(result)

    def sign_typed_data(
        self, account_id: str, typed_data: dict[str, Any], auth: Auth
    ) -> dict[str, str]:
        """EIP-712 v4 typed data."""
        result = self._sign("sign_typed_data", account_id, "typed_data", typed_data, auth)
        return _signature_result(result)

    def sign_authorization(
        self, account_id: str, authorization: dict[str, Any], auth: Auth
    ) -> dict[str, dict[str, str]]:
        """An EIP-7702 authorization tuple {chainId, address, nonce}."""
        result = self._sign("sign_authorization", account_id, "authorization", authorization, auth)
        return _authorization_result(result)

    def sign_one(self, item: BatchItem, auth: Auth) -> dict[str, Any]:
        """One signing request by its op name, answered as the single op answers."""
        name = BATCH_PAYLOADS.get(item.op)
        if name is None:
            raise ValueError(f"{item.op!r} is not a signing op")
        result = self._sign(item.op, item.account_id, name, item.payload, auth)
        return _RESULT_CHECKS[item.op](result)

    def sign_batch(self, items: Sequence[BatchItem], auth: Auth) -> list[BatchOutcome]:
        """Sign up to ``MAX_BATCH_ITEMS`` requests (ops and accounts mixed) with one
        ``sign_batch`` frame; one outcome per item, in order.

        Each item succeeds or fails on its own: an unknown account, or anything the
        enclave refuses about one item, fails that item only. What fails the frame as
        a whole (the enclave unreachable, busy or answering off-protocol) raises.
        Items the relay already knows to fail are not sent.
        """
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise invalid_request(f"a batch holds 1 to {MAX_BATCH_ITEMS} items")
        outcomes: list[BatchOutcome | None] = [None] * len(items)
        records: dict[str, AccountRecord | None] = {}
        indexes: dict[str, int] = {}
        frame_items: list[dict[str, Any]] = []
        sent: list[int] = []  # positions in ``items`` of the frame's items, in order
        for position, item in enumerate(items):
            name = BATCH_PAYLOADS.get(item.op)
            if name is None:
                raise ValueError(f"{item.op!r} is not a batch signing op")
            if item.account_id not in records:
                records[item.account_id] = self.storage.get(item.account_id)
            record = records[item.account_id]
            if record is None:
                outcomes[position] = BatchOutcome(error=AccountNotFound(item.account_id))
                continue
            if item.account_id not in indexes:
                indexes[item.account_id] = len(indexes)
            frame_items.append(
                {"op": item.op, "account": indexes[item.account_id], name: item.payload}
            )
            sent.append(position)
        if frame_items:
            accounts = [record for record in records.values() if record is not None]
            answers = self._sign_frame(accounts, frame_items, auth)
            for position, answer in zip(sent, answers, strict=True):
                outcomes[position] = _batch_outcome(items[position].op, answer)
        done = [outcome for outcome in outcomes if outcome is not None]
        for item, outcome in zip(items, done, strict=True):
            code = "ok" if outcome.error is None else outcome.error.code
            self.metrics.batch_items.inc(item.op, code)
        return done

    def _sign_frame(
        self, accounts: list[AccountRecord], frame_items: list[dict[str, Any]], auth: Auth
    ) -> list[Any]:
        credentials = self.credentials.get()
        result = self._call(
            "sign_batch",
            {
                "credentials": credentials.to_params(),
                "accounts": [account_params(record) for record in accounts],
                "items": frame_items,
                "auth": dict(auth),
            },
        )
        answers = result.get("results")
        if not isinstance(answers, list) or len(answers) != len(frame_items):
            raise EnclaveBadResponse("enclave answered sign_batch without one result per item")
        return answers

    def attest(self, nonce: bytes | None, user_data: bytes | None) -> dict[str, str]:
        """An attestation document from the enclave's NSM, binding ``nonce``/``user_data``."""
        params: dict[str, Any] = {}
        if nonce is not None:
            params["nonce"] = base64.b64encode(nonce).decode()
        if user_data is not None:
            params["user_data"] = base64.b64encode(user_data).decode()
        result = self._call("attest", params)
        document = result.get("attestation_document")
        if not isinstance(document, str) or not 0 < len(document) <= MAX_ATTESTATION_BYTES * 2:
            raise EnclaveBadResponse("enclave returned no attestation document")
        try:
            base64.b64decode(document, validate=True)
        except binascii.Error:
            raise EnclaveBadResponse("enclave returned no valid base64 attestation") from None
        return {"attestation_document": document}

    def account_id_for_address(self, address: str) -> str:
        """The id of the stored account with this address (any case)."""
        record = self.storage.get_by_address(address)
        if record is None:
            raise RelayError(
                404,
                RelayCode.ACCOUNT_NOT_FOUND,
                f"unknown account {address}: no stored account has this address",
            )
        return record.account_id

    def addresses(self, limit: int = MAX_LISTED_ADDRESSES) -> list[str]:
        """Checksummed addresses of the stored accounts, oldest first (at most ``limit``)."""
        found: list[str] = []
        cursor: str | None = None
        while len(found) < limit:
            page = self.storage.list(min(500, limit - len(found)), cursor)
            found.extend(record.address for record in page.records)
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    def _sign(
        self, op: str, account_id: str, name: str, payload: Any, auth: Auth
    ) -> dict[str, Any]:
        record = self._load(account_id)
        credentials = self.credentials.get()
        return self._call(
            op,
            {
                "account": account_params(record),
                "credentials": credentials.to_params(),
                "auth": dict(auth),
                name: payload,
            },
        )

    def _load(self, account_id: str) -> AccountRecord:
        record = self.storage.get(account_id)
        if record is None:
            raise AccountNotFound(account_id)
        return record

    # -- health ------------------------------------------------------------------

    def readiness(self) -> ReadinessReport:
        """Storage, enclave, credentials and the attested KMS probe (parent_app.readiness)."""
        return self.readiness_monitor.evaluate()


def _transaction_result(result: dict[str, Any]) -> dict[str, str]:
    raw, tx_hash = result.get("raw_transaction"), result.get("hash")
    if not (isinstance(raw, str) and _HEX_RE.match(raw)):
        raise EnclaveBadResponse("enclave returned no valid raw_transaction")
    if not (isinstance(tx_hash, str) and _HASH_RE.match(tx_hash)):
        raise EnclaveBadResponse("enclave returned no valid transaction hash")
    return {"raw_transaction": raw, "hash": tx_hash}


def _authorization_result(result: dict[str, Any]) -> dict[str, dict[str, str]]:
    signed = result.get("authorization")
    if not isinstance(signed, dict) or set(signed) != _AUTHORIZATION_FIELDS:
        raise EnclaveBadResponse("enclave returned no valid authorization")
    for name in ("chainId", "nonce", "yParity", "r", "s"):
        value = signed[name]
        if not (isinstance(value, str) and _QUANTITY_RE.match(value)):
            raise EnclaveBadResponse(f"enclave returned an invalid authorization {name}")
    try:
        address = checksum_address(str(signed["address"]))
    except ValueError:
        raise EnclaveBadResponse("enclave returned an invalid authorization address") from None
    return {"authorization": {**{k: str(v) for k, v in signed.items()}, "address": address}}


def _batch_outcome(op: str, answer: Any) -> BatchOutcome:
    """One item of a sign_batch answer, checked exactly as the single op's answer is."""
    if not isinstance(answer, dict):
        return BatchOutcome(error=EnclaveBadResponse("enclave returned a malformed batch item"))
    if answer.get("ok") is True and isinstance(answer.get("result"), dict):
        try:
            return BatchOutcome(result=_RESULT_CHECKS[op](answer["result"]))
        except EnclaveBadResponse as exc:
            return BatchOutcome(error=exc)
    error = answer.get("error")
    if answer.get("ok") is False and isinstance(error, dict):
        raw_code, message = error.get("code"), error.get("message")
        try:
            code = ErrorCode(raw_code) if isinstance(raw_code, str) else ErrorCode.INTERNAL
        except ValueError:
            code = ErrorCode.INTERNAL
        text = message if isinstance(message, str) else "enclave error"
        return BatchOutcome(error=from_enclave(EnclaveError(code, text[:1024])))
    return BatchOutcome(error=EnclaveBadResponse("enclave returned a malformed batch item"))


def _signature_result(result: dict[str, Any]) -> dict[str, str]:
    signature, digest = result.get("signature"), result.get("digest")
    if not (isinstance(signature, str) and _SIGNATURE_RE.match(signature)):
        raise EnclaveBadResponse("enclave returned no valid 65-byte signature")
    if not (isinstance(digest, str) and _HASH_RE.match(digest)):
        raise EnclaveBadResponse("enclave returned no valid digest")
    return {"signature": signature, "digest": digest}


_RESULT_CHECKS: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sign_transaction": _transaction_result,
    "sign_message": _signature_result,
    "sign_typed_data": _signature_result,
    "sign_authorization": _authorization_result,
}


def public_view(record: AccountRecord) -> dict[str, Any]:
    """What the API shows of a record: never the ciphertexts. The metadata the enclave
    sealed with the account is shown as stored (labels, account-bound stamp keys with
    their public keys and scopes, and the creating principal), when there is any."""
    return {
        "account_id": record.account_id,
        "address": record.address,
        "key_id": record.key_id,
        "created_at": format_time(record.created_at),
        **record.metadata_fields,
    }


def account_params(record: AccountRecord) -> dict[str, Any]:
    """The ``account`` object of the enclave protocol, metadata included."""
    return {
        "account_id": record.account_id,
        "address": record.address,
        "key_id": record.key_id,
        "encrypted_private_key": base64.b64encode(record.encrypted_private_key).decode(),
        "encrypted_data_key": base64.b64encode(record.encrypted_data_key).decode(),
        **record.metadata_fields,
    }


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _B64_RE.match(value) or len(value) % 4:
        raise EnclaveBadResponse(f"enclave returned no valid base64 {name}")
    if len(value) > (MAX_CIPHERTEXT_BYTES * 4) // 3 + 4:
        raise EnclaveBadResponse(f"enclave returned an oversized {name}")
    try:
        blob = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise EnclaveBadResponse(f"enclave returned no valid base64 {name}") from None
    if not 0 < len(blob) <= MAX_CIPHERTEXT_BYTES:
        raise EnclaveBadResponse(f"enclave returned an empty or oversized {name}")
    return blob


def _record_from_enclave(result: dict[str, Any], account_id: str, key_id: str) -> AccountRecord:
    if result.get("account_id") != account_id:
        raise EnclaveBadResponse("enclave answered generate_account for another account id")
    if result.get("key_id", key_id) != key_id:
        raise EnclaveBadResponse("enclave answered generate_account under another key id")
    address = result.get("address")
    if not isinstance(address, str):
        raise EnclaveBadResponse("enclave returned no address")
    try:
        checksummed = checksum_address(address)
    except ValueError as exc:
        raise EnclaveBadResponse(f"enclave returned an invalid address: {exc}") from None
    try:
        metadata = metadata_text({k: v for k, v in result.items() if k in METADATA_FIELDS})
    except ValueError as exc:
        raise EnclaveBadResponse(f"enclave returned invalid account metadata: {exc}") from None
    return AccountRecord(
        account_id=account_id,
        address=checksummed,
        key_id=key_id,
        encrypted_private_key=_b64(result.get("encrypted_private_key"), "encrypted_private_key"),
        encrypted_data_key=_b64(result.get("encrypted_data_key"), "encrypted_data_key"),
        created_at=datetime.now(UTC),
        metadata=metadata,
    )
