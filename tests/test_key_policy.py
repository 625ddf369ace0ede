"""The KMS key policy: golden renderings of templates/kms_key_policy.json.j2 and the
validator that stands between any rendered policy and KMS."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nitro_wallet.key_policy import KeyPolicyError, render_key_policy, validate_key_policy

GOLDEN = Path(__file__).resolve().parent / "golden"
ADMIN = "arn:aws:iam::111122223333:user/nitro-wallet-admin"
ROLE = "arn:aws:iam::111122223333:role/nitro-wallet-parent"
PCR_A = "a" * 96
PCR_B = "B" * 48 + "b" * 48
ZERO = "0" * 96

CASES: dict[str, dict[str, Any]] = {
    "one_host": {"pcr0s": [PCR_A], "allow_debug": False},
    "several_hosts_one_image": {"pcr0s": [PCR_A, PCR_A, PCR_A], "allow_debug": False},
    "upgrade_in_progress": {"pcr0s": [PCR_A, PCR_B, PCR_A], "allow_debug": False},
    "debug_allowed_explicitly": {"pcr0s": [ZERO], "allow_debug": True},
}


def render(pcr0s: list[str]) -> dict[str, Any]:
    return render_key_policy(admin_arns=[ADMIN], enclave_arns=[ROLE], pcr0s=pcr0s)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_renderings(case: str) -> None:
    spec = CASES[case]
    policy = render(spec["pcr0s"])
    golden = GOLDEN / f"key_policy_{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(policy, indent=2) + "\n")
    assert policy == json.loads(golden.read_text())
    allowed = validate_key_policy(policy, allow_debug=spec["allow_debug"])
    assert allowed == sorted({p.lower() for p in spec["pcr0s"]})


def test_debug_pcr0_is_refused_unless_explicitly_allowed() -> None:
    policy = render([ZERO])
    with pytest.raises(KeyPolicyError, match="debug-mode"):
        validate_key_policy(policy)
    upgrade_with_debug = render([PCR_A, ZERO])
    with pytest.raises(KeyPolicyError, match="debug-mode"):
        validate_key_policy(upgrade_with_debug)


def attested_statement(policy: dict[str, Any]) -> dict[str, Any]:
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == "AttestedEnclaveDataKeys"]
    assert isinstance(statement, dict)
    return statement


def mutated(change: str) -> dict[str, Any]:
    policy = copy.deepcopy(render([PCR_A]))
    statement = attested_statement(policy)
    if change == "no condition":
        del statement["Condition"]
    elif change == "IfExists operator":
        statement["Condition"] = {
            "StringEqualsIfExists": {"kms:RecipientAttestation:ImageSha384": PCR_A}
        }
    elif change == "condition on another key":
        statement["Condition"] = {"StringEquals": {"kms:EncryptionContext:x": "y"}}
    elif change == "open principal":
        statement["Principal"] = {"AWS": "*"}
    elif change == "root delegation":
        policy["Statement"].append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        )
    elif change == "admin wildcard":
        policy["Statement"][0]["Action"].append("kms:Generate*")
    elif change == "re-encrypt":
        statement["Action"].append("kms:ReEncrypt*")
    elif change == "not action":
        policy["Statement"].append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": ADMIN},
                "NotAction": "kms:Sign",
                "Resource": "*",
            }
        )
    elif change == "short pcr":
        statement["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"] = [
            "abcd"
        ]
    elif change == "grant":
        policy["Statement"][0]["Action"].append("kms:CreateGrant")
    return policy


@pytest.mark.parametrize(
    "change",
    [
        "no condition",
        "IfExists operator",
        "condition on another key",
        "open principal",
        "root delegation",
        "admin wildcard",
        "re-encrypt",
        "not action",
        "short pcr",
        "grant",
    ],
)
def test_policies_that_would_release_keys_without_attestation_are_refused(change: str) -> None:
    with pytest.raises(KeyPolicyError):
        validate_key_policy(mutated(change))


def test_not_json_objects_and_empty_policies_are_refused() -> None:
    bad: object
    for bad in (None, [], {"Version": "2012-10-17", "Statement": []}, {"Statement": [{}]}):
        with pytest.raises(KeyPolicyError):
            validate_key_policy(bad)


@pytest.mark.process
def test_validate_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(render([PCR_A])))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(mutated("root delegation")))
    run = [sys.executable, "-m", "nitro_wallet", "key-policy", "validate"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["pcr0s"] == [PCR_A]
    refused = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "without an attestation condition" in refused.stderr
