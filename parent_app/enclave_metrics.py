"""The enclave's own counters on the relay's /metrics (``EnclaveCollector``).

Read at scrape time from ``parent_app.enclave_stats.EnclaveStatsSource`` (the
enclave's ``stats`` op, validated, at most a second old, waited for a bounded time).
Counters stay counters: they count from the enclave's boot (their ``_created`` is the
enclave's start), so they drop to zero when it restarts, which ``rate()`` and
``increase()`` handle; ``nitro_wallet_relay_enclave_restarts_total`` counts the
restarts the relay saw.

Every family is declared on every scrape, with no samples while the enclave does not
answer: the names exist for rules and dashboards, and a missing enclave shows as
``nitro_wallet_enclave_up == 0``, not as vanished series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from parent_app.enclave_stats import EnclaveSnapshot, EnclaveStatsSource

__all__ = ["EnclaveCollector"]


class EnclaveCollector(Collector):
    """Prometheus families from the enclave's ``stats``, read at scrape time."""

    def __init__(self, source: EnclaveStatsSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return list(_families(None, 0))  # registration must not call the enclave

    def collect(self) -> Iterable[Metric]:
        snapshot = self._source.get()
        return list(_families(snapshot, self._source.restarts))


# -- families -----------------------------------------------------------------------

Read = Callable[[EnclaveSnapshot], float]
ReadByLabel = Callable[[EnclaveSnapshot], Mapping[str, int] | None]

#: Gauges: (name, help, value).
_GAUGES: tuple[tuple[str, str, Read], ...] = (
    (
        "nitro_wallet_enclave_start_time_seconds",
        "Unix time the running enclave started (its own clock).",
        lambda s: s.start_time_seconds,
    ),
    (
        "nitro_wallet_enclave_key_cache_entries",
        "Account keys in the enclave's cache now (warm accounts).",
        lambda s: s.key_cache_entries,
    ),
    (
        "nitro_wallet_enclave_key_cache_max_entries",
        "The bound of the enclave's key cache (enclave.toml key_cache.max_entries).",
        lambda s: s.key_cache_max_entries,
    ),
    (
        "nitro_wallet_enclave_recipient_keys_ready",
        "Attestation RSA keys generated ahead and waiting in the enclave's pool.",
        lambda s: s.recipient_keys_ready,
    ),
    (
        "nitro_wallet_enclave_recipient_keys_pool_size",
        "The size of the enclave's recipient key pool (enclave.toml kms.recipient_key_pool).",
        lambda s: s.recipient_keys_size,
    ),
    (
        "nitro_wallet_enclave_connections",
        "Open connections to the enclave's server.",
        lambda s: s.connections,
    ),
    (
        "nitro_wallet_enclave_requests_in_flight",
        "Requests the enclave is working on now.",
        lambda s: s.requests_in_flight,
    ),
)
#: Counters from the enclave's boot: (name without _total, help, value).
_COUNTERS: tuple[tuple[str, str, Read], ...] = (
    (
        "nitro_wallet_enclave_key_cache_hits",
        "Signing requests whose account key was in the enclave's cache (warm).",
        lambda s: s.key_cache_hits,
    ),
    (
        "nitro_wallet_enclave_key_cache_misses",
        "Signing requests whose account key had to be unlocked through KMS Decrypt (cold).",
        lambda s: s.key_cache_misses,
    ),
    (
        "nitro_wallet_enclave_recipient_keys_generated_inline",
        "Attested KMS calls that found the recipient key pool empty and generated a key "
        "in the request (a cold path slower by one RSA key generation).",
        lambda s: s.recipient_keys_generated_inline,
    ),
    (
        "nitro_wallet_enclave_requests_admitted",
        "Requests the enclave's server admitted.",
        lambda s: s.requests_admitted,
    ),
)
#: Counters by one label: (name without _total, help, label, values by label value).
_COUNTERS_BY_LABEL: tuple[tuple[str, str, str, ReadByLabel], ...] = (
    (
        "nitro_wallet_enclave_key_cache_evictions",
        "Keys dropped from the enclave's cache, by reason (capacity, ttl).",
        "reason",
        lambda s: s.key_cache_evictions,
    ),
    (
        "nitro_wallet_enclave_requests_refused",
        "Requests and connections the enclave refused with server_busy, by the bound "
        "reached (workers, memory, connections).",
        "reason",
        lambda s: s.requests_refused,
    ),
    (
        "nitro_wallet_enclave_policy_denials",
        "Signing requests the enclave's policy refused, by rule id (the deny rule, the "
        "velocity limit, default-deny, principal-scopes, ...); images with the policy only.",
        "rule",
        lambda s: s.policy_denials,
    ),
)


def _families(s: EnclaveSnapshot | None, restarts: int) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "nitro_wallet_enclave_up",
        "1 when the enclave answered the relay's stats call for this scrape, else 0 "
        "(the enclave's other metrics are then absent).",
        value=0 if s is None else 1,
    )
    yield CounterMetricFamily(
        "nitro_wallet_relay_enclave_restarts_total",
        "Enclave restarts the relay saw (a new boot id in a stats answer) since it started.",
        value=restarts,
    )
    created = None if s is None else s.start_time_seconds  # counting since the boot
    for name, text, read in _GAUGES:
        gauge = GaugeMetricFamily(name, text, labels=())
        if s is not None:
            gauge.add_metric([], read(s))
        yield gauge
    for name, text, read in _COUNTERS:
        counter = CounterMetricFamily(name, text, labels=())
        if s is not None:
            counter.add_metric([], read(s), created=created)
        yield counter
    for name, text, label, read_by_label in _COUNTERS_BY_LABEL:
        counter = CounterMetricFamily(name, text, labels=(label,))
        for value, count in sorted(((None if s is None else read_by_label(s)) or {}).items()):
            counter.add_metric([value], count, created=created)
        yield counter
    requests = CounterMetricFamily(
        "nitro_wallet_enclave_kms_requests",
        "KMS requests from the enclave, by operation and code (ok, the AWS error code, "
        "timeout, unreachable, other); the KMS probe's included.",
        labels=("operation", "code"),
    )
    for (operation, code), count in sorted(({} if s is None else s.kms_requests).items()):
        requests.add_metric([operation, code], count, created=created)
    yield requests
    latency = HistogramMetricFamily(
        "nitro_wallet_enclave_kms_request_duration_seconds",
        "Time of the enclave's KMS requests (retries of one call included), by operation.",
        labels=("operation",),
    )
    for operation, series in sorted(({} if s is None else s.kms_latency).items()):
        latency.add_metric([operation], buckets=list(series.buckets), sum_value=series.sum_seconds)
    yield latency
    info = GaugeMetricFamily(
        "nitro_wallet_enclave_policy_info",
        "1, labelled with the SHA-256 of the signing policy the enclave runs.",
        labels=("sha256",),
    )
    if s is not None and s.policy_sha256 is not None:
        info.add_metric([s.policy_sha256], 1)
    yield info
