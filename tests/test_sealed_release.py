"""Sealed mode end to end: the whole simulated appliance as `make dev` runs it.

The EIF is signed with the stack's release certificate and the key policy pins its
PCR8 (nitro_sim.stack, sealed by default). Then, through the real relay, enclave,
NSM and KMS:
- the administrator cannot rewrite the policy nor schedule the key's deletion;
- an image signed with another certificate, or unsigned, cannot decrypt an account;
- a new release (other code, other PCR0) signed with the release certificate signs
  for existing accounts with no policy change;
- a restart of the stack reuses its release certificate and leaves the policy alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from eth_account import Account

from nitro_sim.release import create_release_signer
from nitro_sim.stack import LocalStack, free_port
from nitro_wallet.key_policy import validate_key_policy
from tests.stack_helpers import create_account, eip1559, sign

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def sealed_stack() -> Iterator[LocalStack]:
    root = Path(tempfile.mkdtemp(prefix="nw-sealed-", dir="/tmp"))
    try:
        with LocalStack(root=root, relay_port=free_port()) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def release_image(sealed_stack: LocalStack) -> Iterator[LocalStack]:
    """Whatever a test runs, the released image runs again afterwards."""
    yield sealed_stack
    assert sealed_stack.measurements is not None
    sealed_stack.run_enclave(sealed_stack.measurements.eif)


def applied_policy(stack: LocalStack) -> str:
    policy: str = stack.kms_client().get_key_policy(KeyId=stack.key_arn)["Policy"]
    return policy


def signs(stack: LocalStack, account: dict[str, str], nonce: int) -> bool:
    status, answer = sign(stack, account["account_id"], eip1559(nonce))
    if status != 200:
        assert status == 403, answer
        assert answer["error"]["code"] == "kms_attestation_denied"
        return False
    assert Account.recover_transaction(answer["raw_transaction"]) == account["address"]
    return True


def test_the_stack_is_sealed_to_its_release_certificate(sealed_stack: LocalStack) -> None:
    assert sealed_stack.measurements is not None
    assert sealed_stack.measurements.pcr8 == sealed_stack.release_signer.pcr8
    summary = validate_key_policy(json.loads(applied_policy(sealed_stack)), mode="sealed")
    assert summary.pcr8s == [sealed_stack.release_signer.pcr8]
    assert summary.policy_holders == []
    on_disk = json.loads((sealed_stack.root / "kms-key-policy.json").read_text())
    assert on_disk == json.loads(applied_policy(sealed_stack))


def test_sealed_mode_refuses_the_administrators_put_key_policy(sealed_stack: LocalStack) -> None:
    admin = sealed_stack.kms_client()
    before = applied_policy(sealed_stack)
    open_door = json.loads(before)
    open_door["Statement"] = [s for s in open_door["Statement"] if s["Effect"] == "Allow"] + [
        {
            "Effect": "Allow",
            "Principal": {"AWS": sealed_stack.admin_arn},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    ]
    with pytest.raises(ClientError) as exc:
        admin.put_key_policy(
            KeyId=sealed_stack.key_arn,
            Policy=json.dumps(open_door),
            BypassPolicyLockoutSafetyCheck=True,
        )
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert applied_policy(sealed_stack) == before


def test_sealed_mode_refuses_the_administrators_schedule_key_deletion(
    sealed_stack: LocalStack,
) -> None:
    admin = sealed_stack.kms_client()
    with pytest.raises(ClientError) as exc:
        admin.schedule_key_deletion(KeyId=sealed_stack.key_arn, PendingWindowInDays=30)
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    state = admin.describe_key(KeyId=sealed_stack.key_arn)["KeyMetadata"]["KeyState"]
    assert state == "Enabled"


def test_an_image_signed_with_another_certificate_cannot_decrypt(
    release_image: LocalStack, tmp_path: Path
) -> None:
    stack = release_image
    account = create_account(stack)
    assert signs(stack, account, 0)
    stranger = create_release_signer(tmp_path / "stranger", "not the release certificate")
    rogue = stack.build_eif("rogue", signer=stranger)
    unsigned = stack.build_eif("unsigned", signed=False)
    assert stack.measurements is not None
    assert rogue.pcr0 == unsigned.pcr0 == stack.measurements.pcr0  # the very same code
    for image in (rogue, unsigned):
        stack.run_enclave(image.eif)
        assert not signs(stack, account, 1)


def test_a_new_release_signed_with_the_release_certificate_decrypts_existing_accounts(
    release_image: LocalStack,
) -> None:
    stack = release_image
    account = create_account(stack)
    assert signs(stack, account, 0)
    policy = applied_policy(stack)

    def next_release(context: Path) -> None:
        init = context / "enclave_app" / "__init__.py"
        init.write_text(init.read_text() + "\n# release 1.1\n")

    upgrade = stack.build_eif("release-1.1", next_release)
    assert stack.measurements is not None
    assert upgrade.pcr0 != stack.measurements.pcr0
    assert upgrade.pcr8 == stack.measurements.pcr8
    stack.run_enclave(upgrade.eif)
    assert signs(stack, account, 1)
    assert signs(stack, create_account(stack), 0)  # and it makes new accounts
    assert applied_policy(stack) == policy


def test_a_restarted_stack_keeps_its_certificate_and_policy(sealed_stack: LocalStack) -> None:
    account = create_account(sealed_stack)
    policy = applied_policy(sealed_stack)
    pcr8 = sealed_stack.release_signer.pcr8
    sealed_stack.stop()
    sealed_stack.start()  # signs a fresh build; applying the same sealed policy is a no-op
    assert sealed_stack.release_signer.pcr8 == pcr8
    assert applied_policy(sealed_stack) == policy
    assert signs(sealed_stack, account, 0)
