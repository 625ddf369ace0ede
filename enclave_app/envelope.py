"""AES-256-GCM envelope for private keys, and the bindings that tie a ciphertext to
its account.

Two independent bindings make a ciphertext useless in another account's record:
- the KMS EncryptionContext ``{"nitro-wallet:account_id": <uuid>}`` on the data key,
  so KMS refuses to decrypt the data key for any other account;
- the GCM additional data ``nitro-wallet/v1|<account_id>|<address>``, so the key
  ciphertext only opens for the account and address it was sealed for.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_app.errors import EnclaveError, ErrorCode

ENVELOPE_VERSION = 0x01
NONCE_BYTES = 12
DATA_KEY_BYTES = 32
ENCRYPTION_CONTEXT_KEY = "nitro-wallet:account_id"


def encryption_context(account_id: str) -> dict[str, str]:
    return {ENCRYPTION_CONTEXT_KEY: account_id}


def additional_data(account_id: str, address: str) -> bytes:
    return f"nitro-wallet/v1|{account_id}|{address.lower()}".encode()


def seal(data_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """version(1) || nonce(12) || ciphertext || tag(16), with a fresh random nonce."""
    _check_key(data_key)
    nonce = os.urandom(NONCE_BYTES)
    return bytes([ENVELOPE_VERSION]) + nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)


def open_sealed(data_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    _check_key(data_key)
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != ENVELOPE_VERSION:
        raise EnclaveError(ErrorCode.CIPHERTEXT_INVALID, "encrypted private key is malformed")
    nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(data_key).decrypt(nonce, body, aad)
    except InvalidTag as exc:
        raise EnclaveError(
            ErrorCode.CIPHERTEXT_INVALID,
            "encrypted private key does not belong to this account (authentication failed)",
        ) from exc


def _check_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_BYTES:
        raise EnclaveError(ErrorCode.KMS_BAD_RESPONSE, "KMS data key is not 256 bits")
