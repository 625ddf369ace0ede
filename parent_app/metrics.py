"""Prometheus metrics, exposed in the text format 0.0.4 (written here, no client library).

Label values are bounded: routes are templates (``/v1/accounts/{account_id}``), never
raw paths, and enclave error codes come from a closed set.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def expose(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        # per label set: bucket counts (non-cumulative), sum, count
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}")
        with self._lock:
            counts, totals = self._series.setdefault(
                labels, ([0] * (len(self.buckets) + 1), [0.0, 0.0])
            )
            index = next((i for i, bound in enumerate(self.buckets) if value <= bound), -1)
            counts[index] += 1
            totals[0] += value
            totals[1] += 1

    def expose(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((labels, (list(c), list(t))) for labels, (c, t) in self._series.items())
        names = (*self.label_names, "le")
        for labels, (counts, (total, count)) in items:
            cumulative = 0
            for bound, bucket in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += bucket
                label_text = _labels(names, (*labels, _number(bound)))
                lines.append(f"{self.name}_bucket{label_text} {cumulative}")
            base = _labels(self.label_names, labels)
            lines.append(f"{self.name}_sum{base} {_number(total)}")
            lines.append(f"{self.name}_count{base} {_number(count)}")
        return lines


class RelayMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "nitro_wallet_relay_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            "nitro_wallet_relay_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ("route",),
        )
        self.enclave_calls = Counter(
            "nitro_wallet_relay_enclave_calls_total",
            "Calls to the enclave, by op.",
            ("op",),
        )
        self.enclave_errors = Counter(
            "nitro_wallet_relay_enclave_errors_total",
            "Failed calls to the enclave, by op and error code.",
            ("op", "code"),
        )
        self.jsonrpc_requests = Counter(
            "nitro_wallet_relay_jsonrpc_requests_total",
            "JSON-RPC requests, by method (unknown/invalid for others) and outcome "
            "(ok or the JSON-RPC error code).",
            ("method", "outcome"),
        )
        self.jsonrpc_batches = Counter(
            "nitro_wallet_relay_jsonrpc_batches_total",
            "JSON-RPC batch requests accepted.",
            (),
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc(route, method, str(status))
        self.latency.observe(seconds, route)

    def expose(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.enclave_calls,
            self.enclave_errors,
            self.jsonrpc_requests,
            self.jsonrpc_batches,
        ):
            lines.extend(metric.expose())
        return "\n".join(lines) + "\n"
