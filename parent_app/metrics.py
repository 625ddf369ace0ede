"""Prometheus metrics through ``prometheus_client``, one registry per relay (never the
process-wide default registry, so two relays in one process, as in tests, never mix).

Label values are bounded: routes are templates (``/v1/accounts/{account_id}``), never
raw paths, and enclave error codes come from a closed set.

The relay's own instruments are below; ``watch`` adds what is read at scrape time: the
readiness state and checks (``parent_app.readiness``) and the enclave's counters
(``parent_app.enclave_metrics``). The names are listed in docs/operations.md
("Monitoring and alerts"), and monitoring/alerts.yml alerts on them.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from parent_app.enclave_metrics import EnclaveCollector
from parent_app.enclave_stats import EnclaveStatsSource
from parent_app.readiness import ReadinessCollector, ReadinessMonitor

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LabelledCounter:
    """A counter addressed by positional label values: ``inc("sign_transaction")``.

    Each label combination's child is looked up once and kept (label sets are bounded):
    ``prometheus_client``'s ``labels()`` validates and locks on every call."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str]
    ) -> None:
        self._counter = Counter(name, help_text, tuple(labels), registry=registry)
        self._labelled = bool(labels)
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if not self._labelled:
            self._counter.inc(amount)
            return
        child = self._children.get(labels)
        if child is None:
            child = self._children.setdefault(labels, self._counter.labels(*labels))
        child.inc(amount)


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._draining = False
        self.requests = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            "nitro_wallet_relay_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency_by_route: dict[str, Histogram] = {}
        self.in_flight = Gauge(
            "nitro_wallet_relay_http_requests_in_flight",
            "HTTP requests being answered: arrived whole, handler running (at most "
            "max_concurrent_requests).",
            registry=self.registry,
        )
        self.draining = Gauge(
            "nitro_wallet_relay_draining",
            "1 while the relay drains (SIGUSR1 .. SIGUSR2): new requests get 503 draining.",
            registry=self.registry,
        )
        self.enclave_calls = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_enclave_calls_total",
            "Calls to the enclave, by op.",
            ("op",),
        )
        self.enclave_errors = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_enclave_errors_total",
            "Failed calls to the enclave, by op and error code.",
            ("op", "code"),
        )
        self.jsonrpc_requests = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_jsonrpc_requests_total",
            "JSON-RPC requests, by method (unknown/invalid for others) and outcome "
            "(ok or the JSON-RPC error code).",
            ("method", "outcome"),
        )
        self.jsonrpc_batches = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_jsonrpc_batches_total",
            "JSON-RPC batch requests accepted.",
            (),
        )
        self.batch_items = LabelledCounter(
            self.registry,
            "nitro_wallet_relay_batch_items_total",
            "Items of batch signing requests sent to the enclave, by op and outcome "
            "(ok or the item's error code).",
            ("op", "outcome"),
        )

    def set_draining(self, draining: bool) -> None:
        self._draining = draining
        self.draining.set(1 if draining else 0)

    def watch(self, readiness: ReadinessMonitor, enclave: EnclaveStatsSource) -> None:
        """Export the readiness gauges and the enclave's counters, read at each scrape."""
        self.registry.register(ReadinessCollector(readiness, lambda: self._draining))
        self.registry.register(EnclaveCollector(enclave))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc(route, method, str(status))
        histogram = self._latency_by_route.get(route)
        if histogram is None:
            histogram = self._latency_by_route.setdefault(route, self.latency.labels(route))
        histogram.observe(seconds)

    def expose(self) -> bytes:
        return generate_latest(self.registry)
