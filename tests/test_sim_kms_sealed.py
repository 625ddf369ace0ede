"""The rendered key policy (nitro_wallet.key_policy) against the simulated KMS, through
boto3, with attestation documents from the simulated NSM.

Sealed mode: the policy goes on only with the lockout safety check bypassed (AWS's own
MalformedPolicyDocumentException otherwise); afterwards the administrator can neither
rewrite it nor schedule the key's deletion; an image signed with another certificate
(or unsigned, or in debug mode) gets no data key; a new release signed with the release
certificate decrypts existing ciphertexts with no policy change.
pcr0 mode: deletion only by the break-glass principal and never with a window under 30
days, and the warned weakness holds: administrators can rewrite the lock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from nitro_sim.kms import KmsServer
from nitro_sim.principals import PRINCIPALS_FILE, Principal, Principals, write_private_file
from nitro_wallet.key_policy import render_key_policy, validate_key_policy
from tests.test_sim_kms import (  # the fixtures run on this module's `state`
    CONTEXT,
    Enclave,
    admin,
    client,
    error_code,
    kms,
    principals,
    role,
)

__all__ = ["admin", "kms", "principals", "role"]

RELEASE_PCR8 = hashlib.sha384(b"release signing certificate").digest()
OTHER_PCR8 = hashlib.sha384(b"somebody else's certificate").digest()
V1 = hashlib.sha384(b"nitro-wallet 1.0").digest()
V2 = hashlib.sha384(b"nitro-wallet 1.1").digest()
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A simulated account with a third principal: the break-glass role of pcr0 mode."""
    directory = tmp_path / "state"
    directory.mkdir()
    base = Principals.create()
    glass = Principal(
        arn=f"arn:aws:iam::{base.account_id}:role/nitro-wallet-break-glass",
        access_key_id="AKIA" + "BREAKGLASSBREAKG",
        secret_access_key="break-glass-secret-" + "x" * 21,
        session_token=None,
        imds_role=False,
        administrator=False,
    )
    principals = Principals(base.account_id, base.region, [*base.principals, glass])
    write_private_file(directory / PRINCIPALS_FILE, json.dumps(principals.to_json()).encode())
    return directory


@pytest.fixture
def glass(kms: KmsServer, principals: Principals) -> Any:
    (principal,) = [p for p in principals.principals if p.arn.endswith("break-glass")]
    return client(kms.url, principal.credentials)


def sealed_policy(principals: Principals, pcr0s: list[bytes] | None = None) -> str:
    policy = render_key_policy(
        admin_arns=[principals.administrator().arn],
        enclave_arns=[principals.imds_role().arn],
        pcr8s=[RELEASE_PCR8.hex()],
        pcr0s=[p.hex() for p in pcr0s or []],
    )
    assert validate_key_policy(policy, mode="sealed").pcr8s == [RELEASE_PCR8.hex()]
    return json.dumps(policy)


def sealed_key(admin: Any, principals: Principals, pcr0s: list[bytes] | None = None) -> str:
    """As the role applies it: created admin-only, then sealed once, bypass on purpose."""
    key_id = str(admin.create_key(Description="wallet")["KeyMetadata"]["KeyId"])
    admin.put_key_policy(
        KeyId=key_id, Policy=sealed_policy(principals, pcr0s), BypassPolicyLockoutSafetyCheck=True
    )
    return key_id


def data_key(role: Any, key_id: str, enclave: Enclave) -> tuple[bytes, bytes]:
    answer = role.generate_data_key(
        KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT, Recipient=enclave.recipient()
    )
    return enclave.unwrap(answer["CiphertextForRecipient"]), answer["CiphertextBlob"]


def decrypt(role: Any, blob: bytes, enclave: Enclave) -> bytes:
    answer = role.decrypt(
        CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=enclave.recipient()
    )
    assert "Plaintext" not in answer
    return enclave.unwrap(answer["CiphertextForRecipient"])


# -------------------------------------------------------------------- sealed mode


