"""Bounded, time-limited in-memory cache of unlocked private keys.

A warm signature costs no KMS call. Entries are keyed by the account id *and* a
digest of every record field that unlocking depends on (account id, address, KMS key
id, both ciphertexts and the sealed metadata), so a record whose ciphertexts or
metadata change (or a record swapped or edited by the parent) never hits a key
unlocked from other bytes. Size and age are
both bounded. Every entry lives ``ttl_seconds`` from its unlock, however often it is
used, so insertion order is expiry order: the oldest entry goes first when the cache
is full, expired entries are dropped on access, on insert and by :meth:`purge_expired`
(the server calls it periodically, so an idle enclave forgets its keys on time too),
each in constant time per entry.

Evictions are counted by reason (``capacity``: the oldest made room for a new entry;
``ttl``: expired) for the enclave's ``stats`` op.

The cached value is the prepared key object (``signing.SigningKey``), not the 32
bytes: building it costs more than a signature.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheKey:
    account_id: str
    record_digest: bytes

    @classmethod
    def for_record(
        cls,
        account_id: str,
        address: str,
        key_id: str,
        encrypted_private_key: bytes,
        encrypted_data_key: bytes,
        metadata: bytes = b"",
    ) -> CacheKey:
        digest = hashlib.sha256()
        for part in (
            account_id.encode(),
            address.lower().encode(),
            key_id.encode(),
            encrypted_private_key,
            encrypted_data_key,
            metadata,
        ):
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
        return cls(account_id, digest.digest())


class KeyCache(Generic[V]):
    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0 or ttl_seconds < 0:
            raise ValueError("key cache bound and TTL must not be negative")
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._evicted = {"capacity": 0, "ttl": 0}

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def get(self, key: CacheKey) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, secret = entry
            if self._clock() >= expires:
                del self._entries[key]
                self._evicted["ttl"] += 1
                return None
            return secret

    def holds(self, key: CacheKey, for_seconds: float = 0.0) -> bool:
        """Whether ``key`` is cached and stays so for ``for_seconds`` more (by age; a
        capacity eviction may still come first). Changes nothing: no expiry, no count."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and self._clock() + for_seconds < entry[0]

    def put(self, key: CacheKey, secret: V) -> None:
        if self._max_entries == 0 or self._ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            self._entries.pop(key, None)  # a re-unlock starts a new lifetime at the end
            self._entries[key] = (now + self._ttl, secret)
            self._evict(now)

    def purge_expired(self) -> None:
        with self._lock:
            self._evict(self._clock())

    def evictions(self) -> dict[str, int]:
        """Entries dropped so far, by reason (``capacity`` or ``ttl``)."""
        with self._lock:
            return dict(self._evicted)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self, now: float) -> None:
        while self._entries:
            oldest, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self._max_entries:
                return
            del self._entries[oldest]
            self._evicted["ttl" if expires <= now else "capacity"] += 1
