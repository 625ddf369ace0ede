"""The signing policy is part of the measured image (issue 11): changing it changes PCR0,
and the KMS key policy decides which image decrypts. After the key policy moves to the
new image, the new policy is in force for the existing accounts and the old image (with
the old policy) cannot decrypt any of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from nitro_sim.dev_auth import DEV_POLICY_TEMPLATE, render_policy
from nitro_sim.stack import LocalStack, http_json
from nitro_wallet.stamping import load_key_file
from tests.stack_helpers import create_account, eip1559, sign

pytestmark = pytest.mark.stack

BLOCKED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # eip1559()'s recipient
ELSEWHERE = "0x000000000000000000000000000000000000dEaD"

# The development policy plus one deny rule: the relay identity may not pay BLOCKED.
DENY_RULE = f"""
  - name: never-pay-the-blocked-address
    effect: deny
    principals:
      relay_identities: [{{{{ dev_relay_identity | to_json }}}}]
    accounts: all
    condition:
      transaction: {{to: {{in: ["{BLOCKED}"]}}}}
"""


@pytest.fixture
def restored(stack: LocalStack) -> Iterator[LocalStack]:
    """Whatever the test moved, the key policy and the measured image come back."""
    yield stack
    assert stack.measurements is not None
    stack.apply_policy([stack.measurements.pcr0])
    stack.run_enclave(stack.measurements.eif)


def test_a_changed_policy_is_another_image_and_the_key_policy_picks_the_one_that_decrypts(
    restored: LocalStack, tmp_path: Path
) -> None:
    stack = restored
    assert stack.measurements is not None
    original = stack.measurements
    account = create_account(stack)
    status, body = sign(stack, account["account_id"], eip1559())
    assert status == 200, body

    changed_policy = tmp_path / "policy.json"
    render_policy(
        changed_policy,
        load_key_file(stack.api_key_path),
        DEV_POLICY_TEMPLATE.read_text() + DENY_RULE,
    )

    def with_changed_policy(context: Path) -> None:
        (context / "policy.json").write_bytes(changed_policy.read_bytes())

    changed = stack.build_eif("changed-policy", with_changed_policy)
    assert changed.pcr0 != original.pcr0  # the policy is measured

    # The key policy still pins the old image: the new one gets no data key.
    stack.run_enclave(changed.eif)
    status, body = sign(stack, account["account_id"], eip1559(1, to=ELSEWHERE))
    assert status == 403, body
    assert body["error"]["code"] == "kms_attestation_denied"

    # The key policy moves to the new image: it decrypts the existing account, and its
    # policy is the one in force.
    stack.apply_policy([changed.pcr0])
    stack.run_enclave(changed.eif)
    status, body = sign(stack, account["account_id"], eip1559(1, to=ELSEWHERE))
    assert status == 200, body
    assert Account.recover_transaction(body["raw_transaction"]) == account["address"]
    status, body = sign(stack, account["account_id"], eip1559(2))
    assert status == 403, body
    assert body["error"]["code"] == "policy_denied"
    assert "never-pay-the-blocked-address" in body["error"]["message"]
    # The same refusal over JSON-RPC, as a client library sees it.
    tx = {**eip1559(2), "from": account["address"]}
    status, rpc = http_json(
        "POST",
        stack.relay_url,
        {"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [tx]},
    )
    assert status == 200, rpc
    assert rpc["error"]["code"] == -32003, rpc
    assert rpc["error"]["data"]["code"] == "policy_denied"
    assert "never-pay-the-blocked-address" in rpc["error"]["message"]

    # The old image, with the old (laxer) policy, can no longer decrypt anything.
    stack.run_enclave(original.eif)
    status, body = sign(stack, account["account_id"], eip1559(2))
    assert status == 403, body
    assert body["error"]["code"] == "kms_attestation_denied"
    assert original.pcr0 in body["error"]["message"]
