"""The enclave's ``stats`` answer as the relay takes it: validated, cached, watched.

The enclave has no port: its ``stats`` op answers its counters (KMS requests by
operation and code with their latency, key-cache lookups and evictions, the recipient
key pool, server admission, the signing policy's denials by rule) and its boot
identity. ``EnclaveStatsSource`` asks for them with a bounded wait (a single flight:
``parent_app.single_flight``) and keeps the answer for a second, so a scrape and a
readiness check in the same second cost one call. It counts enclave restarts: a new
``boot_id`` in an answer is one more restart (several restarts between two answers
count once; the supervisor's journal has each).

The answer is validated as it crosses into the relay: every number a non-negative
integer, every label value from a bounded pattern, every family of bounded size,
histogram buckets ascending and cumulative. An answer that breaks this is refused
whole (``EnclaveBadResponse``) rather than used in part. Fields this module does not
know are ignored, so the enclave can add some; ``policy`` is optional (an image without
the signing policy has none).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from parent_app.errors import EnclaveBadResponse, RelayError
from parent_app.single_flight import SingleFlight

log = logging.getLogger(__name__)

__all__ = ["EnclaveSnapshot", "EnclaveStatsSource", "LatencySeries", "parse_stats"]

#: How long one stats answer serves (a scrape and the readiness checks around it).
STATS_MAX_AGE_SECONDS = 1.0
#: How long a caller waits for the enclave's answer by default.
STATS_WAIT_SECONDS = 2.0
#: Label values the relay accepts from the enclave (KMS operations and error codes,
#: eviction and refusal reasons, policy rule ids: the enclave's ID_PATTERN).
_LABEL_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
_BOOT_ID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")
#: A bucket bound as the enclave writes it (Python's repr of a float) or "+Inf".
_LE_RE = re.compile(r"\A(?:[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|\+Inf)\Z")
#: Series per labelled family, and buckets per histogram: far above what the enclave
#: reports (its label sets are fixed), so only a broken answer reaches them.
MAX_SERIES = 256
MAX_BUCKETS = 64
_MAX_COUNT = 2**63 - 1


@dataclass(frozen=True)
class LatencySeries:
    """One operation's KMS latency: cumulative ``(le, count)`` buckets ending at +Inf."""

    buckets: tuple[tuple[str, int], ...]
    sum_seconds: float


@dataclass(frozen=True)
class EnclaveSnapshot:
    """A validated ``stats`` answer."""

    boot_id: str
    start_time_seconds: float
    kms_requests: Mapping[tuple[str, str], int]  # (operation, code) -> count
    kms_latency: Mapping[str, LatencySeries]  # operation -> histogram
    key_cache_hits: int
    key_cache_misses: int
    key_cache_entries: int
    key_cache_max_entries: int
    key_cache_evictions: Mapping[str, int]  # reason -> count
    recipient_keys_ready: int
    recipient_keys_size: int
    recipient_keys_generated_inline: int
    requests_admitted: int
    requests_refused: Mapping[str, int]  # reason -> count
    connections: int
    requests_in_flight: int
    policy_sha256: str | None = None
    policy_denials: Mapping[str, int] | None = None  # rule -> count


def parse_stats(answer: Mapping[str, Any]) -> EnclaveSnapshot:
    """The enclave's ``stats`` answer, validated; ``EnclaveBadResponse`` otherwise."""
    try:
        return _parse(answer)
    except _MalformedError as exc:
        raise EnclaveBadResponse(f"enclave stats answer refused: {exc}") from None


