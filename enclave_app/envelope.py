"""AES-256-GCM envelope for private keys, and the bindings that tie a ciphertext to
its account.

Two independent bindings make a ciphertext useless in another account's record:
- the KMS EncryptionContext ``{"nitro-wallet:account_id": <uuid>}`` on the data key,
  so KMS refuses to decrypt the data key for any other account;
- the GCM additional data, so the key ciphertext only opens for the account and
  address it was sealed for: ``nitro-wallet/v1|<account_id>|<address>`` in version 1;
  version 2 adds the account's metadata (labels, bound stamp keys; see
  :mod:`enclave_app.account_metadata`):
  ``nitro-wallet/v2|<account_id>|<address>|<canonical metadata JSON>``.

The version byte leads the sealed bytes and must name the version tag the additional
data starts with, so a v2 ciphertext relabelled as v1 (to shed its labels) is refused.
New accounts are sealed as version 2; version 1 accounts keep opening, with no metadata.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_app.errors import EnclaveError, ErrorCode

ENVELOPE_V1 = 0x01
ENVELOPE_V2 = 0x02
_AAD_TAGS = {ENVELOPE_V1: b"nitro-wallet/v1|", ENVELOPE_V2: b"nitro-wallet/v2|"}
#: Every version byte a sealed key may start with.
VERSIONS = frozenset(_AAD_TAGS)
NONCE_BYTES = 12
DATA_KEY_BYTES = 32
ENCRYPTION_CONTEXT_KEY = "nitro-wallet:account_id"


def encryption_context(account_id: str) -> dict[str, str]:
    return {ENCRYPTION_CONTEXT_KEY: account_id}


def additional_data(account_id: str, address: str) -> bytes:
    """Version 1: the account and its address."""
    return _AAD_TAGS[ENVELOPE_V1] + f"{account_id}|{address.lower()}".encode()


def additional_data_v2(account_id: str, address: str, metadata: bytes) -> bytes:
    """Version 2: the account, its address and its canonical metadata."""
    return _AAD_TAGS[ENVELOPE_V2] + f"{account_id}|{address.lower()}|".encode() + metadata


def version_of(sealed: bytes) -> int:
    """The envelope version of sealed bytes; malformed or unknown ones are refused."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] not in _AAD_TAGS:
        raise EnclaveError(ErrorCode.CIPHERTEXT_INVALID, "encrypted private key is malformed")
    return sealed[0]


def _aad_version(aad: bytes) -> int:
    for version, tag in _AAD_TAGS.items():
        if aad.startswith(tag):
            return version
    raise ValueError("additional data must come from additional_data or additional_data_v2")


def seal(data_key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """version(1) || nonce(12) || ciphertext || tag(16), with a fresh random nonce (the
    caller's, drawn from its entropy source, or the OS CSPRNG's); the version is the one
    ``aad`` was made for."""
    _check_key(data_key)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
    sealed = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    return bytes([_aad_version(aad)]) + nonce + sealed


def open_sealed(data_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    _check_key(data_key)
    if version_of(sealed) != _aad_version(aad):
        raise EnclaveError(
            ErrorCode.CIPHERTEXT_INVALID,
            "encrypted private key has another envelope version than its record",
        )
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
