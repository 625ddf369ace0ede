"""Accounts: key generation and unlocking, the only places a private key exists.

Generate: the key is born here, sealed under a fresh KMS data key released to this
enclave's attestation, and only ciphertext leaves. Unlock: the data key comes back
through the same attested path, the key is opened, and it must derive the address in
the record before it is used or cached. An account's metadata (labels, bound stamp
keys) is sealed with its key (envelope version 2): it is trusted only from a record
that opened.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from enclave_app import envelope
from enclave_app.account_metadata import AccountMetadata
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_cache import CacheKey, KeyCache
from enclave_app.kms import AttestedKms, AwsCredentials
from enclave_app.signing.keys import generate_private_key, private_key_to_address


@dataclass(frozen=True)
class SealedAccount:
    account_id: str
    address: str
    key_id: str
    encrypted_private_key: bytes
    encrypted_data_key: bytes
    metadata: AccountMetadata = field(default_factory=AccountMetadata)


class AccountVault:
    def __init__(self, kms: AttestedKms, cache: KeyCache) -> None:
        self._kms = kms
        self._cache = cache

    def generate(
        self,
        account_id: str,
        key_id: str,
        credentials: AwsCredentials,
        metadata: AccountMetadata | None = None,
    ) -> SealedAccount:
        metadata = metadata or AccountMetadata()
        context = envelope.encryption_context(account_id)
        data_key = self._kms.generate_data_key(key_id, context, credentials)
        private_key = generate_private_key()
        address = private_key_to_address(private_key)
        sealed_key = envelope.seal(
            data_key.plaintext,
            private_key,
            envelope.additional_data_v2(account_id, address, metadata.canonical),
        )
        account = SealedAccount(
            account_id=account_id,
            address=address,
            key_id=key_id,
            encrypted_private_key=sealed_key,
            encrypted_data_key=data_key.ciphertext_blob,
            metadata=metadata,
        )
        self._cache.put(self._cache_key(account), private_key)
        return account

    def unlock(self, account: SealedAccount, credentials: AwsCredentials) -> bytes:
        """The account's private key, from the cache or through attested KMS Decrypt."""
        aad = additional_data_for(account)
        cache_key = self._cache_key(account)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        data_key = self._kms.decrypt(
            account.encrypted_data_key,
            account.key_id,
            envelope.encryption_context(account.account_id),
            credentials,
        )
        private_key = envelope.open_sealed(data_key, account.encrypted_private_key, aad)
        derived = private_key_to_address(private_key)
        if not hmac.compare_digest(derived.lower(), account.address.lower()):
            raise EnclaveError(
                ErrorCode.ADDRESS_MISMATCH,
                "the decrypted key does not derive the stored address; refusing to sign",
            )
        self._cache.put(cache_key, private_key)
        return private_key

    @staticmethod
    def _cache_key(account: SealedAccount) -> CacheKey:
        return CacheKey.for_record(
            account.account_id,
            account.address,
            account.encrypted_private_key,
            account.encrypted_data_key,
            account.metadata.canonical,
        )


def additional_data_for(account: SealedAccount) -> bytes:
    """The record's binding; a version 1 record cannot carry metadata (none was sealed)."""
    if envelope.version_of(account.encrypted_private_key) == envelope.ENVELOPE_V1:
        if not account.metadata.empty:
            raise EnclaveError(
                ErrorCode.CIPHERTEXT_INVALID,
                "a version 1 account has no sealed labels or stamp keys; the record claims some",
            )
        return envelope.additional_data(account.account_id, account.address)
    return envelope.additional_data_v2(
        account.account_id, account.address, account.metadata.canonical
    )
