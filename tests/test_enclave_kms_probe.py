"""The ``kms_probe`` op against the simulated KMS: an attested GenerateDataKey per pinned
key, cached for the probe interval, and a stable status for what a cold unlock would
meet (the key policy no longer allows the image, a disabled key, KMS down or hung,
rejected credentials)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from enclave_app.kms import AttestedKms
from enclave_app.kms_probe import NIL_ACCOUNT_ID, KmsProber
from enclave_app.nsm import SocketNsm
from enclave_app.stats import EnclaveStats
from nitro_sim.principals import Principals
from nitro_sim.stack import free_port
from nitro_wallet.key_policy import PCR0, render_key_policy
from tests.enclave_rig import IMAGE_PCR0, EnclaveRig, error_code, running_rig

INTERVAL = 1.5
OTHER_IMAGE = hashlib.sha384(b"another image").digest()


@pytest.fixture
def rig() -> Iterator[EnclaveRig]:
    with running_rig(kms_timeout=1, probe_interval=INTERVAL) as running:
        yield running


def probe(rig: EnclaveRig, credentials: dict[str, Any] | None = None) -> dict[str, Any]:
    return rig.call("kms_probe", {"credentials": credentials or rig.credentials})


def pin_images(rig: EnclaveRig, *pcr0s: bytes, break_glass: bool = False) -> None:
    """The administrator rewrites the key policy (pcr0 mode) to allow these images
    (``break_glass``: and lets itself schedule the key's deletion)."""
    principals = Principals.load(rig.root / "state")
    admin = principals.administrator().arn
    policy = render_key_policy(
        mode=PCR0,
        admin_arns=[admin],
        enclave_arns=[principals.imds_role().arn],
        pcr0s=[pcr0.hex() for pcr0 in pcr0s],
        break_glass_arns=[admin] if break_glass else [],
    )
    rig.admin_kms.put_key_policy(KeyId=rig.key_arn, PolicyName="default", Policy=json.dumps(policy))


def wait_for_status(rig: EnclaveRig, status: str, within: float) -> tuple[dict[str, Any], float]:
    """Probe until ``status``; the answer and the seconds it took."""
    started = time.monotonic()
    while True:
        answer = probe(rig)
        elapsed = time.monotonic() - started
        if answer["status"] == status or elapsed > within:
            return answer, elapsed
        time.sleep(0.05)


def sign_message(rig: EnclaveRig, account: dict[str, Any]) -> str:
    result = rig.call(
        "sign_message", {"account": account, "credentials": rig.credentials, "message": "ready?"}
    )
    return str(
        Account.recover_message(encode_defunct(text="ready?"), signature=result["signature"])
    )


def kms_audit(rig: EnclaveRig) -> list[dict[str, Any]]:
    lines = (rig.root / "state" / "kms" / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_one_attested_generate_data_key_per_pinned_key_answers_every_caller_for_an_interval(
    rig: EnclaveRig,
) -> None:
    rig.gate.reset()
    first = probe(rig)
    assert first["status"] == "ok"
    assert first["region"] == "us-east-1"
    assert [(key["key_id"], key["status"]) for key in first["keys"]] == [(rig.key_arn, "ok")]
    assert first["interval_ms"] == INTERVAL * 1000
    assert first["last_ok_at_ms"] == first["checked_at_ms"]
    assert abs(first["checked_at_ms"] / 1000 - time.time()) < 5
    # The call went to the key with this image's attestation (it exercises the key
    # policy), bound to the nil account id, which no record has.
    probes = [entry for entry in kms_audit(rig) if entry["op"] == "GenerateDataKey"]
    assert probes[-1]["recipient"] is True
    assert probes[-1]["recipient_pcr0"] == IMAGE_PCR0.hex()
    assert probes[-1]["key_arn"] == rig.key_arn
    assert NIL_ACCOUNT_ID not in json.dumps(first)  # nothing of the data key is answered

    with ThreadPoolExecutor(max_workers=8) as callers:
        answers = list(callers.map(lambda _: probe(rig), range(32)))
    assert {answer["checked_at_ms"] for answer in answers} == {first["checked_at_ms"]}
    assert rig.gate.calls["GenerateDataKey"] == 1

    time.sleep(INTERVAL)
    fresh = probe(rig)
    assert fresh["checked_at_ms"] > first["checked_at_ms"]
    assert fresh["age_ms"] < INTERVAL * 1000
    assert rig.gate.calls["GenerateDataKey"] == 2


def test_a_key_policy_that_excludes_the_image_flips_the_probe_within_one_interval(
    rig: EnclaveRig,
) -> None:
    warm = rig.create_account()
    assert probe(rig)["status"] == "ok"
    pin_images(rig, OTHER_IMAGE)
    changed = time.monotonic()
    answer, _ = wait_for_status(rig, "attestation_denied", within=INTERVAL + 3)
    flipped_after = time.monotonic() - changed
    assert answer["status"] == "attestation_denied", answer
    assert flipped_after <= INTERVAL + 1.0  # one interval, plus one probe's time
    assert answer["keys"][0]["status"] == "attestation_denied"
    assert "key policy does not allow" in answer["keys"][0]["message"]
    assert answer["last_ok_at_ms"] < answer["checked_at_ms"]
    # Degraded, as readiness reports it: a warm key still signs, a cold unlock cannot.
    assert sign_message(rig, warm) == warm["address"]
    rig.forget_keys()
    assert error_code(lambda: sign_message(rig, warm)) == "kms_attestation_denied"

    pin_images(rig, IMAGE_PCR0)
    answer, _ = wait_for_status(rig, "ok", within=INTERVAL + 3)
    assert answer["status"] == "ok"
    assert sign_message(rig, warm) == warm["address"]


def test_a_disabled_key_and_a_key_pending_deletion_are_reported(rig: EnclaveRig) -> None:
    assert probe(rig)["status"] == "ok"
    rig.admin_kms.disable_key(KeyId=rig.key_arn)
    answer, _ = wait_for_status(rig, "key_disabled", within=INTERVAL + 3)
    assert answer["status"] == "key_disabled", answer
    rig.admin_kms.enable_key(KeyId=rig.key_arn)
    assert wait_for_status(rig, "ok", within=INTERVAL + 3)[0]["status"] == "ok"
    pin_images(rig, IMAGE_PCR0, break_glass=True)
    rig.admin_kms.schedule_key_deletion(KeyId=rig.key_arn, PendingWindowInDays=30)
    answer, _ = wait_for_status(rig, "key_unusable", within=INTERVAL + 3)
    assert answer["status"] == "key_unusable", answer


def test_a_hung_kms_is_reported_unavailable_within_the_kms_timeout(rig: EnclaveRig) -> None:
    assert probe(rig)["status"] == "ok"
    time.sleep(INTERVAL)
    rig.gate.open.clear()  # KMS accepts and never answers
    try:
        started = time.monotonic()
        answer = probe(rig)
        took = time.monotonic() - started
    finally:
        rig.gate.open.set()
    assert answer["status"] == "kms_unavailable", answer
    assert "ReadTimeoutError" in answer["keys"][0]["message"]
    assert took < 10  # two attempts of a 1 s timeout, not the 30 s a caller might wait
    assert answer["last_ok_at_ms"] is not None


def test_an_unreachable_kms_and_rejected_credentials_are_told_apart(rig: EnclaveRig) -> None:
    unreachable = AttestedKms(
        SocketNsm(rig.root / "nsm.sock"),
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        allowed_key_ids=(rig.key_arn,),
        timeout_seconds=1,
    )
    answer = KmsProber(unreachable, INTERVAL).probe(
        rig.operations._credentials(rig.credentials)  # the parsed form the op uses
    )
    assert answer["status"] == "kms_unavailable"
    assert "EndpointConnectionError" in answer["keys"][0]["message"]

    forged = {**rig.credentials, "secret_access_key": "x" * 40}
    assert probe(rig, forged)["status"] == "credentials_rejected"


def test_a_probe_in_progress_does_not_hold_other_callers(rig: EnclaveRig) -> None:
    first = probe(rig)
    time.sleep(INTERVAL)
    rig.gate.delay = 1.0
    try:
        with ThreadPoolExecutor(max_workers=2) as callers:
            slow = callers.submit(probe, rig)
            time.sleep(0.3)  # the slow probe holds the KMS call now
            started = time.monotonic()
            meanwhile = probe(rig)
            waited = time.monotonic() - started
            fresh = slow.result()
    finally:
        rig.gate.delay = 0.0
    assert meanwhile["checked_at_ms"] == first["checked_at_ms"]  # the previous answer, at once
    assert waited < 0.5
    assert fresh["checked_at_ms"] > first["checked_at_ms"]


@pytest.mark.parametrize(
    ("op", "params", "message"),
    [
        ("kms_probe", {}, "missing field"),
        ("kms_probe", {"credentials": {"access_key_id": "A"}}, "secret_access_key"),
        ("stats", {"verbose": True}, "unknown field"),
    ],
)
def test_the_readiness_ops_validate_their_params(
    rig: EnclaveRig, op: str, params: dict[str, Any], message: str
) -> None:
    call: Callable[[], object] = lambda: rig.call(op, params)  # noqa: E731
    assert error_code(call) == "invalid_params"
    with pytest.raises(Exception, match=message):
        call()


def test_the_prober_refuses_a_nonpositive_interval(rig: EnclaveRig) -> None:
    with pytest.raises(ValueError, match="positive"):
        KmsProber(rig.kms_client, 0)
    assert EnclaveStats().boot_id != EnclaveStats().boot_id
