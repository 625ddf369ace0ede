"""The enclave's operations. Each handler validates its own params and returns a
JSON-ready result; errors are raised as ``EnclaveError`` with a stable code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from enclave_app import __version__, validation
from enclave_app.accounts import AccountVault, SealedAccount
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.kms import AwsCredentials
from enclave_app.nsm import Nsm
from enclave_app.signing import messages, transactions, typed_data
from enclave_app.signing.messages import SignedMessage
from enclave_app.wire import PROTOCOL_VERSION

MAX_NONCE_BYTES = 512
MAX_USER_DATA_BYTES = 512

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


class Operations:
    def __init__(self, nsm: Nsm, vault: AccountVault, *, allow_pre_eip155: bool) -> None:
        self._nsm = nsm
        self._vault = vault
        self._allow_pre_eip155 = allow_pre_eip155
        self.handlers: dict[str, Handler] = {
            "health": self.health,
            "attest": self.attest,
            "generate_account": self.generate_account,
            "sign_transaction": self.sign_transaction,
            "sign_message": self.sign_message,
            "sign_typed_data": self.sign_typed_data,
            "sign_authorization": self.sign_authorization,
        }

    def dispatch(self, op: str, params: Mapping[str, Any]) -> dict[str, Any]:
        handler = self.handlers.get(op)
        if handler is None:
            raise EnclaveError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
        return handler(params)

    def health(self, params: Mapping[str, Any]) -> dict[str, Any]:
        validation.check_params(params, set(), set())
        return {"status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION}

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
            validation.credentials(params["credentials"]),
        )
        return {
            "account_id": account.account_id,
            "address": account.address,
            "key_id": account.key_id,
            "encrypted_private_key": validation.b64(account.encrypted_private_key),
            "encrypted_data_key": validation.b64(account.encrypted_data_key),
        }

    def sign_transaction(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = _SigningRequest.parse(params, "transaction")
        tx = transactions.parse_transaction(
            validation.object_field(params, "transaction"),
            allow_pre_eip155=self._allow_pre_eip155,
        )
        transactions.require_sender(tx, request.account.address)
        signed = transactions.sign_transaction(self._unlock(request), tx)
        return {"raw_transaction": "0x" + signed.raw.hex(), "hash": "0x" + signed.hash.hex()}

    def sign_message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """EIP-191 version 0x45 (personal_sign and eth_sign)."""
        request = _SigningRequest.parse(params, "message")
        digest = messages.eip191_digest(messages.message_bytes(params["message"]))
        return _signature(messages.sign_digest_65(self._unlock(request), digest))

    def sign_typed_data(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """EIP-712 (eth_signTypedData_v4), fully validated before any KMS call."""
        request = _SigningRequest.parse(params, "typed_data")
        digest = typed_data.hash_typed_data(validation.object_field(params, "typed_data")).digest
        return _signature(messages.sign_digest_65(self._unlock(request), digest))

    def sign_authorization(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """An EIP-7702 authorization tuple {chainId, address, nonce}."""
        request = _SigningRequest.parse(params, "authorization")
        authorization = transactions.parse_authorization(
            "authorization", validation.object_field(params, "authorization")
        )
        signed = transactions.sign_authorization(self._unlock(request), authorization)
        return {"authorization": signed.to_json()}

    def _unlock(self, request: _SigningRequest) -> bytes:
        return self._vault.unlock(request.account, request.credentials)


@dataclass(frozen=True)
class _SigningRequest:
    """The envelope every signing op shares; the payload is checked by its own parser."""

    account: SealedAccount
    credentials: AwsCredentials

    @classmethod
    def parse(cls, params: Mapping[str, Any], payload: str) -> _SigningRequest:
        validation.check_params(params, {"account", "credentials", payload}, set())
        return cls(
            validation.sealed_account(params["account"]),
            validation.credentials(params["credentials"]),
        )


def _signature(signed: SignedMessage) -> dict[str, Any]:
    return {"signature": "0x" + signed.signature.hex(), "digest": "0x" + signed.digest.hex()}


def _optional_b64(params: Mapping[str, Any], name: str, max_bytes: int) -> bytes | None:
    value = params.get(name)
    if value is None:
        return None
    return validation.base64_bytes(value, name, max_bytes, allow_empty=True)