class EnclaveStatsSource:
    """The enclave's last ``stats`` answer: fetched at most once a ``max_age``, waited
    for at most ``wait`` seconds, and watched for a new boot id."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        max_age: float = STATS_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._flight = SingleFlight(lambda: self._observe(parse_stats(fetch())), "enclave-stats")
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._last: EnclaveSnapshot | None = None
        self._last_at = -math.inf
        self._restarts = 0

    @property
    def restarts(self) -> int:
        """Enclave boots seen after the first one."""
        with self._lock:
            return self._restarts

    def get(self, wait: float = STATS_WAIT_SECONDS) -> EnclaveSnapshot | None:
        """A snapshot at most ``max_age`` old, or None when the enclave gave no valid
        answer within ``wait`` seconds."""
        with self._lock:
            if self._last is not None and self._clock() - self._last_at < self._max_age:
                return self._last
        try:
            return self._flight.result(wait)
        except TimeoutError:
            log.warning("the enclave did not answer stats within %.1f s", wait)
        except RelayError as exc:
            log.warning("enclave stats unavailable: %s", exc)
        return None

    def _observe(self, snapshot: EnclaveSnapshot) -> EnclaveSnapshot:
        with self._lock:
            previous = self._last
            if previous is not None and previous.boot_id != snapshot.boot_id:
                self._restarts += 1
                log.warning(
                    "the enclave restarted (boot %s, started at %.0f): its key cache is "
                    "empty and its counters start from zero",
                    snapshot.boot_id,
                    snapshot.start_time_seconds,
                )
            self._last, self._last_at = snapshot, self._clock()
        return snapshot


# -- parsing ------------------------------------------------------------------------


class _MalformedError(Exception):
    pass


def _parse(answer: Mapping[str, Any]) -> EnclaveSnapshot:
    boot_id = answer.get("boot_id")
    if not isinstance(boot_id, str) or not _BOOT_ID_RE.match(boot_id):
        raise _MalformedError("boot_id must be a lowercase UUID")
    kms = _object(answer, "kms")
    cache = _object(answer, "key_cache")
    pool = _object(answer, "recipient_keys")
    server = _object(answer, "server")
    policy = answer.get("policy")
    sha256, denials = _policy(policy) if policy is not None else (None, None)
    return EnclaveSnapshot(
        boot_id=boot_id,
        start_time_seconds=_count(answer, "start_time_ms") / 1000,
        kms_requests=_kms_requests(kms.get("requests")),
        kms_latency=_latencies(_object(kms, "latency_seconds")),
        key_cache_hits=_count(cache, "hits"),
        key_cache_misses=_count(cache, "misses"),
        key_cache_entries=_count(cache, "entries"),
        key_cache_max_entries=_count(cache, "max_entries"),
        key_cache_evictions=_counts(_object(cache, "evictions"), "key_cache.evictions"),
        recipient_keys_ready=_count(pool, "ready"),
        recipient_keys_size=_count(pool, "size"),
        recipient_keys_generated_inline=_count(pool, "generated_inline"),
        requests_admitted=_count(server, "admitted"),
        requests_refused=_counts(_object(server, "busy"), "server.busy"),
        connections=_count(server, "connections"),
        requests_in_flight=_count(server, "in_flight"),
        policy_sha256=sha256,
        policy_denials=denials,
    )


def _object(parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise _MalformedError(f"{name} must be an object")
    return value


def _count(parent: Mapping[str, Any], name: str) -> int:
    return _integer(parent.get(name), name)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise _MalformedError(f"{name} must be a non-negative integer")
    return value


def _label(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise _MalformedError(f"{name} must match {_LABEL_RE.pattern}")
    return value


def _counts(values: Mapping[str, Any], name: str) -> dict[str, int]:
    if len(values) > MAX_SERIES:
        raise _MalformedError(f"{name} has more than {MAX_SERIES} entries")
    return {_label(key, name): _integer(count, name) for key, count in values.items()}


def _kms_requests(rows: Any) -> dict[tuple[str, str], int]:
    if not isinstance(rows, list) or len(rows) > MAX_SERIES:
        raise _MalformedError(f"kms.requests must be a list of at most {MAX_SERIES} rows")
    found: dict[tuple[str, str], int] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise _MalformedError("kms.requests rows must be objects")
        key = (_label(row.get("operation"), "operation"), _label(row.get("code"), "code"))
        if key in found:
            raise _MalformedError(f"kms.requests repeats {key}")
        found[key] = _count(row, "count")
    return found


def _latencies(series: Mapping[str, Any]) -> dict[str, LatencySeries]:
    if len(series) > MAX_SERIES:
        raise _MalformedError(f"kms.latency_seconds has more than {MAX_SERIES} operations")
    return {
        _label(operation, "operation"): _histogram(value) for operation, value in series.items()
    }


def _histogram(value: Any) -> LatencySeries:
    if not isinstance(value, dict):
        raise _MalformedError("a latency histogram must be an object")
    rows = value.get("buckets")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_BUCKETS:
        raise _MalformedError(f"histogram buckets must be a list of 1 to {MAX_BUCKETS}")
    buckets: list[tuple[str, int]] = []
    bound, running = -math.inf, 0
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)):
            raise _MalformedError("a histogram bucket must be [le, count]")
        le, count = row[0], _integer(row[1], "bucket count")
        if not _LE_RE.match(le):
            raise _MalformedError(f"bucket bound {le[:20]!r} is not a number")
        upper = float(le)
        if not upper > bound or count < running:
            raise _MalformedError("histogram buckets must ascend and be cumulative")
        bound, running = upper, count
        buckets.append((le, count))
    if buckets[-1][0] != "+Inf":
        raise _MalformedError("the last histogram bucket must be +Inf")
    if _count(value, "count") != running:
        raise _MalformedError("a histogram's count must equal its +Inf bucket")
    return LatencySeries(tuple(buckets), _count(value, "sum_us") / 1e6)


def _policy(value: Any) -> tuple[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise _MalformedError("policy must be an object")
    sha256 = value.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise _MalformedError("policy.sha256 must be 64 lowercase hex digits")
    return sha256, _counts(_object(value, "denials"), "policy.denials")
