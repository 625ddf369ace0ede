"""The trust chain under the simulator with its rendered key policy: attestation ->
KMS key policy -> key material only the measured enclave can use (DESIGN.md
invariants 2, 3 and 4, plus debug mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from enclave_app import envelope
from nitro_sim.stack import LocalStack
from tests.stack_helpers import (
    create_account,
    eip1559,
    overwrite_ciphertexts,
    sign,
    stored_record,
)

pytestmark = pytest.mark.stack


@pytest.fixture
def measured_enclave(stack: LocalStack) -> Iterator[LocalStack]:
    """Whatever a test runs, the measured image runs again afterwards."""
    yield stack
    assert stack.measurements is not None
    stack.run_enclave(stack.measurements.eif)


@pytest.mark.parametrize("who", ["imds_role", "administrator"])
def test_parent_credentials_cannot_decrypt_a_stored_data_key(stack: LocalStack, who: str) -> None:
    account = create_account(stack)
    record = stored_record(stack, account["account_id"])
    kms = stack.kms_client(who)
    with pytest.raises(ClientError) as denied:
        kms.decrypt(
            CiphertextBlob=record["encrypted_data_key"],
            EncryptionContext=envelope.encryption_context(account["account_id"]),
        )
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as denied:
        kms.decrypt(CiphertextBlob=record["encrypted_data_key"])
    assert denied.value.response["Error"]["Code"] in {
        "AccessDeniedException",
        "InvalidCiphertextException",
    }
    with pytest.raises(ClientError) as denied:
        kms.generate_data_key(KeyId=stack.key_arn, KeySpec="AES_256")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


def test_a_modified_enclave_image_cannot_sign_for_an_existing_account(
    measured_enclave: LocalStack,
) -> None:
    stack = measured_enclave
    account = create_account(stack)
    assert sign(stack, account["account_id"], eip1559())[0] == 200

    def tamper(context: Path) -> None:
        init = context / "enclave_app" / "__init__.py"
        init.write_text(init.read_text() + "\n# one changed byte is a different image\n")

    modified = stack.build_eif("tampered", tamper)
    assert stack.measurements is not None
    assert modified.pcr0 != stack.measurements.pcr0
    stack.run_enclave(modified.eif)

    status, answer = sign(stack, account["account_id"], eip1559(1))
    assert status == 403, answer
    assert answer["error"]["code"] == "kms_attestation_denied"
    assert "attest" in answer["error"]["message"]
    assert modified.pcr0 in answer["error"]["message"]
    status, answer = stack_create(stack)
    assert status == 403
    assert answer["error"]["code"] == "kms_attestation_denied"


def test_a_debug_mode_enclave_is_refused(measured_enclave: LocalStack) -> None:
    stack = measured_enclave
    account = create_account(stack)
    assert stack.measurements is not None
    described = stack.run_enclave(stack.measurements.eif, debug=True)
    assert described["EnclaveCID"] == 16
    status, answer = sign(stack, account["account_id"], eip1559())
    assert status == 403, answer
    assert answer["error"]["code"] == "kms_attestation_denied"
    assert "0" * 96 in answer["error"]["message"]


def test_a_policy_allowing_the_debug_pcr0_is_refused_before_it_is_applied(
    stack: LocalStack,
) -> None:
    from nitro_wallet.key_policy import KeyPolicyError

    with pytest.raises(KeyPolicyError, match="debug"):
        stack.apply_policy(["0" * 96])


def test_a_ciphertext_moved_into_another_accounts_record_is_refused(stack: LocalStack) -> None:
    victim = create_account(stack)
    attacker_target = create_account(stack)
    stolen = stored_record(stack, victim["account_id"])
    target = stored_record(stack, attacker_target["account_id"])

    # Both ciphertexts moved: KMS refuses, the data key's context names the victim.
    overwrite_ciphertexts(
        stack,
        attacker_target["account_id"],
        stolen["encrypted_private_key"],
        stolen["encrypted_data_key"],
    )
    status, answer = sign(stack, attacker_target["account_id"], eip1559())
    assert status == 500, answer
    assert answer["error"]["code"] == "ciphertext_invalid"

    # Only the key ciphertext moved: AES-GCM's AAD binds account and address.
    overwrite_ciphertexts(
        stack,
        attacker_target["account_id"],
        stolen["encrypted_private_key"],
        target["encrypted_data_key"],
    )
    status, answer = sign(stack, attacker_target["account_id"], eip1559())
    assert status == 500, answer
    assert answer["error"]["code"] == "ciphertext_invalid"

    # The untouched victim still signs.
    assert sign(stack, victim["account_id"], eip1559())[0] == 200


def stack_create(stack: LocalStack) -> tuple[int, dict[str, Any]]:
    from nitro_sim.stack import http_json

    return http_json("POST", f"{stack.relay_url}/v1/accounts", {})