def test_a_sealed_policy_goes_on_only_with_the_lockout_check_bypassed(
    admin: Any, principals: Principals
) -> None:
    policy = sealed_policy(principals)
    with pytest.raises(ClientError) as exc:
        admin.create_key(Policy=policy)
    assert error_code(exc) == "MalformedPolicyDocumentException"
    assert exc.value.response["Error"]["Message"] == LOCKOUT
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as exc:
        admin.put_key_policy(KeyId=key_id, Policy=policy)
    assert exc.value.response["Error"]["Message"] == LOCKOUT
    admin.put_key_policy(KeyId=key_id, Policy=policy, BypassPolicyLockoutSafetyCheck=True)
    assert json.loads(admin.get_key_policy(KeyId=key_id)["Policy"]) == json.loads(policy)
    created = admin.create_key(Policy=policy, BypassPolicyLockoutSafetyCheck=True)
    assert created["KeyMetadata"]["KeyState"] == "Enabled"


def test_sealed_mode_refuses_the_administrators_put_key_policy(
    admin: Any, principals: Principals
) -> None:
    """Issue 10: as administrator, a tester rewrote the policy and read a data key."""
    key_id = sealed_key(admin, principals)
    before = admin.get_key_policy(KeyId=key_id)["Policy"]
    grab = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": principals.administrator().arn},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )
    for bypass in (False, True):
        with pytest.raises(ClientError) as exc:
            admin.put_key_policy(KeyId=key_id, Policy=grab, BypassPolicyLockoutSafetyCheck=bypass)
        assert error_code(exc) == "AccessDeniedException"
        assert "explicit deny" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:  # not even the same policy again
        admin.put_key_policy(KeyId=key_id, Policy=before, BypassPolicyLockoutSafetyCheck=True)
    assert error_code(exc) == "AccessDeniedException"
    assert admin.get_key_policy(KeyId=key_id)["Policy"] == before


