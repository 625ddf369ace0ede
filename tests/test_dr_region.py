"""Disaster recovery in a second region, end to end under the simulator.

Region A (us-east-1) runs the appliance with a multi-Region KMS key whose replica in
region B (eu-west-1) was made with the same policy rendering before the key policy was
applied (a sealed policy denies ReplicateKey). Accounts are created and backed up with
``nitro-wallet backup`` in A; then A is gone (every process stopped, its KMS endpoint
included). Region B is another host of the same AWS account: its own KMS endpoint for
eu-west-1 over the same KMS state, its own enclave image built with B's enclave.toml
(region, endpoint, the replica's ARN pinned: so its own PCR0), its own vsock-proxy and
relay configured with the replica. The store is restored there with ``nitro-wallet
restore`` and every account signs, checked with eth-account: each signature needed an
attested Decrypt of A's ciphertext through B's replica, under the replica's key policy.

Both key-policy modes: sealed (the replica pins the release certificate, which signed
B's image too) and pcr0 (B applies a policy pinning its own PCR0 to the replica).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from enclave_app.errors import EnclaveError
from nitro_sim.dev_auth import DEV_TOKEN_NAME
from nitro_sim.stack import LocalStack, free_port, http_json
from nitro_wallet.kms_replicas import replica_arn
from tests.stack_helpers import (
    account_param,
    assert_every_account_signs,
    eip1559,
    enclave_call,
    nitro_wallet,
    role_credentials,
    stored_record,
)

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parent.parent
PRIMARY_REGION = "us-east-1"
DR_REGION = "eu-west-1"
ACCOUNTS = 4


def run(stack: LocalStack, *args: str) -> dict[str, Any]:
    """The operator CLI as the runbook runs it; its JSON answer."""
    result = nitro_wallet(stack, *args)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@dataclass
class Recovered:
    mode: str
    primary: LocalStack
    dr: LocalStack
    accounts: dict[str, str]  # account_id -> address, created in region A
    primary_pcr0: str
    backup: Path
    restored: dict[str, Any]


@pytest.fixture(scope="module", params=["sealed", "pcr0"])
def recovered(request: pytest.FixtureRequest) -> Iterator[Recovered]:
    mode: str = request.param
    base = Path(tempfile.mkdtemp(prefix="nw-dr-", dir="/tmp"))
    primary = LocalStack(
        root=base / "a",
        relay_port=free_port(),
        key_policy_mode=mode,
        multi_region=True,
        replica_regions=(DR_REGION,),
    )
    dr: LocalStack | None = None
    try:
        with primary:
            accounts = {}
            for _ in range(ACCOUNTS):
                status, body = http_json("POST", f"{primary.relay_url}/v1/accounts", {})
                assert status == 201, body
                accounts[body["account_id"]] = body["address"]
            backup = base / "backup" / "accounts.db"
            backup.parent.mkdir()
            config = str(primary.root / "relay.toml")
            made = run(primary, "backup", "--config", config, "--out", str(backup))
            assert made["accounts"] == ACCOUNTS
            assert primary.measurements is not None
            primary_pcr0 = primary.measurements.pcr0
        # Region A is gone. Region B: the replica's ARN is the primary's, moved to B.
        dr = LocalStack(
            root=base / "b",
            relay_port=free_port(),
            region=DR_REGION,
            key_policy_mode=mode,
            shared_account_root=primary.root,
            key_arn=replica_arn(primary.key_arn, DR_REGION),
        )
        dr.start()
        checked = run(dr, "verify-backup", str(backup), "--require-manifest")
        assert checked["accounts"] == ACCOUNTS
        dr.stop_relay()
        dr_config = str(dr.root / "relay.toml")
        restored = run(dr, "restore", "--config", dr_config, "--from", str(backup))
        dr.start_relay()
        yield Recovered(mode, primary, dr, accounts, primary_pcr0, backup, restored)
    finally:
        if dr is not None:
            dr.stop()
        shutil.rmtree(base, ignore_errors=True)


def kms_audit(stack: LocalStack) -> list[dict[str, Any]]:
    """The audit log of the stack's regional KMS endpoint (one per region, as CloudTrail)."""
    kms = stack.sim_dir / "kms"
    directory = kms if stack.region == PRIMARY_REGION else kms / "regions" / stack.region
    lines = (directory / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_dr_region_runs_its_own_image_against_its_replica(recovered: Recovered) -> None:
    dr, primary = recovered.dr, recovered.primary
    assert primary.key_arn.startswith(f"arn:aws:kms:{PRIMARY_REGION}:")
    assert primary.key_arn.split("/")[-1].startswith("mrk-")
    assert dr.key_arn == primary.key_arn.replace(PRIMARY_REGION, DR_REGION)
    config = (dr.root / "build" / "nitro-wallet" / "enclave.toml").read_text()
    assert f'region = "{DR_REGION}"' in config
    assert f'allowed_key_ids = ["{dr.key_arn}"]' in config
    relay = (dr.root / "relay.toml").read_text()
    assert f'key_id = "{dr.key_arn}"' in relay
    assert f'region = "{DR_REGION}"' in relay
    assert dr.measurements is not None
    assert dr.measurements.pcr0 != recovered.primary_pcr0  # B's config, B's image
    probe = enclave_call(dr, "kms_probe", {"credentials": role_credentials(dr)})
    assert probe["status"] == "ok", probe
    assert probe["region"] == DR_REGION
    assert [key["key_id"] for key in probe["keys"]] == [dr.key_arn]


def test_the_replica_carries_the_policy_the_runbook_renders(recovered: Recovered) -> None:
    dr = recovered.dr
    current = json.loads(dr.kms_client().get_key_policy(KeyId=dr.key_arn)["Policy"])
    args = ["key-policy", "render", "--mode", recovered.mode]
    args += ["--admin-arn", dr.admin_arn, "--enclave-arn", dr.role_arn]
    if recovered.mode == "sealed":
        # Made with the replica, before the primary was sealed; B's image is signed with
        # the same release certificate.
        certificate = recovered.primary.root / "release" / "release-certificate.pem"
        args += ["--release-certificate", str(certificate)]
    else:
        # B pinned its own image in the replica's policy; A's image is not allowed there.
        assert dr.measurements is not None
        args += ["--pcr0", dr.measurements.pcr0]
        assert recovered.primary_pcr0 not in json.dumps(current)
    assert current == run(dr, *args)


def test_every_account_restored_in_the_dr_region_signs_there(recovered: Recovered) -> None:
    dr = recovered.dr
    assert recovered.restored["restored"] == ACCOUNTS
    assert recovered.restored["warnings"] == []  # records of the primary ARN: same key
    before = len(kms_audit(dr))
    assert_every_account_signs(dr.relay_url, recovered.accounts, nonce=3)
    decrypts = [entry for entry in kms_audit(dr)[before:] if entry["op"] == "Decrypt"]
    assert len(decrypts) == ACCOUNTS  # every key was cold: one attested Decrypt each
    assert dr.measurements is not None
    for entry in decrypts:
        assert entry["decision"] == "allow"
        assert entry["key_arn"] == dr.key_arn  # through the replica, in region B
        assert entry["recipient"] is True
        assert entry["recipient_pcr0"] == dr.measurements.pcr0
    # The stored records still name the primary's key: nothing was rewritten.
    for account_id in recovered.accounts:
        assert stored_record(dr, account_id)["key_id"] == recovered.primary.key_arn


def test_new_accounts_in_the_dr_region_are_made_under_the_replica(recovered: Recovered) -> None:
    dr = recovered.dr
    status, body = http_json("POST", f"{dr.relay_url}/v1/accounts", {})
    assert status == 201, body
    sign = f"{dr.relay_url}/v1/accounts/{body['account_id']}/sign/transaction"
    status, signed = http_json("POST", sign, {"transaction": eip1559()})
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == body["address"]
    made = [entry for entry in kms_audit(dr) if entry["op"] == "GenerateDataKey"]
    assert made[-1]["key_arn"] == dr.key_arn


#: What the relay asserts for the stack's bearer token (the dev policy grants it all).
DEV_AUTH = {"relay": {"principal": DEV_TOKEN_NAME, "scopes": ["create", "read", "sign"]}}


def test_the_dr_enclave_reaches_no_key_but_its_pinned_replica(recovered: Recovered) -> None:
    dr = recovered.dr
    credentials = role_credentials(dr)
    record = account_param(dr, next(iter(recovered.accounts)))
    primary_arn = recovered.primary.key_arn
    account_id, key_id = primary_arn.split(":")[4], primary_arn.split("/")[-1]
    other_mrk = "mrk-" + "0" * 32
    refused = {
        # New accounts: only the pinned key, as named (the primary region's ARN is not).
        "generate with the primary's ARN": (
            "generate_account",
            {
                "account_id": str(uuid.uuid4()),
                "key_id": primary_arn,
                "credentials": credentials,
                "auth": DEV_AUTH,
            },
        ),
        # A record remapped to another multi-Region key id, or the same id in another
        # account, or a single-Region key of the primary region: never remapped.
        "another key id": (
            "sign_message",
            _with_key(record, primary_arn.replace(key_id, other_mrk)),
        ),
        "another account": (
            "sign_message",
            _with_key(record, primary_arn.replace(account_id, "999988887777")),
        ),
        "a single-Region key": (
            "sign_message",
            _with_key(record, primary_arn.replace(key_id, str(uuid.uuid4()))),
        ),
    }
    signed = enclave_call(
        dr,
        "sign_message",
        {"account": record, "credentials": credentials, "message": "dr", "auth": DEV_AUTH},
    )  # the record as stored (the primary's ARN) signs: through the replica
    assert (
        Account.recover_message(encode_defunct(text="dr"), signature=signed["signature"])
        == (record["address"])
    )
    before = len(kms_audit(dr))
    for name, (op, params) in refused.items():
        request = (
            {"account": params, "credentials": credentials, "message": "dr", "auth": DEV_AUTH}
            if op == "sign_message"
            else params
        )
        with pytest.raises(EnclaveError) as error:
            enclave_call(dr, op, request)
        assert error.value.code == "kms_key_not_allowed", name
    assert len(kms_audit(dr)) == before  # refused before any KMS call


def _with_key(record: dict[str, Any], key_id: str) -> dict[str, Any]:
    return {**record, "key_id": key_id}


def test_the_runbooks_check_passes_on_the_dr_relay(recovered: Recovered) -> None:
    """docs/operations.md, DR step 5, as written (only the relay's address differs)."""
    text = (REPO / "docs" / "operations.md").read_text()
    block = text.split("<!-- dr-check -->\n```sh\n", 1)[1].split("```", 1)[0]
    assert block.startswith("RELAY=http://127.0.0.1:8080 ")
    script = block.replace("RELAY=http://127.0.0.1:8080 ", f"RELAY={recovered.dr.relay_url} ", 1)
    result = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NITRO_WALLET_TOKEN": recovered.dr.api_token},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "every account signs"
