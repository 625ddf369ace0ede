"""Account records remembered in the relay's memory, in front of any storage backend.

A stored record never changes: storage only inserts (a conditional write, never an
overwrite) and has no update or delete. So a record once read can be served from memory
for as long as the process runs, and a warm signature needs no storage round trip
(SQLite: a query and the record's validation, tens of microseconds; DynamoDB: a network
round trip). Only records that exist are remembered: an unknown id is asked again every
time, since another relay of the fleet may create it at any moment.

Nothing here weakens a check: the enclave verifies every record it is sent (the
ciphertext must open under KMS and derive the stored address), whoever held it.
"""

from __future__ import annotations

import functools

from parent_app import loop_bridge
from parent_app.storage import AccountPage, AccountRecord, Storage

#: Records kept (least recently used first out); about 1 KiB each.
DEFAULT_ENTRIES = 10_000


class _Absent(Exception):  # noqa: N818 (internal signal: a miss is not remembered)
    pass


class CachedStorage:
    """``Storage`` whose ``get`` answers from memory after the first read of a record."""

    def __init__(self, inner: Storage, entries: int = DEFAULT_ENTRIES) -> None:
        self.inner = inner
        self._get = functools.lru_cache(maxsize=entries)(self._read)

    def _read(self, account_id: str) -> AccountRecord:
        record = loop_bridge.off_loop(self.inner.get, account_id)  # a miss may wait on I/O
        if record is None:
            raise _Absent  # exceptions are not cached: the next get asks again
        return record

    def get(self, account_id: str) -> AccountRecord | None:
        try:
            return self._get(account_id)
        except _Absent:
            return None

    def insert(self, record: AccountRecord) -> None:
        self.inner.insert(record)

    def get_by_address(self, address: str) -> AccountRecord | None:
        return self.inner.get_by_address(address)

    def list(self, limit: int, after: str | None) -> AccountPage:
        return self.inner.list(limit, after)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    @property
    def cached(self) -> int:
        """Records held in memory now."""
        return self._get.cache_info().currsize
