"""Readiness against the real enclave and the simulated KMS, in-process (the relay's
service and enclave client over the enclave rig's sockets, tests/enclave_rig.py): a key
policy that stops allowing the image, a disabled key, an emptied key cache. The probe
interval is one second, so each change must show within about that long."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from prometheus_client.parser import text_string_to_metric_families

from nitro_sim.principals import Principals
from nitro_wallet.key_policy import PCR0, render_key_policy
from parent_app.credentials import Credentials, StaticCredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.errors import RelayError
from parent_app.readiness import ReadinessReport, State
from parent_app.service import WalletService
from parent_app.storage import SqliteStorage
from tests.enclave_rig import (
    ENCLAVE_CID,
    ENCLAVE_PORT,
    IMAGE_PCR0,
    RIG_AUTH,
    EnclaveRig,
    running_rig,
)

PROBE_INTERVAL = 1.0
#: The interval, plus one KMS round trip and the poll step, on a loaded machine.
BOUND = PROBE_INTERVAL + 3.0


@dataclass
class Wired:
    rig: EnclaveRig
    service: WalletService

    def policy(self, pcr0: str) -> None:
        principals = Principals.load(self.rig.root / "state")
        document = render_key_policy(
            mode=PCR0,
            admin_arns=[principals.administrator().arn],
            enclave_arns=[principals.imds_role().arn],
            pcr0s=[pcr0],
        )
        self.rig.admin_kms.put_key_policy(
            KeyId=self.rig.key_arn, PolicyName="default", Policy=json.dumps(document)
        )

    def until(self, wanted: Callable[[ReadinessReport], bool]) -> tuple[ReadinessReport, float]:
        """Poll readiness until ``wanted``; the report and the seconds it took."""
        started = time.monotonic()
        while True:
            report = self.service.readiness()
            elapsed = time.monotonic() - started
            if wanted(report):
                return report, elapsed
            assert elapsed < 30, report
            time.sleep(0.05)


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    with running_rig(probe_interval=PROBE_INTERVAL) as rig:
        storage = SqliteStorage(tmp_path / "accounts.db")
        enclave = EnclaveClient(rig.transport, ENCLAVE_CID, ENCLAVE_PORT, 20.0)
        role = rig.credentials
        access_key, secret_key = role["access_key_id"], role["secret_access_key"]
        assert access_key is not None
        assert secret_key is not None
        credentials = StaticCredentialSource(
            Credentials(access_key, secret_key, role["session_token"])
        )
        try:
            yield Wired(rig, WalletService(storage, enclave, credentials, rig.key_arn))
        finally:
            enclave.close()
            storage.close()


def metric(service: WalletService, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(service.metrics.expose().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def signs(service: WalletService, account: dict[str, str]) -> bool:
    signed = service.sign_message(account["account_id"], "still warm", RIG_AUTH)
    recovered = Account.recover_message(
        encode_defunct(text="still warm"), signature=signed["signature"]
    )
    return bool(recovered == account["address"])


def test_a_policy_that_excludes_the_image_degrades_then_not_ready_then_ready(
    wired: Wired,
) -> None:
    service = wired.service
    # Just after start the enclave's first KMS probe may still be running ("timeout").
    report, elapsed = wired.until(lambda r: r.checks.get("kms") != "timeout")
    assert report.state is State.READY, report
    assert elapsed <= BOUND, elapsed
    account = service.create_account(None, RIG_AUTH)  # its key is now cached: warm

    wired.policy("ab" * 48)  # another image's PCR0 only
    report, elapsed = wired.until(lambda r: r.state is not State.READY)
    assert elapsed <= BOUND, elapsed
    assert report.state is State.DEGRADED
    assert report.checks == {
        "storage": "ok",
        "enclave": "ok",
        "credentials": "ok",
        "kms": "attestation_denied",
    }
    assert report.warm_keys == 1
    assert report.kms is not None
    assert report.kms.keys[0].key_id == wired.rig.key_arn
    assert signs(service, account)  # warm signing works
    with pytest.raises(RelayError) as refused:
        service.create_account(None, RIG_AUTH)  # cold does not
    assert (refused.value.status, refused.value.code) == (403, "kms_attestation_denied")
    assert metric(service, "nitro_wallet_relay_readiness", state="degraded") == 1
    assert metric(service, "nitro_wallet_relay_readiness_check", check="kms") == 0
    denied = metric(
        service,
        "nitro_wallet_enclave_kms_requests_total",
        operation="GenerateDataKey",
        code="AccessDeniedException",
    )
    assert denied is not None
    assert denied >= 1

    wired.rig.forget_keys()  # as after an enclave restart: nothing warm
    report, _ = wired.until(lambda r: r.state is State.NOT_READY)
    assert (report.checks["kms"], report.warm_keys) == ("attestation_denied", 0)
    assert report.to_json()["warm_keys"] == 0

    wired.policy(IMAGE_PCR0.hex())
    report, elapsed = wired.until(lambda r: r.state is State.READY)
    assert elapsed <= BOUND, elapsed
    assert report.kms is not None
    assert report.kms.last_ok_at is not None
    assert metric(service, "nitro_wallet_relay_readiness", state="ready") == 1
    last_ok = metric(service, "nitro_wallet_relay_kms_probe_last_success_timestamp_seconds")
    assert last_ok is not None
    assert abs(last_ok - time.time()) < 30


def test_a_disabled_key_is_named_and_enabling_it_is_ready_again(wired: Wired) -> None:
    service = wired.service
    service.create_account(None, RIG_AUTH)
    wired.rig.admin_kms.disable_key(KeyId=wired.rig.key_arn)
    try:
        report, elapsed = wired.until(lambda r: r.state is not State.READY)
        assert elapsed <= BOUND, elapsed
        assert (report.state, report.checks["kms"]) == (State.DEGRADED, "key_disabled")
    finally:
        wired.rig.admin_kms.enable_key(KeyId=wired.rig.key_arn)
    report, elapsed = wired.until(lambda r: r.state is State.READY)
    assert elapsed <= BOUND, elapsed


def test_the_probe_answer_is_reused_within_the_interval(wired: Wired) -> None:
    """However often readiness is polled, KMS sees one probe per pinned key per interval."""
    wired.until(lambda r: r.state is State.READY)  # the first probe has answered
    wired.rig.gate.reset()
    started = time.monotonic()
    polls = 0
    while time.monotonic() - started < 2.5 * PROBE_INTERVAL:
        assert wired.service.readiness().state is State.READY
        polls += 1
    probes = wired.rig.gate.calls["GenerateDataKey"]
    assert polls > 20
    assert 1 <= probes <= 3, probes  # one per elapsed interval
