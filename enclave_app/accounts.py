"""Accounts: key generation and unlocking, the only places a private key exists.

Generate: the key is born here, sealed under a fresh KMS data key released to this
enclave's attestation, and only ciphertext leaves. Unlock: the data key comes back
through the same attested path, the key is opened, and it must derive the address in
the record before it is used or cached.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from enclave_app import envelope
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


class AccountVault:
    def __init__(self, kms: AttestedKms, cache: KeyCache) -> None:
        self._kms = kms
        self._cache = cache

    def generate(self, account_id: str, key_id: str, credentials: AwsCredentials) -> SealedAccount:
        context = envelope.encryption_context(account_id)
        data_key = self._kms.generate_data_key(key_id, context, credentials)
        private_key = generate_private_key()
        address = private_key_to_address(private_key)
        sealed_key = envelope.seal(
            data_key.plaintext, private_key, envelope.additional_data(account_id, address)
        )
        account = SealedAccount(
            account_id=account_id,
            address=address,
            key_id=key_id,
            encrypted_private_key=sealed_key,
            encrypted_data_key=data_key.ciphertext_blob,
        )
        self._cache.put(self._cache_key(account), private_key)
        return account

    def unlock(self, account: SealedAccount, credentials: AwsCredentials) -> bytes:
        """The account's private key, from the cache or through attested KMS Decrypt."""
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
        private_key = envelope.open_sealed(
            data_key,
            account.encrypted_private_key,
            envelope.additional_data(account.account_id, account.address),
        )
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
        )
