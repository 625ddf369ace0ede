"""Velocity limits: value and count per account in a rolling window, in enclave memory.

Each (limit, account) pair keeps per-slot sums, a slot being 1/:data:`SLOTS` of the
window. The window ending now is judged by every slot it touches, the oldest one in
full, so the ledger can only over-count (by at most one slot of old requests): it may
refuse early, never late.

Restarts. The ledger lives only in memory, and the parent can restart the enclave at
will. A ledger that started empty would let every restart sign another full window, so
at boot every window counts as already used up: until ``window_seconds`` after the
enclave started, a limit with ``max_count`` refuses every request it covers and a limit
with ``max_value`` refuses every transaction with a non-zero value. In any window of
that length, before and after any number of restarts, the enclave therefore signs no
more than the limit. docs/policy.md explains the trade-off (a restart costs one window
of limited signing).

Reservations. A request that passes takes its share of the window at once (so two
concurrent requests cannot both take the last of it) and gives it back with
:meth:`Reservation.release` when no signature comes out.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from enclave_app.errors import ErrorCode
from enclave_app.policy.evaluate import Decision, PolicyDeniedError, denied
from enclave_app.policy.model import Limit

#: Slots per window: the precision of the rolling window.
SLOTS = 60
#: Sweep idle windows out of memory after this many reservations.
SWEEP_EVERY = 4096


@dataclass(frozen=True, slots=True)
class Charge:
    """What one signature costs under one limit: a count of 1 and ``value`` wei."""

    limit: Limit
    account_id: str
    value: int


@dataclass(slots=True)
class _Window:
    """Per-slot sums (oldest first: slots are added in time order) and their totals."""

    width: float
    slots: dict[int, list[int]] = field(default_factory=dict)  # slot -> [value, count]
    value: int = 0
    count: int = 0

    def used(self, now: float) -> tuple[int, int, int]:
        """(value, count, current slot) over the window ending at ``now``."""
        current = int(now // self.width)
        oldest = current - SLOTS
        while self.slots:
            first = next(iter(self.slots))
            if first >= oldest:
                break
            entry = self.slots.pop(first)
            self.value -= entry[0]
            self.count -= entry[1]
        return self.value, self.count, current

    def add(self, slot: int, value: int, count: int) -> None:
        entry = self.slots.get(slot)
        if entry is None:
            if count < 0:
                return  # the slot has left the window: nothing to give back
            entry = self.slots[slot] = [0, 0]
        entry[0] += value
        entry[1] += count
        self.value += value
        self.count += count


class Reservation:
    """The share of each window one request holds; give it back if nothing was signed."""

    def __init__(self, ledger: VelocityLedger, entries: list[tuple[_Window, int, int]]) -> None:
        self._ledger = ledger
        self._entries = entries

    def release(self) -> None:
        with self._ledger.lock:
            for window, slot, value in self._entries:
                window.add(slot, -value, -1)
            self._entries = []


class VelocityLedger:
    """The windows of every limit, started at ``boot`` (a ``time.monotonic`` value)."""

    def __init__(self, boot: float) -> None:
        self.boot = boot
        self.lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._reservations = 0

    def reserve(self, charges: Sequence[Charge], now: float) -> Reservation:
        """Take every charge or none; raise :class:`PolicyDeniedError` (``velocity_exceeded``)
        naming the first limit the request would cross."""
        with self.lock:
            taken = []
            for charge in charges:
                window = self._window(charge)
                value, count, slot = window.used(now)
                refusal = self._refusal(charge, value, count, now)
                if refusal is not None:
                    raise PolicyDeniedError(refusal)
                taken.append((window, slot, charge.value))
            for window, slot, value in taken:
                window.add(slot, value, 1)
            self._reservations += 1
            if self._reservations % SWEEP_EVERY == 0:
                self._sweep(now)
            return Reservation(self, taken)

    def _window(self, charge: Charge) -> _Window:
        key = (charge.limit.name, charge.account_id)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(charge.limit.window_seconds / SLOTS)
        return window

    def _refusal(self, charge: Charge, value: int, count: int, now: float) -> Decision | None:
        limit = charge.limit
        booting = now - self.boot < limit.window_seconds
        if limit.max_count is not None:
            used = limit.max_count if booting else count
            if used + 1 > limit.max_count:
                return self._exceeded(limit, "max_count", limit.max_count, booting)
        if limit.max_value is not None and charge.value:
            used = limit.max_value if booting else value
            if used + charge.value > limit.max_value:
                return self._exceeded(limit, "max_value", limit.max_value, booting)
        return None

    @staticmethod
    def _exceeded(limit: Limit, bound: str, maximum: int, booting: bool) -> Decision:
        reason = (
            f"the account's {bound} of {maximum} per {limit.window_seconds} s would be exceeded"
        )
        if booting:
            reason += (
                "; the enclave started less than one window ago and counts the window "
                "as used (a restart must not reset limits)"
            )
        return denied(limit.name, ErrorCode.VELOCITY_EXCEEDED, reason)

    def _sweep(self, now: float) -> None:
        for key in [k for k, window in self._windows.items() if not window.used(now)[1]]:
            del self._windows[key]

    def __len__(self) -> int:
        with self.lock:
            return len(self._windows)
