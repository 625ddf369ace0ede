"""/readyz and the readiness gauges, on the relay in-process against the framed fake
enclave (``tests.fake_enclave``): each state with its status code, body and gauges, the
bounded wait on a hung enclave, one enclave call however many pollers, the KMS probe's
last answer standing for two intervals, and the body's schema (the OpenAPI document's).

The same states against the real enclave and the simulated KMS are in
tests/test_readiness_enclave.py; through the whole stack of processes in
tests/test_readiness_stack.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_schema_validator import validate as validate_schema
from prometheus_client.parser import text_string_to_metric_families

from parent_app.errors import EnclaveBadResponse
from parent_app.openapi import build_openapi
from parent_app.readiness import CHECK_WAIT_SECONDS, parse_kms_probe
from tests.fake_enclave import (
    KEY_ID,
    FakeEnclave,
    FakeImds,
    HttpAnswer,
    RelayHarness,
    http_call,
    relay_config,
    remove_tree,
    short_tempdir,
)
from tests.stack_helpers import timed_in_parallel

Sample = tuple[str, frozenset[tuple[str, str]]]


class Relay:
    def __init__(self, tmp_path: Path, **relay: Any) -> None:
        self.vsock = short_tempdir()
        self.enclave = FakeEnclave(self.vsock).start()
        self.imds = FakeImds().start()
        config = relay_config(
            vsock_spec=self.enclave.transport_spec,
            imds_endpoint=self.imds.endpoint,
            sqlite_path=tmp_path / "accounts.db",
            **relay,
        )
        self.relay = RelayHarness(config)

    def stop(self) -> None:
        self.relay.stop()
        self.imds.stop()
        self.enclave.stop()
        remove_tree(self.vsock)

    def readyz(self) -> HttpAnswer:
        return http_call(self.relay.port, "GET", "/readyz", timeout=30)

    def scrape(self) -> dict[Sample, float]:
        answer = http_call(self.relay.port, "GET", "/metrics")
        assert answer.status == 200
        samples: dict[Sample, float] = {}
        for family in text_string_to_metric_families(answer.body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    running = Relay(tmp_path)
    yield running
    running.stop()


def readiness_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_openapi()["components"]["schemas"]["Readiness"]
    return schema


def check_body(answer: HttpAnswer) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    validate_schema(
        body, readiness_schema(), cls=OAS31Validator, format_checker=oas31_format_checker
    )
    return body


def gauges(samples: dict[Sample, float], name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: value for (found, labels), value in samples.items() if found == name
    }


def test_ready_names_every_check_and_the_kms_probe(relay: Relay) -> None:
    answer = relay.readyz()
    assert answer.status == 200
    assert "Retry-After" not in answer.headers
    body = check_body(answer)
    assert body["status"] == "ready"
    assert body["checks"] == {"storage": "ok", "enclave": "ok", "credentials": "ok", "kms": "ok"}
    assert body["kms"]["status"] == "ok"
    assert body["kms"]["keys"] == [{"key_id": KEY_ID, "status": "ok", "message": "fake probe"}]
    assert body["kms"]["interval_seconds"] == 30
    assert "warm_keys" not in body
    samples = relay.scrape()
    assert gauges(samples, "nitro_wallet_relay_readiness", "state") == {
        "ready": 1,
        "degraded": 0,
        "not_ready": 0,
        "draining": 0,
    }
    assert set(gauges(samples, "nitro_wallet_relay_readiness_check", "check").values()) == {1}
    last_ok = samples[("nitro_wallet_relay_kms_probe_last_success_timestamp_seconds", frozenset())]
    assert abs(last_ok - time.time()) < 60


@pytest.mark.parametrize(
    "status", ["attestation_denied", "key_disabled", "kms_unavailable", "credentials_rejected"]
)
def test_kms_failing_with_warm_keys_is_degraded(relay: Relay, status: str) -> None:
    relay.enclave.probe_status = status
    relay.enclave.warm_keys = 3
    answer = relay.readyz()
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    body = check_body(answer)
    assert body["status"] == "degraded"
    assert body["checks"] == {"storage": "ok", "enclave": "ok", "credentials": "ok", "kms": status}
    assert body["kms"]["status"] == status
    assert body["kms"]["last_ok_at"] is None
    assert body["warm_keys"] == 3
    samples = relay.scrape()
    assert gauges(samples, "nitro_wallet_relay_readiness", "state")["degraded"] == 1
    assert gauges(samples, "nitro_wallet_relay_readiness_check", "check")["kms"] == 0
    assert ("nitro_wallet_relay_kms_probe_last_success_timestamp_seconds", frozenset()) not in (
        samples
    )


def test_kms_failing_with_no_key_cached_is_not_ready(relay: Relay) -> None:
    relay.enclave.probe_status = "attestation_denied"
    relay.enclave.warm_keys = 0
    answer = relay.readyz()
    assert answer.status == 503
    body = check_body(answer)
    assert (body["status"], body["checks"]["kms"], body["warm_keys"]) == (
        "not_ready",
        "attestation_denied",
        0,
    )
    relay.enclave.probe_status = "ok"
    assert relay.readyz().status == 200


def test_a_relay_key_the_image_does_not_pin_fails_the_kms_check(relay: Relay) -> None:
    relay.enclave.allowed_key_ids = (KEY_ID.replace("1111-2222", "9999-8888"),)
    relay.enclave.warm_keys = 1
    body = check_body(relay.readyz())
    assert (body["status"], body["checks"]["kms"]) == ("degraded", "key_not_pinned")
    assert body["kms"]["status"] == "ok"  # the image's own key is fine; the relay's is not


def test_enclave_down_is_not_ready_and_its_metrics_say_so(relay: Relay) -> None:
    relay.enclave.stop()
    answer = relay.readyz()
    assert answer.status == 503
    body = check_body(answer)
    assert body["status"] == "not_ready"
    assert body["checks"]["enclave"] == "enclave_unavailable"
    assert (body["checks"]["kms"], body["kms"]) == ("not_checked", None)
    samples = relay.scrape()
    assert samples[("nitro_wallet_enclave_up", frozenset())] == 0
    assert not [name for name, _ in samples if name.startswith("nitro_wallet_enclave_kms")]
    assert gauges(samples, "nitro_wallet_relay_readiness", "state")["not_ready"] == 1
    relay.enclave.start()
    assert relay.readyz().status == 200
    assert relay.scrape()[("nitro_wallet_enclave_up", frozenset())] == 1


def test_missing_credentials_are_not_ready_without_a_probe(relay: Relay) -> None:
    relay.imds.stop()
    body = check_body(relay.readyz())
    assert body["status"] == "not_ready"
    assert body["checks"]["credentials"] == "credentials_unavailable"
    assert body["checks"]["kms"] == "not_checked"
    assert "kms_probe" not in relay.enclave.ops()
    relay.imds = FakeImds().start()  # for teardown


def test_a_hung_enclave_gets_answers_in_bounded_time_and_one_call(tmp_path: Path) -> None:
    relay = Relay(tmp_path, enclave_timeout=30)
    try:
        relay.enclave.delay_seconds = 8
        for seconds, answer in timed_in_parallel(relay.readyz, 6):
            assert seconds < CHECK_WAIT_SECONDS + 2, seconds
            assert answer.status == 503
            body = check_body(answer)
            assert (body["status"], body["checks"]["enclave"]) == ("not_ready", "timeout")
        # Six pollers, one health call and one probe in flight (single flights).
        assert relay.enclave.ops().count("health") == 1
        assert relay.enclave.ops().count("kms_probe") == 1
        relay.enclave.delay_seconds = 0
        deadline = time.monotonic() + 20
        while relay.readyz().status != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.2)
    finally:
        relay.enclave.delay_seconds = 0
        relay.stop()


def test_the_last_probe_answer_stands_for_two_intervals_when_a_probe_call_fails(
    relay: Relay,
) -> None:
    relay.enclave.probe_interval_ms = 1000
    assert relay.readyz().status == 200
    relay.enclave.drop_ops = frozenset({"kms_probe"})  # read, then the connection closes
    still = check_body(relay.readyz())
    assert (still["status"], still["checks"]["kms"]) == ("ready", "ok")
    time.sleep(2.2)  # two of the enclave's intervals
    gone = check_body(relay.readyz())
    assert gone["status"] == "not_ready"
    assert gone["checks"]["kms"] == "enclave_unavailable"
    assert gone["kms"] is None


def test_draining_answers_503_and_keeps_the_checks(relay: Relay) -> None:
    api = relay.relay.server.api
    api.set_draining(True)
    try:
        answer = relay.readyz()
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "5"
        body = check_body(answer)
        assert body["status"] == "draining"
        assert set(body["checks"].values()) == {"ok"}
        samples = relay.scrape()
        assert gauges(samples, "nitro_wallet_relay_readiness", "state") == {
            "ready": 0,
            "degraded": 0,
            "not_ready": 0,
            "draining": 1,
        }
        assert samples[("nitro_wallet_relay_draining", frozenset())] == 1
    finally:
        api.set_draining(False)
    assert relay.readyz().status == 200


def test_a_scrape_reuses_a_recent_evaluation(relay: Relay) -> None:
    assert relay.readyz().status == 200
    probes = relay.enclave.ops().count("kms_probe")
    relay.scrape()
    relay.scrape()
    assert relay.enclave.ops().count("kms_probe") == probes  # /readyz's evaluation served


GOOD_PROBE: dict[str, Any] = {
    "status": "ok",
    "region": "us-east-1",
    "keys": [{"key_id": KEY_ID, "status": "ok", "message": "m", "ms": 3}],
    "checked_at_ms": 1_700_000_000_000,
    "age_ms": 1500,
    "interval_ms": 30_000,
    "last_ok_at_ms": 1_700_000_000_000,
}


@pytest.mark.parametrize(
    "change",
    [
        {"status": "OK"},
        {"status": "x" * 65},
        {"status": None},
        {"region": ""},
        {"keys": []},
        {"keys": [{"key_id": KEY_ID, "status": "ok"}]},
        {"keys": [{"key_id": "", "status": "ok", "message": "m"}]},
        {"keys": [{"key_id": KEY_ID, "status": "Denied!", "message": "m"}]},
        {"keys": ["arn"]},
        {"checked_at_ms": -1},
        {"age_ms": 1.5},
        {"interval_ms": True},
        {"last_ok_at_ms": "yesterday"},
    ],
)
def test_malformed_probe_answers_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(EnclaveBadResponse):
        parse_kms_probe({**GOOD_PROBE, **change}, received=0.0)


def test_a_probe_answer_is_read_with_its_age() -> None:
    probe = parse_kms_probe({**GOOD_PROBE, "status": "throttled"}, received=10.0)
    assert probe.reason(KEY_ID) == "throttled"
    assert parse_kms_probe(GOOD_PROBE, received=10.0).reason("arn:other") == "key_not_pinned"
    body = probe.to_json(now=13.0)
    assert body["age_seconds"] == 4  # 1.5 s at the enclave + 3 s since
    assert body["checked_at"] == "2023-11-14T22:13:20Z"
    assert body["keys"] == [{"key_id": KEY_ID, "status": "ok", "message": "m"}]
