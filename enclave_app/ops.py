"""The enclave's operations. Each handler validates its own params and returns a
JSON-ready result; errors are raised as ``EnclaveError`` with a stable code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from enclave_app import __version__, validation
from enclave_app.accounts import AccountVault
from enclave_app.errors import EnclaveError, ErrorCode, invalid
from enclave_app.nsm import Nsm
from enclave_app.signing import transactions
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
        validation.check_params(params, {"account", "credentials", "transaction"}, set())
        account = validation.sealed_account(params["account"])
        credentials = validation.credentials(params["credentials"])
        fields = validation.object_field(params, "transaction")
        sender = fields.get("from")
        if sender is not None and (
            not isinstance(sender, str) or sender.lower() != account.address.lower()
        ):
            raise invalid("transaction.from does not match the account's address")
        tx = transactions.parse_transaction(
            {k: v for k, v in fields.items() if k != "from"},
            allow_pre_eip155=self._allow_pre_eip155,
        )
        private_key = self._vault.unlock(account, credentials)
        signed = transactions.sign_transaction(private_key, tx)
        return {"raw_transaction": "0x" + signed.raw.hex(), "hash": "0x" + signed.hash.hex()}


def _optional_b64(params: Mapping[str, Any], name: str, max_bytes: int) -> bytes | None:
    value = params.get(name)
    if value is None:
        return None
    return validation.base64_bytes(value, name, max_bytes, allow_empty=True)
