"""Nonces for eth_sendTransaction: one send at a time per account, and the relay's own
count of what it sent, reconciled with the node's."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from parent_app.errors import RelayCode, RelayError

#: How long a send for one account waits for the previous one to finish.
ACCOUNT_LOCK_SECONDS = 30.0
#: How long the relay trusts its own count of sent transactions over a node's lower one.
NONCE_MEMORY_SECONDS = 60.0
#: Accounts whose last sent nonce the relay remembers (oldest forgotten first).
MAX_REMEMBERED_ACCOUNTS = 10_000


class NonceTracker:
    """Serializes sends per account and remembers the next nonce of recent sends.

    A node's pending count can lag behind (a load-balanced provider, a send that has
    not propagated): for :data:`NONCE_MEMORY_SECONDS` after a send the relay uses its
    own count when the node's is lower. After that the node is right again, so a
    transaction that never made it does not leave a gap forever. A higher count from
    the node (someone else sent from the account) always wins.
    """

    def __init__(
        self,
        lock_seconds: float = ACCOUNT_LOCK_SECONDS,
        memory_seconds: float = NONCE_MEMORY_SECONDS,
        max_accounts: int = MAX_REMEMBERED_ACCOUNTS,
    ) -> None:
        self.lock_seconds = lock_seconds
        self.memory_seconds = memory_seconds
        self.max_accounts = max_accounts
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._next: OrderedDict[str, tuple[int, float]] = OrderedDict()

    @contextmanager
    def hold(self, address: str) -> Iterator[None]:
        """The account's lock, for one send; busy after ``lock_seconds`` of waiting."""
        key = address.lower()
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=self.lock_seconds):
                raise RelayError(
                    503,
                    RelayCode.SERVER_BUSY,
                    f"another eth_sendTransaction from {address} is still in progress",
                    {"Retry-After": "1"},
                )
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def next_nonce(self, address: str, pending_count: int) -> int:
        """The nonce for the next send: the node's pending count, or more if we know better."""
        with self._mutex:
            remembered = self._next.get(address.lower())
        if remembered is None:
            return pending_count
        nonce, at = remembered
        if time.monotonic() - at > self.memory_seconds:
            return pending_count
        return max(nonce, pending_count)

    def sent(self, address: str, nonce: int) -> None:
        """Record a transaction the node accepted."""
        key = address.lower()
        now = time.monotonic()
        with self._mutex:
            previous = self._next.pop(key, None)
            following = nonce + 1
            if previous is not None and now - previous[1] <= self.memory_seconds:
                following = max(following, previous[0])
            self._next[key] = (following, now)
            while len(self._next) > self.max_accounts:
                self._next.popitem(last=False)
