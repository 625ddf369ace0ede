"""The ``stats`` op: KMS requests by operation and outcome with their latency, key-cache
lookups and evictions, the recipient-key pool, server admission, boot identity. Counted
against the simulated KMS through the real server; the histogram and the cache's
eviction reasons also against a fake clock."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from enclave_app import wire
from enclave_app.key_cache import CacheKey, KeyCache
from enclave_app.server import ServerLimits
from enclave_app.stats import LATENCY_BUCKETS, Histogram, kms_outcome
from nitro_sim.principals import Principals
from nitro_wallet.key_policy import PCR0, render_key_policy
from tests.enclave_rig import EnclaveRig, error_code, read_answer, request_frame, running_rig


@pytest.fixture
def rig() -> Iterator[EnclaveRig]:
    with running_rig(recipient_pool=2, cache_entries=2) as running:
        yield running


def stats(rig: EnclaveRig) -> dict[str, Any]:
    return rig.call("stats")


def kms_counts(answer: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(r["operation"], r["code"]): r["count"] for r in answer["kms"]["requests"]}


def sign(rig: EnclaveRig, account: dict[str, Any]) -> None:
    result = rig.call(
        "sign_message", {"account": account, "credentials": rig.credentials, "message": "m"}
    )
    signer = Account.recover_message(encode_defunct(text="m"), signature=result["signature"])
    assert signer == account["address"]


def test_a_fresh_enclave_reports_its_boot_and_nothing_counted(rig: EnclaveRig) -> None:
    answer = stats(rig)
    assert uuid.UUID(answer["boot_id"]).version == 4
    assert abs(answer["start_time_ms"] / 1000 - time.time()) < 30
    assert 0 <= answer["uptime_ms"] < 30_000
    assert answer["kms"] == {"requests": [], "latency_seconds": {}}
    assert answer["key_cache"] == {
        "hits": 0,
        "misses": 0,
        "entries": 0,
        "max_entries": 2,
        "evictions": {"capacity": 0, "ttl": 0},
    }
    assert answer["recipient_keys"]["size"] == 2
    assert answer["server"]["busy"] == {"workers": 0, "memory": 0, "connections": 0}
    assert answer["server"]["connections"] == 1  # this one
    assert answer["server"]["in_flight"] == 1  # this request
    assert answer["kms_probe"] is None  # never probed
    again = stats(rig)
    assert again["boot_id"] == answer["boot_id"]
    assert again["start_time_ms"] == answer["start_time_ms"]
    assert again["uptime_ms"] >= answer["uptime_ms"]
    assert again["server"]["admitted"] == answer["server"]["admitted"] + 1


def test_kms_requests_cache_lookups_and_evictions_are_counted(rig: EnclaveRig) -> None:
    accounts = [rig.create_account() for _ in range(3)]  # the third evicts the first
    sign(rig, accounts[2])  # hit
    sign(rig, accounts[0])  # miss: Decrypt, and evicts accounts[1]
    batch = rig.call(
        "sign_batch",
        {
            "credentials": rig.credentials,
            "accounts": [accounts[0], accounts[1]],  # hit, miss
            "items": [
                {"op": "sign_message", "account": 0, "message": "a"},
                {"op": "sign_message", "account": 1, "message": "b"},
            ],
        },
    )
    assert all(item["ok"] for item in batch["results"])
    rig.call("kms_probe", {"credentials": rig.credentials})
    answer = stats(rig)
    assert kms_counts(answer) == {("GenerateDataKey", "ok"): 4, ("Decrypt", "ok"): 2}
    assert answer["key_cache"]["hits"] == 2
    assert answer["key_cache"]["misses"] == 2
    assert answer["key_cache"]["entries"] == 2
    assert answer["key_cache"]["evictions"] == {"capacity": 3, "ttl": 0}
    assert answer["kms_probe"]["status"] == "ok"
    latency = answer["kms"]["latency_seconds"]
    assert set(latency) == {"GenerateDataKey", "Decrypt"}
    for operation, count in (("GenerateDataKey", 4), ("Decrypt", 2)):
        series = latency[operation]
        assert series["count"] == count
        assert series["sum_us"] > 0
        assert [le for le, _ in series["buckets"]] == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        counts = [n for _, n in series["buckets"]]
        assert counts == sorted(counts)
        assert counts[-1] == count
    # The recipient-key pool handed out one key per attested call.
    assert answer["recipient_keys"]["size"] == 2


def test_kms_refusals_are_counted_by_their_aws_code(rig: EnclaveRig) -> None:
    account = rig.create_account()
    rig.forget_keys()
    rig.admin_kms.disable_key(KeyId=rig.key_arn)
    assert error_code(lambda: sign(rig, account)) == "kms_unavailable"
    rig.admin_kms.enable_key(KeyId=rig.key_arn)
    principals = Principals.load(rig.root / "state")
    other_image = render_key_policy(
        mode=PCR0,
        admin_arns=[principals.administrator().arn],
        enclave_arns=[principals.imds_role().arn],
        pcr0s=["ab" * 48],
    )
    rig.admin_kms.put_key_policy(
        KeyId=rig.key_arn, PolicyName="default", Policy=json.dumps(other_image)
    )
    assert error_code(lambda: sign(rig, account)) == "kms_attestation_denied"
    assert kms_counts(stats(rig)) == {
        ("GenerateDataKey", "ok"): 1,
        ("Decrypt", "DisabledException"): 1,
        ("Decrypt", "AccessDeniedException"): 1,
    }


def test_busy_refusals_are_counted_by_reason() -> None:
    limits = ServerLimits(workers=1, queue_depth=0, max_connections=2)
    with running_rig(limits=limits) as rig:
        rig.gate.open.clear()  # the next KMS call holds the only worker
        holder = threading.Thread(target=rig.create_account)
        holder.start()
        deadline = time.monotonic() + 10
        while rig.gate.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = rig.connect()
        wire.write_frame(busy, request_frame("health", {}))
        assert read_answer(busy)["error"]["code"] == "server_busy"  # no worker free
        busy.sendall(b"\x00\x00")  # half a header: not idle any more
        refused = rig.connect()  # the third connection: none idle to make room
        assert read_answer(refused)["error"]["code"] == "server_busy"
        refused.close()
        busy.close()
        rig.gate.open.set()
        holder.join(30)
        answer = stats(rig)
        assert answer["server"]["busy"] == {"workers": 1, "memory": 0, "connections": 1}
        assert answer["server"]["admitted"] == 2  # generate_account, and this stats call


def test_the_histogram_is_cumulative_with_prometheus_bucket_labels() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe("Decrypt", value)
    assert histogram.snapshot() == {
        "Decrypt": {
            "buckets": [["0.1", 2], ["1.0", 3], ["+Inf", 4]],
            "count": 4,
            "sum_us": 3_650_000,
        }
    }
    with pytest.raises(ValueError, match="ascending"):
        Histogram((1.0, 0.1))


def test_unknown_kms_codes_cannot_grow_the_label_set() -> None:
    assert kms_outcome("AccessDeniedException") == "AccessDeniedException"
    assert kms_outcome("SomethingNew" * 100) == "other"


def test_the_key_cache_counts_expired_and_displaced_entries_apart() -> None:
    now = [0.0]
    cache: KeyCache[str] = KeyCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    keys = [CacheKey(str(i), bytes([i])) for i in range(4)]
    cache.put(keys[0], "a")
    cache.put(keys[1], "b")
    cache.put(keys[2], "c")  # displaces keys[0]
    now[0] = 10.0
    assert cache.get(keys[1]) is None  # expired on access
    cache.purge_expired()  # keys[2] expired too
    assert cache.evictions() == {"capacity": 1, "ttl": 2}
    assert len(cache) == 0
