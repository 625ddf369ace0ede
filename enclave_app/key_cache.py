"""Bounded, time-limited in-memory cache of unlocked private keys.

A warm signature costs no KMS call. Entries are keyed by the account id *and* a
digest of the stored ciphertexts and the sealed metadata, so a record whose
ciphertexts or labels change (or a record swapped by the parent) never hits a key
unlocked from other bytes. Size and age are both bounded; expired entries are dropped
on access and on insert.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheKey:
    account_id: str
    record_digest: bytes

    @classmethod
    def for_record(
        cls,
        account_id: str,
        address: str,
        encrypted_private_key: bytes,
        encrypted_data_key: bytes,
        metadata: bytes = b"",
    ) -> CacheKey:
        digest = hashlib.sha256()
        for part in (
            account_id.encode(),
            address.lower().encode(),
            encrypted_private_key,
            encrypted_data_key,
            metadata,
        ):
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
        return cls(account_id, digest.digest())


class KeyCache:
    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, secret = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return secret

    def put(self, key: CacheKey, secret: bytes) -> None:
        if self._max_entries == 0 or self._ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            self._entries[key] = (now + self._ttl, secret)
            self._entries.move_to_end(key)
            self._evict(now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self, now: float) -> None:
        expired = [k for k, (expires, _) in self._entries.items() if expires <= now]
        for k in expired:
            del self._entries[k]
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
