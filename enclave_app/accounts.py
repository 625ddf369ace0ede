"""Accounts: key generation and unlocking, the only places a private key exists.

Generate: the key is born here, sealed under a fresh KMS data key released to this
enclave's attestation, and only ciphertext leaves. Unlock: the data key comes back
through the same attested path, the key is opened, and it must derive the address in
the record before it is used or cached. An account's metadata (labels, bound stamp
keys, creator) is sealed with its key (envelope version 2): it is trusted only from a
record that opened, and a warm key answers only for the metadata it was opened with.

Cold unlocks of one record are done once at a time ("single flight"): concurrent
requests for a record that is being unlocked wait for that unlock instead of each
calling KMS. :meth:`AccountVault.unlock_many` unlocks the cold records of a batch in
parallel, up to the KMS concurrency bound.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from enclave_app import envelope
from enclave_app.account_metadata import AccountMetadata
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_cache import CacheKey, KeyCache
from enclave_app.kms import AttestedKms, AwsCredentials
from enclave_app.signing.keys import SigningKey, generate_private_key
from enclave_app.stats import EnclaveStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedAccount:
    account_id: str
    address: str
    key_id: str
    encrypted_private_key: bytes
    encrypted_data_key: bytes
    metadata: AccountMetadata = field(default_factory=AccountMetadata)

    @functools.cached_property
    def cache_key(self) -> CacheKey:
        """The key-cache entry of exactly this record (every field that unlocking uses)."""
        return CacheKey.for_record(
            self.account_id,
            self.address,
            self.key_id,
            self.encrypted_private_key,
            self.encrypted_data_key,
            self.metadata.canonical,
        )


#: ``random(n, purpose)``: key material (``enclave_app.auth.entropy.MixedEntropy``).
RandomSource = Callable[[int, str], bytes]


def os_random(n: int, purpose: str) -> bytes:
    """The OS CSPRNG alone (tests and tools; the enclave mixes in the NSM's source)."""
    return secrets.token_bytes(n)


class AccountVault:
    def __init__(
        self,
        kms: AttestedKms,
        cache: KeyCache[SigningKey],
        *,
        max_parallel_unlocks: int = 8,
        stats: EnclaveStats | None = None,
        random: RandomSource = os_random,
    ) -> None:
        if max_parallel_unlocks < 1:
            raise ValueError("max_parallel_unlocks must be at least 1")
        self._kms = kms
        self._cache = cache
        self._lookups = (stats or EnclaveStats()).key_cache_lookups
        self._random = random
        self._inflight: dict[CacheKey, Future[SigningKey]] = {}
        self._inflight_lock = threading.Lock()
        self._unlockers = ThreadPoolExecutor(
            max_workers=max_parallel_unlocks, thread_name_prefix="unlock"
        )

    def generate(
        self,
        account_id: str,
        key_id: str,
        credentials: AwsCredentials,
        metadata: AccountMetadata | None = None,
    ) -> SealedAccount:
        metadata = metadata or AccountMetadata()
        # Key material first: a failing entropy source refuses before any KMS call.
        private_key = generate_private_key(lambda n: self._random(n, "secp256k1-private-key"))
        nonce = self._random(envelope.NONCE_BYTES, "account-key-gcm-nonce")
        signing_key = SigningKey(private_key)
        context = envelope.encryption_context(account_id)
        data_key = self._kms.generate_data_key(key_id, context, credentials)
        sealed_key = envelope.seal(
            data_key.plaintext,
            private_key,
            envelope.additional_data_v2(account_id, signing_key.address, metadata.canonical),
            nonce,
        )
        account = SealedAccount(
            account_id=account_id,
            address=signing_key.address,
            key_id=key_id,
            encrypted_private_key=sealed_key,
            encrypted_data_key=data_key.ciphertext_blob,
            metadata=metadata,
        )
        self._cache.put(account.cache_key, signing_key)
        return account

    @property
    def kms(self) -> AttestedKms:
        return self._kms

    def cache_level(self) -> dict[str, object]:
        """For the stats op: entries, bound and evictions of the key cache."""
        return {
            "entries": len(self._cache),
            "max_entries": self._cache.max_entries,
            "evictions": self._cache.evictions(),
        }

    def is_warm(self, account: SealedAccount, for_seconds: float = 0.0) -> bool:
        """Whether unlocking ``account`` now would need no KMS call (its key is cached
        for ``for_seconds`` more). Side-effect free: it counts no lookup."""
        return self._cache.holds(account.cache_key, for_seconds)

    def unlock(self, account: SealedAccount, credentials: AwsCredentials) -> SigningKey:
        """The account's key, from the cache or through attested KMS Decrypt."""
        additional_data_for(account)  # a v1 record claiming metadata is refused, warm too
        cached = self._cache.get(account.cache_key)
        if cached is not None:
            self._lookups.add("hit")
            return cached
        self._lookups.add("miss")
        return self._unlock_once(account, credentials)

    def unlock_many(
        self, accounts: Sequence[SealedAccount], credentials: AwsCredentials
    ) -> list[SigningKey | EnclaveError]:
        """Each account's key or the error that refused it, in order.

        Warm keys come from the cache; cold ones are unlocked in parallel, at most
        ``max_parallel_unlocks`` at a time (and the KMS client bounds its calls too).
        """
        results: list[SigningKey | EnclaveError | None] = [
            self._cache.get(account.cache_key) for account in accounts
        ]
        cold = [i for i, result in enumerate(results) if result is None]
        if len(cold) < len(results):
            self._lookups.add("hit", amount=len(results) - len(cold))
        if cold:
            self._lookups.add("miss", amount=len(cold))
        if len(cold) == 1:
            results[cold[0]] = self._unlock_or_error(accounts[cold[0]], credentials)
        elif cold:
            futures = {
                i: self._unlockers.submit(self._unlock_or_error, accounts[i], credentials)
                for i in cold
            }
            for i, future in futures.items():
                results[i] = future.result()
        return [_present(result) for result in results]

    def close(self) -> None:
        self._unlockers.shutdown(wait=False, cancel_futures=True)

    def _unlock_or_error(
        self, account: SealedAccount, credentials: AwsCredentials
    ) -> SigningKey | EnclaveError:
        """A cold account's key (its lookup was counted as a miss) or the refusal."""
        try:
            return self._unlock_once(account, credentials)
        except EnclaveError as exc:
            return exc
        except Exception as exc:  # one account's surprise must not sink the others
            log.error("unlock failed unexpectedly: %s", type(exc).__name__)
            return EnclaveError(ErrorCode.INTERNAL, "internal error in the enclave")

    def _unlock_once(self, account: SealedAccount, credentials: AwsCredentials) -> SigningKey:
        """Unlock through KMS, or wait for the unlock of the same record in progress."""
        cache_key = account.cache_key
        with self._inflight_lock:
            pending = self._inflight.get(cache_key)
            if pending is None:
                leader: Future[SigningKey] = Future()
                self._inflight[cache_key] = leader
        if pending is not None:
            try:
                return pending.result()
            except EnclaveError as exc:  # a fresh exception per waiter
                raise EnclaveError(exc.code, exc.message) from None
        try:
            signing_key = self._cache.get(cache_key) or self._decrypt(account, credentials)
        except BaseException as exc:
            leader.set_exception(exc)
            raise
        else:
            leader.set_result(signing_key)
            return signing_key
        finally:
            with self._inflight_lock:
                del self._inflight[cache_key]

    def _decrypt(self, account: SealedAccount, credentials: AwsCredentials) -> SigningKey:
        data_key = self._kms.decrypt(
            account.encrypted_data_key,
            account.key_id,
            envelope.encryption_context(account.account_id),
            credentials,
        )
        private_key = envelope.open_sealed(
            data_key, account.encrypted_private_key, additional_data_for(account)
        )
        signing_key = SigningKey(private_key)
        if not hmac.compare_digest(signing_key.address.lower(), account.address.lower()):
            raise EnclaveError(
                ErrorCode.ADDRESS_MISMATCH,
                "the decrypted key does not derive the stored address; refusing to sign",
            )
        self._cache.put(account.cache_key, signing_key)
        return signing_key


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


def _present(result: SigningKey | EnclaveError | None) -> SigningKey | EnclaveError:
    if result is None:  # every index was either warm or unlocked above
        raise RuntimeError("unlock_many left an account without a result")
    return result
