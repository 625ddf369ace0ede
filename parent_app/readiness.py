"""Readiness: what this host can sign now, for /readyz and the readiness gauges.

Four checks, each ``"ok"`` or the reason it fails:

- ``storage``: the account store reads and takes a durable write (``Storage.ping``,
  whose verdict is cached for two seconds): ``storage_unavailable``, ``storage_error``.
- ``enclave``: the enclave answers ``health``: ``enclave_unavailable``,
  ``enclave_bad_response``, ``not_ok`` (it answered, but not ok), ``timeout``. An enclave
  that answers ``server_busy`` is up (at a bound, not down): ``ok``.
- ``credentials``: the role credentials from IMDS are at hand: ``credentials_unavailable``.
- ``kms``: the enclave's ``kms_probe`` (an attested GenerateDataKey per pinned key,
  exactly as account creation makes one, cached by the enclave for
  ``kms.probe_interval_seconds``): KMS is reachable, takes these credentials, and its key
  policy still releases data keys to this image. The reason is the probe's status
  (``attestation_denied``, ``key_disabled``, ``key_unusable``, ``key_not_found``,
  ``credentials_rejected``, ``throttled``, ``kms_unavailable``, ``kms_bad_response``,
  ``nsm_unavailable``, ``busy``, ``internal_error``, or a status added later), or
  ``key_not_pinned`` (the image does not pin the relay's ``[kms] key_id``: creation
  would fail), ``timeout`` (no probe answer yet within the wait), the code of a failed
  probe call, or ``not_checked`` (the enclave or the credentials failed first).

States, and the HTTP answer of each:

- ``ready`` (200): every check ok.
- ``degraded`` (503): storage, enclave and credentials ok, ``kms`` failing, and the
  enclave holds cached keys: warm signing (accounts used within the key-cache TTL) works,
  nothing cold does (account creation, other accounts).
- ``not_ready`` (503): storage, enclave or credentials fail, or ``kms`` fails with no key
  cached (nothing can sign).
- ``draining`` (503, set by the relay's drain mode; checks still reported).

Why degraded answers 503: a load balancer cannot tell warm from cold requests, so it
should send new work to hosts that can do both; the rolling upgrade waits for 200 and
must never move past a host whose image KMS refuses; and load balancers that find no
healthy target fail open (AWS ALB and NLB route to all targets), so when every host is
degraded at once (a key-policy change) warm signing still reaches them. A client that
calls the host directly is never refused because of the state: its warm requests sign.

Cost: one ``health`` and one ``kms_probe`` call per evaluation (the enclave answers the
probe from its cache, so polling /readyz never turns into KMS load), run as single
flights (``parent_app.single_flight``) with a bounded wait, so /readyz answers within
about ``CHECK_WAIT_SECONDS`` (+ ``CACHE_LEVEL_WAIT_SECONDS`` when it needs the cache
level) even when the enclave hangs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from parent_app.credentials import CredentialSource
from parent_app.enclave_stats import EnclaveStatsSource
from parent_app.errors import EnclaveBadResponse, RelayCode, RelayError
from parent_app.single_flight import SingleFlight
from parent_app.storage import Storage

log = logging.getLogger(__name__)

__all__ = [
    "CHECKS",
    "KmsProbe",
    "ReadinessCollector",
    "ReadinessMonitor",
    "ReadinessReport",
    "State",
    "parse_kms_probe",
]

OK = "ok"
NOT_CHECKED = "not_checked"
TIMEOUT = "timeout"
KEY_NOT_PINNED = "key_not_pinned"
CHECKS = ("storage", "enclave", "credentials", "kms")
#: How long an evaluation waits for the enclave's health and KMS probe answers.
CHECK_WAIT_SECONDS = 2.0
#: How long it then waits for the key-cache level (only when KMS fails).
CACHE_LEVEL_WAIT_SECONDS = 1.0
#: A scrape reuses an evaluation this recent (a /readyz poll's, or the last scrape's).
SCRAPE_MAX_AGE_SECONDS = 5.0
#: The Retry-After of a 503 from /readyz.
RETRY_AFTER_SECONDS = 5
#: A probe status is one of the enclave's stable names (``enclave_app.kms_probe``);
#: the relay takes any name of this form, so a status added later still reads as failing.
_STATUS_RE = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
_MAX_PROBED_KEYS = 64
_MAX_MESSAGE_CHARS = 512
_MAX_KEY_ID_CHARS = 2048


_STRING = {"type": "string"}
_KEY_PROBE_SCHEMA = {
    "type": "object",
    "required": ["key_id", "status", "message"],
    "properties": {"key_id": _STRING, "status": _STRING, "message": _STRING},
    "additionalProperties": False,
}
_KMS_PROBE_SCHEMA = {
    "type": ["object", "null"],
    "description": "The enclave's last attested KMS probe (null when not checked).",
    "required": [
        "status",
        "region",
        "checked_at",
        "age_seconds",
        "interval_seconds",
        "last_ok_at",
        "keys",
    ],
    "properties": {
        "status": _STRING,
        "region": _STRING,
        "checked_at": {"type": "string", "format": "date-time"},
        "age_seconds": {"type": "integer", "minimum": 0},
        "interval_seconds": {"type": "integer", "minimum": 0},
        "last_ok_at": {"type": ["string", "null"], "format": "date-time"},
        "keys": {"type": "array", "minItems": 1, "items": _KEY_PROBE_SCHEMA},
    },
    "additionalProperties": False,
}
#: The /readyz body (parent_app.openapi's ``Readiness`` schema).
OPENAPI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks", "kms"],
    "properties": {
        "status": {"enum": ["ready", "degraded", "not_ready", "draining"]},
        "checks": {
            "type": "object",
            "description": '"ok" or the reason the check fails (docs/api.md, /readyz).',
            "required": list(CHECKS),
            "properties": {name: _STRING for name in CHECKS},
            "additionalProperties": False,
        },
        "kms": _KMS_PROBE_SCHEMA,
        "warm_keys": {
            "type": "integer",
            "minimum": 0,
            "description": "Keys in the enclave's cache; given when the KMS check fails.",
        },
    },
    "additionalProperties": False,
}


class State(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"
    NOT_READY = "not_ready"
    DRAINING = "draining"


@dataclass(frozen=True)
class KeyProbe:
    key_id: str
    status: str
    message: str


@dataclass(frozen=True)
class KmsProbe:
    """A validated ``kms_probe`` answer, stamped with when the relay received it."""

    status: str
    region: str
    keys: tuple[KeyProbe, ...]
    checked_at: float  # Unix seconds, enclave clock: when the probe ran
    age: float  # seconds the enclave had kept the answer when it sent it
    interval: float  # seconds the enclave keeps an answer
    last_ok_at: float | None  # Unix seconds, enclave clock: the last probe that passed
    received: float  # relay monotonic clock

    def reason(self, key_id: str) -> str:
        """``ok``, the failing status, or ``key_not_pinned`` for the relay's key."""
        if self.status != OK:
            return self.status
        if key_id not in {key.key_id for key in self.keys}:
            return KEY_NOT_PINNED
        return OK

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "status": self.status,
            "region": self.region,
            "checked_at": _iso(self.checked_at),
            "age_seconds": round(self.age + max(0.0, now - self.received)),
            "interval_seconds": round(self.interval),
            "last_ok_at": None if self.last_ok_at is None else _iso(self.last_ok_at),
            "keys": [
                {"key_id": key.key_id, "status": key.status, "message": key.message}
                for key in self.keys
            ],
        }


