"""The enclave's operations. Each handler validates its own params and returns a
JSON-ready result; errors are raised as ``EnclaveError`` with a stable code.

Signing ops share one shape: ``account`` (the stored record), ``credentials`` and one
payload field. Every payload is validated in full before any KMS call. ``sign_batch``
signs up to 100 payloads for up to 100 accounts in one frame: it unlocks each
distinct account once (the cold ones in parallel) and answers per item.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave_app import __version__, validation
from enclave_app.accounts import AccountVault, SealedAccount
from enclave_app.errors import EnclaveError, ErrorCode, invalid
from enclave_app.kms import AwsCredentials
from enclave_app.nsm import Nsm
from enclave_app.signing import messages, transactions, typed_data
from enclave_app.signing.keys import SigningKey
from enclave_app.signing.messages import SignedMessage
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

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]
#: A validated payload, ready to be signed by the account's key.
Signer = Callable[[SigningKey], dict[str, Any]]


@dataclass(frozen=True)
class _SigningOp:
    payload: str
    """The name of the params field that carries what is signed."""
    prepare: Callable[[Operations, object, SealedAccount], Signer]
    """Validate the payload for this account (before any KMS call)."""


class Operations:
    def __init__(
        self,
        nsm: Nsm,
        vault: AccountVault,
        *,
        allow_pre_eip155: bool,
        record_cache_entries: int = DEFAULT_RECORD_CACHE_ENTRIES,
        capacity: Mapping[str, int] | None = None,
    ) -> None:
        self._nsm = nsm
        # The server's bounds, reported by health so the relay can size its pool.
        self._capacity = dict(capacity or {})
        self._vault = vault
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
        }
        for op in _SIGNING_OPS:
            self.handlers[op] = functools.partial(self._sign_one, op)

    def dispatch(self, op: str, params: Mapping[str, Any]) -> dict[str, Any]:
        handler = self.handlers.get(op)
        if handler is None:
            raise EnclaveError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
        return handler(params)

    def health(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, set(), set())
        return {
            "status": "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "capacity": self._capacity,
        }

    def attest(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, set(), {"nonce", "user_data"})
        nonce = _optional_b64(params, "nonce", MAX_NONCE_BYTES)
        user_data = _optional_b64(params, "user_data", MAX_USER_DATA_BYTES)
        document = self._nsm.attest(user_data=user_data, nonce=nonce, public_key=None)
        return {"attestation_document": validation.b64(document)}

    def generate_account(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, {"account_id", "key_id", "credentials"}, set())
        account = self._vault.generate(
            validation.account_id(params["account_id"]),
            validation.key_id(params["key_id"]),
            self._credentials(params["credentials"]),
        )
        return {
            "account_id": account.account_id,
            "address": account.address,
            "key_id": account.key_id,
            "encrypted_private_key": validation.b64(account.encrypted_private_key),
            "encrypted_data_key": validation.b64(account.encrypted_data_key),
        }

    def sign_batch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sign many payloads in one frame; see docs/architecture.md for the shape.

        Envelope errors (shape, bounds, an index outside ``accounts``, an unknown item
        op) fail the frame with ``invalid_params``; anything about one item (its
        payload, its account's unlock, its signature) fails that item only.
        """
        validation.check_params(params, {"credentials", "accounts", "items"}, set())
        credentials = self._credentials(params["credentials"])
        records = _bounded_list(params, "accounts", MAX_BATCH_ACCOUNTS)
        accounts = [self._batch_account(i, record) for i, record in enumerate(records)]
        if len({account.account_id for account in accounts}) != len(accounts):
            raise invalid("accounts must not repeat an account_id")
        items = _bounded_list(params, "items", MAX_BATCH_ITEMS)
        envelopes = [_batch_envelope(i, item, len(accounts)) for i, item in enumerate(items)]
        prepared = [
            self._prepare_item(item, op, accounts[index])
            for item, (op, index) in zip(items, envelopes, strict=True)
        ]
        needed = sorted(
            {
                index
                for (_, index), ready in zip(envelopes, prepared, strict=True)
                if not isinstance(ready, EnclaveError)
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
        for (_, index), ready in zip(envelopes, prepared, strict=True):
            outcome = (
                ready if isinstance(ready, EnclaveError) else _sign_item(ready, unlocked[index])
            )
            results.append(_item_result(outcome))
        return {"results": results}

    # -- signing ops ------------------------------------------------------------------

    def _sign_one(self, op: str, params: Mapping[str, Any]) -> dict[str, Any]:
        signing_op = _SIGNING_OPS[op]
        validation.check_params(params, {"account", "credentials", signing_op.payload}, set())
        account = self._account(params["account"])
        credentials = self._credentials(params["credentials"])
        signer = signing_op.prepare(self, params[signing_op.payload], account)
        return signer(self._vault.unlock(account, credentials))

    def _prepare_transaction(self, value: object, account: SealedAccount) -> Signer:
        tx = transactions.parse_transaction(
            _payload_object(value, "transaction"), allow_pre_eip155=self._allow_pre_eip155
        )
        transactions.require_sender(tx, account.address)

        def sign(key: SigningKey) -> dict[str, Any]:
            signed = transactions.sign_transaction(key, tx)
            return {"raw_transaction": "0x" + signed.raw.hex(), "hash": "0x" + signed.hash.hex()}

        return sign

    def _prepare_message(self, value: object, account: SealedAccount) -> Signer:
        """EIP-191 version 0x45 (personal_sign and eth_sign)."""
        return _digest_signer(messages.eip191_digest(messages.message_bytes(value)))

    def _prepare_typed_data(self, value: object, account: SealedAccount) -> Signer:
        """EIP-712 (eth_signTypedData_v4)."""
        return _digest_signer(
            typed_data.hash_typed_data(_payload_object(value, "typed_data")).digest
        )

    def _prepare_authorization(self, value: object, account: SealedAccount) -> Signer:
        """An EIP-7702 authorization tuple {chainId, address, nonce}."""
        authorization = transactions.parse_authorization(
            "authorization", _payload_object(value, "authorization")
        )

        def sign(key: SigningKey) -> dict[str, Any]:
            return {"authorization": transactions.sign_authorization(key, authorization).to_json()}

        return sign

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
    ) -> Signer | EnclaveError:
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


def _digest_signer(digest: bytes) -> Signer:
    def sign(key: SigningKey) -> dict[str, Any]:
        return _signature(messages.sign_digest_65(key, digest))

    return sign


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
