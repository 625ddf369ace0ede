"""Counters the enclave keeps about itself, answered by the ``stats`` op.

The enclave has no port of its own: the relay asks for these on each scrape and
exports them as Prometheus metrics (counters stay counters: monotonic from the
enclave's boot, which ``boot_id`` and ``start_time_ms`` identify, so the relay
can count restarts and ``rate()`` handles the reset).

Every label value is from a fixed set: KMS operations are this module's names, and a
KMS error code outside :data:`KMS_ERROR_CODES` is counted as ``other``, so nothing a
response carries can grow the label space.
"""

from __future__ import annotations

import bisect
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = [
    "KMS_ERROR_CODES",
    "LATENCY_BUCKETS",
    "Counters",
    "EnclaveStats",
    "Histogram",
    "kms_outcome",
]

#: Upper bounds (seconds) of the KMS latency histogram (Prometheus client defaults).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: AWS KMS error codes counted under their own name (GenerateDataKey, Decrypt, and the
#: errors every AWS API may answer); others are counted as ``other``.
KMS_ERROR_CODES = frozenset(
    {
        "AccessDeniedException",
        "DependencyTimeoutException",
        "DisabledException",
        "DryRunOperationException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
        "IncorrectKeyException",
        "InvalidCiphertextException",
        "InvalidClientTokenId",
        "InvalidGrantTokenException",
        "InvalidKeyUsageException",
        "InvalidSignatureException",
        "KMSInternalException",
        "KMSInvalidStateException",
        "KeyUnavailableException",
        "LimitExceededException",
        "MissingAuthenticationTokenException",
        "NotFoundException",
        "ThrottlingException",
        "UnrecognizedClientException",
        "ValidationException",
    }
)


def kms_outcome(aws_code: str) -> str:
    """The label of a KMS error code: itself if known, else ``other``."""
    return aws_code if aws_code in KMS_ERROR_CODES else "other"


class Counters:
    """Monotonic counters keyed by a tuple of label values (thread-safe)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def add(self, *labels: str, amount: int = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def get(self, *labels: str) -> int:
        with self._lock:
            return self._values.get(labels, 0)

    def snapshot(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._values)


class Histogram:
    """Observations per key in fixed buckets, answered cumulatively as Prometheus has them."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and ascending")
        self._bounds = bounds
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)  # first bound >= value; len: +Inf
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self._bounds) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += value

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per key: ``buckets`` as [le, cumulative count] pairs ending with "+Inf",
        ``count``, and ``sum_us``: the sum in integer microseconds (the wire protocol
        carries no floats; bounds travel as the strings Prometheus uses for ``le``)."""
        with self._lock:
            copied = {key: (list(counts), sums[0]) for key, (counts, sums) in self._series.items()}
        answer: dict[str, dict[str, Any]] = {}
        for key, (counts, total) in copied.items():
            labels = [_le(bound) for bound in self._bounds] + ["+Inf"]
            cumulative, running = [], 0
            for label, count in zip(labels, counts, strict=True):
                running += count
                cumulative.append([label, running])
            answer[key] = {"buckets": cumulative, "count": running, "sum_us": round(total * 1e6)}
        return answer


class EnclaveStats:
    """What the stats op reports that no other component keeps: boot identity, KMS
    requests and latency, key-cache lookups, server admission."""

    def __init__(
        self,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        #: A new value at every start of the enclave process.
        self.boot_id = str(uuid.uuid4())
        self.start_time = wall_clock()
        self._monotonic = monotonic
        self._started = monotonic()
        #: (operation, outcome): outcome is "ok", a KMS error code, "timeout" or "unreachable".
        self.kms_requests = Counters()
        #: Seconds per KMS request, by operation (retries of one call included).
        self.kms_latency = Histogram()
        #: ("hit",) or ("miss",): one per account a signing request unlocks.
        self.key_cache_lookups = Counters()
        #: ("admitted",) and the busy refusals: ("busy_workers",), ("busy_memory",),
        #: ("busy_connections",).
        self.server = Counters()
        self._server_load: Callable[[], dict[str, int]] | None = None

    def watch_server(self, load: Callable[[], dict[str, int]]) -> None:
        """The server's gauges (connections, requests in flight), read on each report."""
        self._server_load = load

    def server_snapshot(self) -> dict[str, Any]:
        counts = self.server.snapshot()
        load = self._server_load() if self._server_load is not None else {}
        return {
            "admitted": counts.get(("admitted",), 0),
            "busy": {
                reason: counts.get((f"busy_{reason}",), 0)
                for reason in ("workers", "memory", "connections")
            },
            "connections": load.get("connections", 0),
            "in_flight": load.get("in_flight", 0),
        }

    def uptime(self) -> float:
        return self._monotonic() - self._started

    def kms_snapshot(self) -> dict[str, Any]:
        requests = [
            {"operation": operation, "code": code, "count": count}
            for (operation, code), count in sorted(self.kms_requests.snapshot().items())
        ]
        return {"requests": requests, "latency_seconds": self.kms_latency.snapshot()}


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.5``, ``1.0``, ``10.0``)."""
    return repr(float(bound))
