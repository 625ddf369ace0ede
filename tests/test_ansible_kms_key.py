"""The KMS key and its policy through the real playbooks (kms_key.yml, key_policy.yml) against
the simulated KMS: the key is created with rotation and an admin-only policy, a disabled key
or one pending deletion stops the play and stays as it is, the policy comes from the
measurements pinned in the inventory, and a sealed policy is applied once (lockout safety
check bypassed) and never rewritten."""

# ruff: noqa: F811 - test arguments are the fixtures imported below
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from nitro_sim.kms import KmsServer
from nitro_sim.principals import Principals
from nitro_wallet.key_policy import validate_key_policy
from tests.ansible_runner import PlaybookRun, local_inventory, run_playbook
from tests.test_sim_kms import (  # noqa: F401 - pytest fixtures by name
    REGION,
    admin,
    error_code,
    kms,
    principals,
    state,
)

pytestmark = [pytest.mark.process, pytest.mark.usefixtures("kms")]  # ansible-playbook runs

ALIAS = "alias/nitro-wallet"
PCR0_OLD, PCR0_NEW = "a1" * 48, "b2" * 48
PCR8_RELEASE, PCR8_OTHER = "c3" * 48, "d4" * 48


def run(
    playbook: str,
    tmp_path: Path,
    kms: KmsServer,
    principals: Principals,
    **pins: Any,
) -> PlaybookRun:
    creds = principals.admin_credentials()
    inventory = local_inventory(
        tmp_path / "inventory.json",
        kms_key_policy_credentials="aws",
        kms_key_policy_endpoint_url=kms.url,
        kms_key_policy_region=REGION,
        kms_key_policy_admin_arns=[principals.administrator().arn],
        kms_key_policy_enclave_arns=[principals.imds_role().arn],
        kms_key_policy_artifact_dir=str(tmp_path / "artifacts"),
    )
    return run_playbook(
        f"playbooks/{playbook}",
        inventory,
        tmp_path,
        extra=pins or None,
        env={
            "AWS_ACCESS_KEY_ID": creds.access_key_id,
            "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
            "AWS_SESSION_TOKEN": creds.session_token or "",
        },
    )


def key_arn(admin: Any) -> str:
    arn: str = admin.describe_key(KeyId=ALIAS)["KeyMetadata"]["Arn"]
    return arn


def applied(admin: Any) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(
        admin.get_key_policy(KeyId=key_arn(admin), PolicyName="default")["Policy"]
    )
    return policy


def test_new_key_is_created_with_rotation_and_an_admin_only_policy(
    tmp_path: Path, kms: KmsServer, principals: Principals, admin: Any
) -> None:
    result = run("kms_key.yml", tmp_path, kms, principals)
    assert result.ok, result.output[-4000:]
    arn = key_arn(admin)
    assert f"KMS key {ALIAS}: {arn}" in result.output
    assert admin.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"] is True
    assert applied(admin)["Id"] == "nitro-wallet-initial-key-policy"
    again = run("kms_key.yml", tmp_path, kms, principals)
    assert again.ok, again.output[-4000:]
    assert key_arn(admin) == arn  # found, not created twice


@pytest.mark.parametrize("emergency", ["disable", "schedule_deletion"])
def test_disabled_key_is_never_re_enabled(
    tmp_path: Path, kms: KmsServer, principals: Principals, admin: Any, emergency: str
) -> None:
    """disabled_key_comes_back: after an emergency DisableKey or ScheduleKeyDeletion, the key
    play and the policy play both stop with a clear message and leave the key as it is."""
    assert run("kms_key.yml", tmp_path, kms, principals).ok
    arn = key_arn(admin)
    if emergency == "disable":
        admin.disable_key(KeyId=arn)
        expected_state, message = "Disabled", "is Disabled"
    else:
        admin.schedule_key_deletion(KeyId=arn, PendingWindowInDays=30)
        expected_state, message = "PendingDeletion", "is PendingDeletion, deletion scheduled for"
    for playbook, pins in (
        ("kms_key.yml", {}),
        (
            "key_policy.yml",
            {"nitro_wallet_trusted_pcr0s": [PCR0_NEW], "kms_key_policy_apply": True},
        ),
    ):
        result = run(playbook, tmp_path, kms, principals, **pins)
        assert not result.ok, playbook
        assert message in result.output, result.output[-4000:]
        assert "never undoes it" in result.output
        assert admin.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == expected_state


def test_pcr0_policy_comes_from_the_pinned_measurements(
    tmp_path: Path, kms: KmsServer, principals: Principals, admin: Any
) -> None:
    assert run("kms_key.yml", tmp_path, kms, principals).ok
    pins = {
        "nitro_wallet_key_policy_mode": "pcr0",
        "nitro_wallet_trusted_pcr0s": [PCR0_OLD, PCR0_NEW],
        "kms_key_policy_apply": True,
    }
    result = run("key_policy.yml", tmp_path, kms, principals, **pins)
    assert result.ok, result.output[-4000:]
    summary = validate_key_policy(applied(admin), allow_debug=False)
    assert sorted(summary.pcr0s) == sorted([PCR0_OLD, PCR0_NEW])
    assert "kms:PutKeyPolicy" in result.output  # the validator's warning, printed
    saved = json.loads((tmp_path / "artifacts/kms-key-policy.json").read_text())
    assert saved == applied(admin)


def test_sealed_policy_is_applied_once_and_never_rewritten(
    tmp_path: Path, kms: KmsServer, principals: Principals, admin: Any
) -> None:
    """Sealed: nobody holds PutKeyPolicy, so it is applied with the lockout safety check
    bypassed, on purpose, exactly once; a re-run is a no-op; another trust root is refused
    with a message instead of an AccessDenied."""
    assert run("kms_key.yml", tmp_path, kms, principals).ok
    pins = {
        "nitro_wallet_key_policy_mode": "sealed",
        "nitro_wallet_trusted_pcr8s": [PCR8_RELEASE],
        "kms_key_policy_apply": True,
    }
    first = run("key_policy.yml", tmp_path, kms, principals, **pins)
    assert first.ok, first.output[-4000:]
    summary = validate_key_policy(applied(admin), allow_debug=False)
    assert summary.mode == "sealed"
    assert summary.pcr8s == [PCR8_RELEASE]
    again = run("key_policy.yml", tmp_path, kms, principals, **pins)
    assert again.ok, again.output[-4000:]
    with pytest.raises(ClientError) as denied:
        admin.put_key_policy(
            KeyId=key_arn(admin),
            PolicyName="default",
            Policy=json.dumps(applied(admin)),
            BypassPolicyLockoutSafetyCheck=True,
        )
    assert error_code(denied) == "AccessDeniedException"
    other_pins = {**pins, "nitro_wallet_trusted_pcr8s": [PCR8_OTHER]}
    other = run("key_policy.yml", tmp_path, kms, principals, **other_pins)
    assert not other.ok
    assert "The key's policy is sealed" in other.output
    assert validate_key_policy(applied(admin), allow_debug=False).pcr8s == [PCR8_RELEASE]