def parse_kms_probe(answer: Mapping[str, Any], received: float) -> KmsProbe:
    """The enclave's ``kms_probe`` answer, validated; ``EnclaveBadResponse`` otherwise."""
    status, region, rows = answer.get("status"), answer.get("region"), answer.get("keys")
    if not isinstance(status, str) or not _STATUS_RE.match(status):
        raise EnclaveBadResponse("enclave kms_probe answer has no valid status")
    if not isinstance(region, str) or not 0 < len(region) <= 64:
        raise EnclaveBadResponse("enclave kms_probe answer has no valid region")
    if not isinstance(rows, list) or not 0 < len(rows) <= _MAX_PROBED_KEYS:
        raise EnclaveBadResponse("enclave kms_probe answer has no valid key list")
    keys = tuple(_key_probe(row) for row in rows)
    last_ok = answer.get("last_ok_at_ms")
    return KmsProbe(
        status=status,
        region=region,
        keys=keys,
        checked_at=_milliseconds(answer.get("checked_at_ms")),
        age=_milliseconds(answer.get("age_ms")),
        interval=_milliseconds(answer.get("interval_ms")),
        last_ok_at=None if last_ok is None else _milliseconds(last_ok),
        received=received,
    )


def _key_probe(row: Any) -> KeyProbe:
    if not isinstance(row, dict):
        raise EnclaveBadResponse("enclave kms_probe answer has a malformed key entry")
    key_id, status, message = row.get("key_id"), row.get("status"), row.get("message")
    if not isinstance(key_id, str) or not 0 < len(key_id) <= _MAX_KEY_ID_CHARS:
        raise EnclaveBadResponse("enclave kms_probe answer has a malformed key id")
    if not isinstance(status, str) or not _STATUS_RE.match(status):
        raise EnclaveBadResponse("enclave kms_probe answer has a malformed key status")
    if not isinstance(message, str):
        raise EnclaveBadResponse("enclave kms_probe answer has a malformed key message")
    return KeyProbe(key_id, status, message[:_MAX_MESSAGE_CHARS])


