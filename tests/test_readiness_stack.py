"""/readyz and /metrics through the whole simulated appliance (processes: KMS, IMDS,
vsock-proxy, the supervised enclave, the relay): a key policy re-rendered without the
running image's PCR0 and applied to the simulated KMS shows within one probe interval
(issue 12's acceptance); KMS stopped is degraded; a killed enclave is not ready, then
ready again under the supervisor and counted as a restart; an unwritable store is not
ready. Each test leaves the stack as it found it."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families

from nitro_sim.stack import LocalStack, http_json
from tests.fs_faults import require_immutable_support, set_immutable
from tests.stack_helpers import create_account, eip1559, sign

pytestmark = pytest.mark.stack

PROBE_INTERVAL = 3
#: One interval, plus a KMS round trip and the poll step on a loaded machine.
BOUND = PROBE_INTERVAL + 3.0
#: Detection (2 s poll) + backoff + an enclave boot, on a loaded CI machine.
RECOVERY_BOUND_SECONDS = 90


@pytest.fixture(scope="module")
def stack_options() -> dict[str, Any]:
    return {"enclave_settings": {"enclave_kms_probe_interval_seconds": PROBE_INTERVAL}}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def readyz(stack: LocalStack) -> tuple[int, dict[str, Any]]:
    return http_json("GET", f"{stack.relay_url}/readyz")


def until(
    stack: LocalStack, wanted: Callable[[int, dict[str, Any]], bool], timeout: float
) -> tuple[dict[str, Any], float]:
    """Poll /readyz until ``wanted(status, body)``; the body and the seconds it took."""
    started = time.monotonic()
    while True:
        status, body = readyz(stack)
        elapsed = time.monotonic() - started
        if wanted(status, body):
            return body, elapsed
        assert elapsed < timeout, (status, body)
        time.sleep(0.1)


def scrape(stack: LocalStack) -> Samples:
    with urllib.request.urlopen(f"{stack.relay_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def signs(stack: LocalStack, account: dict[str, Any], nonce: int) -> None:
    status, signed = sign(stack, account["account_id"], eip1559(nonce))
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]


@pytest.fixture
def warm(stack: LocalStack) -> dict[str, Any]:
    """A fresh account, its key in the enclave's cache, and the stack ready."""
    until(stack, lambda status, _: status == 200, RECOVERY_BOUND_SECONDS)
    account = create_account(stack)
    signs(stack, account, 0)
    return account


def test_a_key_policy_without_this_pcr0_shows_within_one_probe_interval(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    assert stack.measurements is not None
    stack.apply_policy(["ab" * 48])  # re-rendered, validated, applied: another image only
    try:
        body, elapsed = until(stack, lambda _, b: b["status"] != "ready", BOUND + 10)
        assert elapsed <= BOUND, elapsed
        assert body["status"] == "degraded"
        assert body["checks"] == {
            "storage": "ok",
            "enclave": "ok",
            "credentials": "ok",
            "kms": "attestation_denied",
        }
        assert body["kms"]["keys"][0]["key_id"] == stack.key_arn
        assert body["warm_keys"] >= 1
        signs(stack, warm, 1)  # warm signing still works
        status, refused = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
        assert (status, refused["error"]["code"]) == (403, "kms_attestation_denied")
        samples = scrape(stack)
        assert value(samples, "nitro_wallet_relay_readiness", state="degraded") == 1
        assert value(samples, "nitro_wallet_relay_readiness", state="ready") == 0
        assert value(samples, "nitro_wallet_relay_readiness_check", check="kms") == 0
        denied = value(
            samples,
            "nitro_wallet_enclave_kms_requests_total",
            operation="GenerateDataKey",
            code="AccessDeniedException",
        )
        assert denied >= 1
    finally:
        stack.apply_policy([stack.measurements.pcr0])
    _, elapsed = until(stack, lambda status, _: status == 200, BOUND + 10)
    assert elapsed <= BOUND, elapsed
    assert value(scrape(stack), "nitro_wallet_relay_readiness", state="ready") == 1


def test_kms_stopped_is_degraded_and_kms_back_is_ready(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    kms = stack.services["kms"]
    kms.stop()
    try:
        body, elapsed = until(stack, lambda _, b: b["status"] != "ready", BOUND + 10)
        assert elapsed <= BOUND, elapsed
        assert body["status"] == "degraded"
        assert body["checks"]["kms"] == "kms_unavailable"
        signs(stack, warm, 1)  # the cached key needs no KMS
        status, refused = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
        assert status == 503, refused
    finally:
        kms.start()
    until(stack, lambda status, _: status == 200, BOUND + 10)
    signs(stack, create_account(stack), 0)


def test_a_killed_enclave_is_not_ready_then_ready_and_counted(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    before = scrape(stack)
    assert value(before, "nitro_wallet_enclave_up") == 1
    restarts = value(before, "nitro_wallet_relay_enclave_restarts_total")
    started = value(before, "nitro_wallet_enclave_start_time_seconds")
    record = stack.enclave_record()
    assert record is not None
    os.kill(record["EnclaveProcessID"], signal.SIGKILL)
    body, _ = until(stack, lambda _, b: b["status"] == "not_ready", 30)
    assert body["checks"]["enclave"] in ("enclave_unavailable", "timeout")
    assert body["checks"]["kms"] == "not_checked"
    down = scrape(stack)
    if value(down, "nitro_wallet_enclave_up") == 0:  # unless already back
        assert ("nitro_wallet_enclave_start_time_seconds", frozenset()) not in down

    body, _ = until(stack, lambda status, _: status == 200, RECOVERY_BOUND_SECONDS)
    assert body["status"] == "ready"
    after = scrape(stack)
    assert value(after, "nitro_wallet_enclave_up") == 1
    assert value(after, "nitro_wallet_relay_enclave_restarts_total") == restarts + 1
    assert value(after, "nitro_wallet_enclave_start_time_seconds") > started
    assert value(after, "nitro_wallet_enclave_key_cache_entries") == 0  # every key cold
    signs(stack, warm, 1)  # a cold unlock through KMS again


def test_an_unwritable_store_is_not_ready(stack: LocalStack, warm: dict[str, Any]) -> None:
    require_immutable_support(stack.relay_db.parent)
    set_immutable(stack.relay_db, True)
    try:
        body, _ = until(stack, lambda _, b: b["status"] == "not_ready", 30)
        assert body["checks"]["storage"] == "storage_unavailable"
        assert value(scrape(stack), "nitro_wallet_relay_readiness_check", check="storage") == 0
    finally:
        set_immutable(stack.relay_db, False)
    until(stack, lambda status, _: status == 200, 30)
