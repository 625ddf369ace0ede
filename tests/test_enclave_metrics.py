"""The enclave's ``stats`` on the relay's /metrics: what the real enclave counts (the
in-process enclave over the simulated KMS, tests/enclave_rig.py) comes out under the
names monitoring/alerts.yml uses, with the same values; restarts are counted by boot id;
malformed answers are refused whole; one bounded call per scrape, never at registration."""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from parent_app.enclave_metrics import EnclaveCollector
from parent_app.enclave_stats import EnclaveStatsSource, parse_stats
from parent_app.errors import EnclaveBadResponse, EnclaveUnavailable
from tests.enclave_rig import EnclaveRig, running_rig
from tests.stack_helpers import timed_in_parallel

Sample = tuple[str, frozenset[tuple[str, str]]]


def exposition(source: EnclaveStatsSource) -> dict[Sample, float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(EnclaveCollector(source))
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def declared(source: EnclaveStatsSource) -> set[str]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(EnclaveCollector(source))
    return {
        family.name for family in text_string_to_metric_families(generate_latest(registry).decode())
    }


def sample(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def sign(rig: EnclaveRig, account: dict[str, Any]) -> None:
    result = rig.call(
        "sign_message", {"account": account, "credentials": rig.credentials, "message": "m"}
    )
    assert (
        Account.recover_message(encode_defunct(text="m"), signature=result["signature"])
        == (account["address"])
    )


def test_the_real_enclaves_counters_come_out_under_the_alert_names() -> None:
    with running_rig(recipient_pool=2, cache_entries=2) as rig:
        accounts = [rig.create_account() for _ in range(3)]  # the third evicts the first
        sign(rig, accounts[2])  # hit
        sign(rig, accounts[0])  # miss: Decrypt
        rig.call("kms_probe", {"credentials": rig.credentials})
        raw = rig.call("stats")
        samples = exposition(EnclaveStatsSource(lambda: raw))
    assert sample(samples, "nitro_wallet_enclave_up") == 1
    assert sample(samples, "nitro_wallet_relay_enclave_restarts_total") == 0
    assert sample(samples, "nitro_wallet_enclave_start_time_seconds") == raw["start_time_ms"] / 1000
    for row in raw["kms"]["requests"]:
        labels = {"operation": row["operation"], "code": row["code"]}
        assert sample(samples, "nitro_wallet_enclave_kms_requests_total", **labels) == row["count"]
        created = sample(samples, "nitro_wallet_enclave_kms_requests_created", **labels)
        assert created == raw["start_time_ms"] / 1000  # counting since the enclave's boot
    assert {(r["operation"], r["code"]) for r in raw["kms"]["requests"]} == {
        ("GenerateDataKey", "ok"),
        ("Decrypt", "ok"),
    }
    for operation, series in raw["kms"]["latency_seconds"].items():
        for le, count in series["buckets"]:
            assert (
                sample(
                    samples,
                    "nitro_wallet_enclave_kms_request_duration_seconds_bucket",
                    operation=operation,
                    le=le,
                )
                == count
            )
        name = "nitro_wallet_enclave_kms_request_duration_seconds"
        assert sample(samples, f"{name}_count", operation=operation) == series["count"]
        assert sample(samples, f"{name}_sum", operation=operation) == pytest.approx(
            series["sum_us"] / 1e6
        )
    cache = raw["key_cache"]
    assert (cache["hits"], cache["misses"]) == (1, 1)
    assert sample(samples, "nitro_wallet_enclave_key_cache_hits_total") == 1
    assert sample(samples, "nitro_wallet_enclave_key_cache_misses_total") == 1
    assert sample(samples, "nitro_wallet_enclave_key_cache_entries") == cache["entries"] == 2
    assert sample(samples, "nitro_wallet_enclave_key_cache_max_entries") == 2
    for reason, count in cache["evictions"].items():
        assert (
            sample(samples, "nitro_wallet_enclave_key_cache_evictions_total", reason=reason)
            == count
        )
    assert cache["evictions"]["capacity"] == 2
    pool = raw["recipient_keys"]
    assert sample(samples, "nitro_wallet_enclave_recipient_keys_pool_size") == pool["size"] == 2
    assert sample(samples, "nitro_wallet_enclave_recipient_keys_ready") == pool["ready"]
    server = raw["server"]
    assert sample(samples, "nitro_wallet_enclave_requests_admitted_total") == server["admitted"]
    for reason in ("workers", "memory", "connections"):
        assert sample(samples, "nitro_wallet_enclave_requests_refused_total", reason=reason) == 0
    assert sample(samples, "nitro_wallet_enclave_requests_in_flight") == 1  # the stats call


def test_every_family_is_declared_while_the_enclave_does_not_answer() -> None:
    def down() -> Mapping[str, Any]:
        raise EnclaveUnavailable("cannot connect to the enclave")

    source = EnclaveStatsSource(down)
    samples = exposition(source)
    assert samples == {
        ("nitro_wallet_enclave_up", frozenset()): 0,
        ("nitro_wallet_relay_enclave_restarts_total", frozenset()): 0,
    }
    assert {
        "nitro_wallet_enclave_kms_requests",
        "nitro_wallet_enclave_kms_request_duration_seconds",
        "nitro_wallet_enclave_key_cache_hits",
        "nitro_wallet_enclave_key_cache_misses",
        "nitro_wallet_enclave_key_cache_evictions",
        "nitro_wallet_enclave_key_cache_entries",
        "nitro_wallet_enclave_start_time_seconds",
        "nitro_wallet_enclave_policy_denials",
    } <= declared(source)


def fake_answer(boot_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """A stats answer of the real shape (tests/test_enclave_stats.py checks the enclave's)."""
    answer: dict[str, Any] = {
        "boot_id": boot_id or str(uuid.uuid4()),
        "start_time_ms": 1_700_000_000_000,
        "uptime_ms": 5000,
        "kms": {
            "requests": [{"operation": "Decrypt", "code": "AccessDeniedException", "count": 4}],
            "latency_seconds": {
                "Decrypt": {
                    "buckets": [["0.1", 1], ["1.0", 3], ["+Inf", 4]],
                    "count": 4,
                    "sum_us": 2_500_000,
                },
            },
        },
        "key_cache": {
            "hits": 7,
            "misses": 4,
            "entries": 3,
            "max_entries": 100,
            "evictions": {"capacity": 0, "ttl": 1},
        },
        "recipient_keys": {"ready": 8, "size": 8, "generated_inline": 0},
        "server": {
            "admitted": 20,
            "busy": {"workers": 1, "memory": 0, "connections": 0},
            "connections": 2,
            "in_flight": 1,
        },
        "kms_probe": None,
    }
    answer.update(changes)
    return answer


def test_policy_denials_are_exported_by_rule() -> None:
    sha = "ab" * 32
    answer = fake_answer(
        policy={
            "sha256": sha,
            "rules": 4,
            "limits": 1,
            "denials": {"max-value": 3, "default-deny": 1},
        }
    )
    samples = exposition(EnclaveStatsSource(lambda: answer))
    assert sample(samples, "nitro_wallet_enclave_policy_denials_total", rule="max-value") == 3
    assert sample(samples, "nitro_wallet_enclave_policy_denials_total", rule="default-deny") == 1
    assert sample(samples, "nitro_wallet_enclave_policy_info", sha256=sha) == 1
    without = exposition(EnclaveStatsSource(fake_answer))  # an image without the policy
    assert not [name for name, _ in without if name.startswith("nitro_wallet_enclave_policy")]


def test_a_new_boot_id_is_one_restart(caplog: pytest.LogCaptureFixture) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    answers = iter([first, first, second, second, first])
    source = EnclaveStatsSource(lambda: fake_answer(next(answers)), max_age=0)
    with caplog.at_level(logging.WARNING, logger="parent_app.enclave_stats"):
        counts = []
        for _ in range(5):
            assert source.get() is not None
            counts.append(source.restarts)
    assert counts == [0, 0, 1, 1, 2]
    assert caplog.text.count("the enclave restarted") == 2


def _broken(path: str, value: Any) -> dict[str, Any]:
    answer = fake_answer()
    target = answer
    *parents, leaf = path.split(".")
    for name in parents:
        target = target[name]
    target[leaf] = value
    return answer


BAD_HISTOGRAM = {"buckets": [["1.0", 3], ["0.1", 4], ["+Inf", 4]], "count": 4, "sum_us": 1}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("boot_id", "not-a-uuid"),
        ("boot_id", str(uuid.uuid4()).upper()),
        ("start_time_ms", -1),
        ("key_cache.hits", True),
        ("key_cache.hits", 1.5),
        ("key_cache.misses", None),
        ("key_cache.evictions", {"capa city": 1}),
        ("key_cache.evictions", {f"r{i}": 1 for i in range(257)}),
        ("server.busy", []),
        ("kms.requests", [{"operation": "Decrypt", "code": "x" * 65, "count": 1}]),
        ("kms.requests", [{"operation": "Decrypt", "code": "ok", "count": -3}]),
        ("kms.requests", [{"operation": "Decrypt", "code": "ok", "count": 1}] * 2),
        ("kms.latency_seconds.Decrypt", BAD_HISTOGRAM),
        ("kms.latency_seconds.Decrypt", {**BAD_HISTOGRAM, "buckets": [["0.1", 4], ["1.0", 3]]}),
        ("kms.latency_seconds.Decrypt", {"buckets": [["+Inf", 4]], "count": 5, "sum_us": 1}),
        (
            "kms.latency_seconds.Decrypt",
            {"buckets": [["0.1", 1], ["inf", 4]], "count": 4, "sum_us": 1},
        ),
        (
            "kms.latency_seconds.Decrypt",
            {"buckets": [[" 1 ", 1], ["+Inf", 1]], "count": 1, "sum_us": 1},
        ),
        ("kms.latency_seconds.Decrypt", {"buckets": [], "count": 0, "sum_us": 0}),
        ("policy", {"sha256": "AB" * 32, "denials": {}}),
        ("policy", {"sha256": "ab" * 32, "denials": {"rule with spaces": 1}}),
        ("recipient_keys", None),
    ],
)
def test_malformed_stats_are_refused_whole(path: str, value: Any) -> None:
    answer = _broken(path, value)
    with pytest.raises(EnclaveBadResponse):
        parse_stats(answer)
    samples = exposition(EnclaveStatsSource(lambda: answer))
    assert sample(samples, "nitro_wallet_enclave_up") == 0
    assert len(samples) == 2  # up and the relay's restart counter, nothing in part


def test_the_real_shape_parses() -> None:
    parsed = parse_stats(fake_answer())
    assert parsed.kms_latency["Decrypt"].buckets == (("0.1", 1), ("1.0", 3), ("+Inf", 4))
    assert parsed.kms_latency["Decrypt"].sum_seconds == 2.5
    unknown = fake_answer(future_field={"anything": [1, 2]})
    assert parse_stats(unknown).key_cache_hits == 7  # fields added later are ignored
    assert parse_stats(copy.deepcopy(fake_answer(policy=None))).policy_denials is None


def test_one_bounded_call_however_many_scrapes_wait() -> None:
    release = threading.Event()
    calls: list[float] = []

    def slow() -> Mapping[str, Any]:
        calls.append(time.monotonic())
        release.wait(30)
        return fake_answer()

    source = EnclaveStatsSource(slow)
    results = timed_in_parallel(lambda: source.get(wait=0.3), 5)
    assert all(snapshot is None and seconds < 2 for seconds, snapshot in results)
    assert len(calls) == 1
    release.set()
    deadline = time.monotonic() + 5
    while source.get(wait=1) is None:
        assert time.monotonic() < deadline
    assert len(calls) == 1  # the call in flight finished; its answer serves
    assert source.get() is not None
    assert len(calls) == 1  # within max_age: no new call


def test_registering_the_collector_never_calls_the_enclave() -> None:
    def never() -> Mapping[str, Any]:
        raise AssertionError("called at registration")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(EnclaveCollector(EnclaveStatsSource(never)))


def test_an_enclave_restart_counts_through_the_relay() -> None:
    """A restarted enclave (a new process: a new boot id) counts once on the relay."""
    enclaves: list[EnclaveRig] = []

    def latest_stats() -> Mapping[str, Any]:
        return enclaves[-1].call("stats")

    source = EnclaveStatsSource(latest_stats, max_age=0)
    with running_rig() as rig:
        enclaves.append(rig)
        assert source.get() is not None
        assert source.get() is not None
        with running_rig() as again:  # another enclave process, as after a restart
            enclaves.append(again)
            assert source.get() is not None
    assert source.restarts == 1