def _milliseconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise EnclaveBadResponse("enclave kms_probe answer has a malformed time")
    return value / 1000


def _iso(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ReadinessReport:
    state: State
    checks: Mapping[str, str]
    kms: KmsProbe | None = None
    #: Keys in the enclave's cache, when KMS failed (it decides degraded vs not ready).
    warm_keys: int | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def http_status(self) -> int:
        return 200 if self.state is State.READY else 503

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The /readyz body: ``status``, every check with its reason, the KMS probe."""
        now = time.monotonic() if now is None else now
        body: dict[str, Any] = {
            "status": str(self.state),
            "checks": dict(self.checks),
            "kms": None if self.kms is None else self.kms.to_json(now),
        }
        if self.warm_keys is not None:
            body["warm_keys"] = self.warm_keys
        return body


def classify(checks: Mapping[str, str], warm_keys: int | None) -> State:
    """The state of a set of checks (see the module docstring)."""
    if any(checks[name] != OK for name in ("storage", "enclave", "credentials")):
        return State.NOT_READY
    if checks["kms"] != OK:
        return State.DEGRADED if warm_keys else State.NOT_READY
    return State.READY


class ReadinessMonitor:
    """Evaluates the checks; keeps the last report (for scrapes) and the last probe."""

    def __init__(
        self,
        storage: Storage,
        credentials: CredentialSource,
        call: Callable[[str, dict[str, Any]], dict[str, Any]],
        key_id: str,
        stats: EnclaveStatsSource,
        *,
        wait_seconds: float = CHECK_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage
        self._credentials = credentials
        self._key_id = key_id
        self._stats = stats
        self._wait = wait_seconds
        self._clock = clock
        self._health = SingleFlight(lambda: call("health", {}), "readiness-health")
        self._probe = SingleFlight(
            lambda: call("kms_probe", {"credentials": credentials.get().to_params()}),
            "readiness-kms-probe",
        )
        self._lock = threading.Lock()
        self._latest: ReadinessReport | None = None
        self._last_probe: KmsProbe | None = None

    @property
    def last_probe(self) -> KmsProbe | None:
        with self._lock:
            return self._last_probe

    def current(self, max_age: float = SCRAPE_MAX_AGE_SECONDS) -> ReadinessReport:
        """The last report if younger than ``max_age`` seconds, else a new one."""
        with self._lock:
            latest = self._latest
        if latest is not None and self._clock() - latest.at < max_age:
            return latest
        return self.evaluate()

    def evaluate(self) -> ReadinessReport:
        deadline = self._clock() + self._wait
        checks = {
            "storage": _passes(self._storage.ping),
            "credentials": _passes(self._credentials.get),
        }
        health = self._health.future()
        probe = self._probe.future() if checks["credentials"] == OK else None
        checks["enclave"] = self._enclave_check(health.result, deadline)
        kms: KmsProbe | None = None
        if probe is None or checks["enclave"] != OK:
            checks["kms"] = NOT_CHECKED
        else:
            kms, checks["kms"] = self._kms_check(probe.result, deadline)
        warm_keys = None
        if checks["kms"] != OK and all(checks[n] == OK for n in CHECKS[:3]):
            snapshot = self._stats.get(CACHE_LEVEL_WAIT_SECONDS)
            warm_keys = 0 if snapshot is None else snapshot.key_cache_entries
        report = ReadinessReport(
            classify(checks, warm_keys),
            {name: checks[name] for name in CHECKS},
            kms,
            warm_keys,
            self._clock(),
        )
        with self._lock:
            self._latest = report
        return report

    def _enclave_check(self, result: Callable[[float], dict[str, Any]], deadline: float) -> str:
        try:
            health = result(max(0.0, deadline - self._clock()))
        except TimeoutError:
            return TIMEOUT
        except RelayError as exc:
            return OK if exc.code == RelayCode.SERVER_BUSY else exc.code
        return OK if health.get("status") == OK else "not_ok"

    def _kms_check(
        self, result: Callable[[float], dict[str, Any]], deadline: float
    ) -> tuple[KmsProbe | None, str]:
        try:
            answer = result(max(0.0, deadline - self._clock()))
            probe = parse_kms_probe(answer, self._clock())
        except TimeoutError:
            failure = TIMEOUT
        except RelayError as exc:
            failure = exc.code
        else:
            with self._lock:
                self._last_probe = probe
            return probe, probe.reason(self._key_id)
        # This call failed (busy, slow): the enclave's last answer stands while it is
        # still within two of its intervals; after that the failure is the reason.
        last = self.last_probe
        if last is not None and self._clock() - last.received <= 2 * last.interval:
            return last, last.reason(self._key_id)
        return None, failure


def _passes(check: Callable[[], object]) -> str:
    """``ok``, or the code of the ``RelayError`` the check raised."""
    try:
        check()
    except RelayError as exc:
        return exc.code
    return OK


class ReadinessCollector(Collector):
    """``nitro_wallet_relay_readiness{state}``, ``..._readiness_check{check}`` and the KMS
    probe's last success, from an evaluation at most ``SCRAPE_MAX_AGE_SECONDS`` old."""

    def __init__(self, monitor: ReadinessMonitor, draining: Callable[[], bool]) -> None:
        self._monitor = monitor
        self._draining = draining

    def describe(self) -> Iterable[Metric]:
        return list(_families(None, None, draining=False))  # no enclave call at registration

    def collect(self) -> Iterable[Metric]:
        report = self._monitor.current()
        return list(_families(report, self._monitor.last_probe, draining=self._draining()))


def _families(
    report: ReadinessReport | None, probe: KmsProbe | None, *, draining: bool
) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "nitro_wallet_relay_readiness",
        "1 for the relay's readiness state (ready, degraded, not_ready, draining), 0 for "
        "the others; /readyz answers 200 only when ready.",
        labels=("state",),
    )
    check = GaugeMetricFamily(
        "nitro_wallet_relay_readiness_check",
        "1 when a readiness check passes, 0 when it fails or was not checked "
        "(/readyz names the reason).",
        labels=("check",),
    )
    last_ok = GaugeMetricFamily(
        "nitro_wallet_relay_kms_probe_last_success_timestamp_seconds",
        "Unix time (enclave clock) of the last attested KMS probe that passed for every "
        "pinned key.",
        labels=(),
    )
    if report is not None:
        current = State.DRAINING if draining else report.state
        for each in State:
            state.add_metric([str(each)], 1 if each is current else 0)
        for name in CHECKS:
            check.add_metric([name], 1 if report.checks[name] == OK else 0)
    if probe is not None and probe.last_ok_at is not None and math.isfinite(probe.last_ok_at):
        last_ok.add_metric([], probe.last_ok_at)
    return (state, check, last_ok)
