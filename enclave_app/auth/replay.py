"""A bounded memory of stamps and approvals already used, so a replay is refused.

Each entry lives until the stamp or approval it remembers stops being acceptable
anyway (its freshness window or expiry has passed); expired entries are dropped
lazily, oldest first. The memory never grows past ``capacity``: when it is full of
live entries it refuses new claims (``replay_memory_full``, a retryable 503) rather
than forget one early, because forgetting would let that stamp be replayed. The
``retry_after`` of the refusal is the time until the oldest entry expires.

A claim can be released (the request failed before anything was signed), after which
the same stamp or approval may be used again.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable

from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["ReplayMemory", "ReplayMemoryFullError"]

DEFAULT_CAPACITY = 131_072


class ReplayMemoryFullError(EnclaveError):
    """Every slot holds a live entry: refuse until the oldest expires (fail closed)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            ErrorCode.REPLAY_MEMORY_FULL,
            f"the replay memory is full; retry in {retry_after} s",
        )
        self.retry_after = retry_after


class ReplayMemory:
    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time
    ) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ValueError("capacity must be a positive integer")
        self._capacity = capacity
        self._clock = clock
        self._expiry: dict[bytes, float] = {}
        self._queue: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._sweep(self._clock())
            return len(self._expiry)

    def claim(self, key: bytes, expires_at: float, replayed: ErrorCode, what: str) -> None:
        """Remember ``key`` until ``expires_at``; raise ``replayed`` if it is remembered."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            if key in self._expiry:
                raise EnclaveError(replayed, f"this {what} was already used")
            if len(self._expiry) >= self._capacity:
                oldest = self._queue[0][0]
                raise ReplayMemoryFullError(max(1, math.ceil(oldest - now)))
            self._expiry[key] = expires_at
            heapq.heappush(self._queue, (expires_at, key))

    def release(self, key: bytes) -> None:
        """Forget ``key`` (its request failed before anything was signed)."""
        with self._lock:
            self._expiry.pop(key, None)  # its queue entry is skipped when swept

    def _sweep(self, now: float) -> None:
        queue = self._queue
        while queue and queue[0][0] < now:
            expires_at, key = heapq.heappop(queue)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]
        # Released keys leave stale queue entries; rebuild when they dominate.
        if len(queue) > 2 * len(self._expiry) + 1024:
            self._queue = [(when, key) for key, when in self._expiry.items()]
            heapq.heapify(self._queue)