def test_sealed_mode_refuses_the_administrators_schedule_key_deletion(
    admin: Any, principals: Principals
) -> None:
    """Issue 12: key administrators could ScheduleKeyDeletion unguarded."""
    key_id = sealed_key(admin, principals)
    for window in ({}, {"PendingWindowInDays": 30}, {"PendingWindowInDays": 7}):
        with pytest.raises(ClientError) as exc:
            admin.schedule_key_deletion(KeyId=key_id, **window)
        assert error_code(exc) == "AccessDeniedException"
        assert "explicit deny" in exc.value.response["Error"]["Message"]
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_sealed_administrators_keep_describe_tag_disable_and_enable(
    admin: Any, principals: Principals
) -> None:
    key_id = sealed_key(admin, principals)
    admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "team", "TagValue": "custody"}])
    assert admin.list_resource_tags(KeyId=key_id)["Tags"] == [
        {"TagKey": "team", "TagValue": "custody"}
    ]
    admin.enable_key_rotation(KeyId=key_id)
    admin.disable_key(KeyId=key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    admin.enable_key(KeyId=key_id)
    forbidden: list[tuple[str, dict[str, Any]]] = [
        ("update_key_description", {"Description": "x"}),
        ("cancel_key_deletion", {}),
        ("disable_key_rotation", {}),
        ("encrypt", {"Plaintext": b"x"}),
    ]
    for operation, extra in forbidden:
        with pytest.raises(ClientError) as exc:
            getattr(admin, operation)(KeyId=key_id, **extra)
        assert error_code(exc) == "AccessDeniedException", operation


@pytest.mark.parametrize(
    ("label", "pcr0", "pcr8"),
    [
        ("signed with another certificate", V1, OTHER_PCR8),
        ("unsigned image", V1, None),
        ("debug mode", bytes(48), bytes(48)),
    ],
)
def test_an_image_signed_with_another_certificate_cannot_decrypt(
    state: Path,
    admin: Any,
    role: Any,
    principals: Principals,
    label: str,
    pcr0: bytes,
    pcr8: bytes | None,
) -> None:
    key_id = sealed_key(admin, principals)
    _, blob = data_key(role, key_id, Enclave(state, V1, RELEASE_PCR8))
    intruder = Enclave(state, pcr0, pcr8)
    with pytest.raises(ClientError) as exc:
        decrypt(role, blob, intruder)
    assert error_code(exc) == "AccessDeniedException", label
    with pytest.raises(ClientError) as exc:
        data_key(role, key_id, intruder)
    assert error_code(exc) == "AccessDeniedException", label
    with pytest.raises(ClientError) as exc:  # and nobody without an attestation
        role.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    assert error_code(exc) == "AccessDeniedException"


def test_a_new_release_signed_with_the_release_certificate_decrypts_existing_accounts(
    state: Path, admin: Any, role: Any, principals: Principals
) -> None:
    key_id = sealed_key(admin, principals)
    policy = admin.get_key_policy(KeyId=key_id)["Policy"]
    key, blob = data_key(role, key_id, Enclave(state, V1, RELEASE_PCR8))
    assert decrypt(role, blob, Enclave(state, V2, RELEASE_PCR8)) == key
    assert admin.get_key_policy(KeyId=key_id)["Policy"] == policy


def test_sealed_mode_with_pinned_images_also_needs_an_allowed_pcr0(
    state: Path, admin: Any, role: Any, principals: Principals
) -> None:
    key_id = sealed_key(admin, principals, pcr0s=[V1])
    key, blob = data_key(role, key_id, Enclave(state, V1, RELEASE_PCR8))
    assert decrypt(role, blob, Enclave(state, V1, RELEASE_PCR8)) == key
    with pytest.raises(ClientError) as exc:
        decrypt(role, blob, Enclave(state, V2, RELEASE_PCR8))
    assert error_code(exc) == "AccessDeniedException"


# ---------------------------------------------------------------------- pcr0 mode


def pcr0_key(admin: Any, principals: Principals, glass_arn: str | None) -> str:
    policy = render_key_policy(
        mode="pcr0",
        admin_arns=[principals.administrator().arn],
        enclave_arns=[principals.imds_role().arn],
        pcr0s=[V1.hex()],
        break_glass_arns=[glass_arn] if glass_arn else [],
    )
    assert validate_key_policy(policy, mode="pcr0").break_glass_arns == (
        [glass_arn] if glass_arn else []
    )
    key_id = str(admin.create_key()["KeyMetadata"]["KeyId"])
    admin.put_key_policy(KeyId=key_id, Policy=json.dumps(policy))  # no bypass needed
    return key_id


def test_pcr0_mode_deletion_only_by_break_glass_and_never_under_30_days(
    admin: Any, glass: Any, principals: Principals
) -> None:
    (glass_arn,) = [p.arn for p in principals.principals if p.arn.endswith("break-glass")]
    key_id = pcr0_key(admin, principals, glass_arn)
    with pytest.raises(ClientError) as exc:
        admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=30)
    assert error_code(exc) == "AccessDeniedException"
    for days in (7, 29):
        with pytest.raises(ClientError) as exc:
            glass.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=days)
        assert error_code(exc) == "AccessDeniedException"
        assert "explicit deny" in exc.value.response["Error"]["Message"]
    answer = glass.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=30)
    assert (answer["KeyState"], answer["PendingWindowInDays"]) == ("PendingDeletion", 30)
    glass.cancel_key_deletion(KeyId=key_id)
    assert glass.schedule_key_deletion(KeyId=key_id)["PendingWindowInDays"] == 30


def test_pcr0_mode_policy_holders_can_rewrite_the_lock_as_the_validator_warns(
    state: Path, admin: Any, role: Any, principals: Principals
) -> None:
    key_id = pcr0_key(admin, principals, None)
    _, blob = data_key(role, key_id, Enclave(state, V1))
    widened = render_key_policy(
        mode="pcr0",
        admin_arns=[principals.administrator().arn],
        enclave_arns=[principals.imds_role().arn],
        pcr0s=[V1.hex(), V2.hex()],
    )
    admin.put_key_policy(KeyId=key_id, Policy=json.dumps(widened))
    assert len(decrypt(role, blob, Enclave(state, V2))) == 32
