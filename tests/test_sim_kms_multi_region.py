"""Multi-Region KMS keys in the simulator, through boto3 on per-region endpoints.

As on AWS: ``CreateKey(MultiRegion=True)`` gives an ``mrk-`` key; ``ReplicateKey`` on
the primary's endpoint puts a replica with the same id and key material, and its own
key policy, into another region; a ciphertext made in the primary region decrypts in
the replica region under the replica's policy; each endpoint accepts only requests
signed for its own region. A second endpoint may run in another process over the same
state directory, and serves a replica made after it started.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.principals import Principals
from nitro_wallet.key_policy import render_key_policy
from tests.test_sim_kms import CONTEXT, Enclave, client, error_code

HOME = "us-east-1"
DR = "eu-west-1"
RELEASE = hashlib.sha384(b"release certificate").digest()
OTHER = hashlib.sha384(b"another certificate").digest()
IMAGE = hashlib.sha384(b"nitro-wallet 1.0").digest()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def endpoints(state: Path) -> Iterator[dict[str, KmsServer]]:
    servers = {HOME: serve_kms(state, "127.0.0.1", 0), DR: serve_kms(state, "127.0.0.1", 0, DR)}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def principals(endpoints: dict[str, KmsServer], state: Path) -> Principals:
    return Principals.load(state)


def admin(endpoints: dict[str, KmsServer], principals: Principals, region: str) -> Any:
    return client(endpoints[region].url, principals.admin_credentials(), region)


def role(endpoints: dict[str, KmsServer], principals: Principals, region: str) -> Any:
    return client(endpoints[region].url, principals.role_credentials(), region)


def sealed(principals: Principals, pcr8: bytes) -> str:
    return json.dumps(
        render_key_policy(
            admin_arns=[principals.administrator().arn],
            enclave_arns=[principals.imds_role().arn],
            pcr8s=[pcr8.hex()],
        )
    )


def primary_key(home: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = home.create_key(MultiRegion=True, Description="wallet")[
        "KeyMetadata"
    ]
    return metadata


def test_multi_region_keys_have_mrk_ids_and_describe_their_region_set(
    endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    home, dr = admin(endpoints, principals, HOME), admin(endpoints, principals, DR)
    created = primary_key(home)
    key_id = created["KeyId"]
    assert re.fullmatch(r"mrk-[0-9a-f]{32}", key_id)
    assert created["Arn"] == f"arn:aws:kms:{HOME}:{principals.account_id}:key/{key_id}"
    assert created["MultiRegion"] is True
    assert created["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": created["Arn"], "Region": HOME},
        "ReplicaKeys": [],
    }
    single = home.create_key()["KeyMetadata"]
    assert single["MultiRegion"] is False
    assert "MultiRegionConfiguration" not in single

    answer = home.replicate_key(KeyId=key_id, ReplicaRegion=DR, Description="wallet DR")
    replica_arn = f"arn:aws:kms:{DR}:{principals.account_id}:key/{key_id}"
    assert answer["ReplicaKeyMetadata"]["Arn"] == replica_arn
    assert answer["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    described = dr.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (described["KeyId"], described["KeyState"]) == (key_id, "Enabled")
    assert described["Description"] == "wallet DR"
    expected = {
        "PrimaryKey": {"Arn": created["Arn"], "Region": HOME},
        "ReplicaKeys": [{"Arn": replica_arn, "Region": DR}],
    }
    assert described["MultiRegionConfiguration"] == {"MultiRegionKeyType": "REPLICA", **expected}
    primary = home.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    assert primary == {"MultiRegionKeyType": "PRIMARY", **expected}
    assert (
        home.describe_key(KeyId=replica_arn.replace(DR, HOME))["KeyMetadata"]["Arn"]
        == (created["Arn"])
    )
    with pytest.raises(ClientError) as exc:  # a region's endpoint knows only its ARNs
        home.describe_key(KeyId=replica_arn)
    assert error_code(exc) == "NotFoundException"


def test_a_primary_ciphertext_decrypts_in_the_replica_region_under_the_replicas_policy(
    state: Path, endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    home = admin(endpoints, principals, HOME)
    key_id = primary_key(home)["KeyId"]
    # Replicas first (the sealed policy denies ReplicateKey to everyone), then the seal.
    answer = home.replicate_key(
        KeyId=key_id,
        ReplicaRegion=DR,
        Policy=sealed(principals, RELEASE),
        BypassPolicyLockoutSafetyCheck=True,
    )
    assert json.loads(answer["ReplicaPolicy"]) == json.loads(sealed(principals, RELEASE))
    home.put_key_policy(
        KeyId=key_id, Policy=sealed(principals, RELEASE), BypassPolicyLockoutSafetyCheck=True
    )
    enclave = Enclave(state, IMAGE, RELEASE)
    made = role(endpoints, principals, HOME).generate_data_key(
        KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT, Recipient=enclave.recipient()
    )
    data_key = enclave.unwrap(made["CiphertextForRecipient"])

    dr_role = role(endpoints, principals, DR)
    opened = dr_role.decrypt(
        CiphertextBlob=made["CiphertextBlob"],
        EncryptionContext=CONTEXT,
        Recipient=enclave.recipient(),
    )
    assert opened["KeyId"] == f"arn:aws:kms:{DR}:{principals.account_id}:key/{key_id}"
    assert enclave.unwrap(opened["CiphertextForRecipient"]) == data_key
    with pytest.raises(ClientError) as exc:  # the replica is sealed too
        dr_role.decrypt(CiphertextBlob=made["CiphertextBlob"], EncryptionContext=CONTEXT)
    assert error_code(exc) == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        admin(endpoints, principals, DR).put_key_policy(
            KeyId=key_id, Policy=sealed(principals, OTHER), BypassPolicyLockoutSafetyCheck=True
        )
    assert error_code(exc) == "AccessDeniedException"


def test_the_replica_keeps_its_own_policy(
    state: Path, endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    home = admin(endpoints, principals, HOME)
    key_id = primary_key(home)["KeyId"]
    home.replicate_key(
        KeyId=key_id,
        ReplicaRegion=DR,
        Policy=sealed(principals, OTHER),
        BypassPolicyLockoutSafetyCheck=True,
    )
    home.put_key_policy(
        KeyId=key_id, Policy=sealed(principals, RELEASE), BypassPolicyLockoutSafetyCheck=True
    )
    released = Enclave(state, IMAGE, RELEASE)
    blob = role(endpoints, principals, HOME).generate_data_key(
        KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT, Recipient=released.recipient()
    )["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        role(endpoints, principals, DR).decrypt(
            CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=released.recipient()
        )
    assert error_code(exc) == "AccessDeniedException"
    other = Enclave(state, IMAGE, OTHER)
    opened = role(endpoints, principals, DR).decrypt(
        CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=other.recipient()
    )
    assert len(other.unwrap(opened["CiphertextForRecipient"])) == 32


def test_a_sealed_key_cannot_be_replicated_into_a_looser_policy(
    endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    """A replica shares the key material under a policy its creator writes."""
    home = admin(endpoints, principals, HOME)
    key_id = primary_key(home)["KeyId"]
    home.put_key_policy(
        KeyId=key_id, Policy=sealed(principals, RELEASE), BypassPolicyLockoutSafetyCheck=True
    )
    with pytest.raises(ClientError) as exc:
        home.replicate_key(KeyId=key_id, ReplicaRegion=DR, BypassPolicyLockoutSafetyCheck=True)
    assert error_code(exc) == "AccessDeniedException"
    assert "explicit deny" in exc.value.response["Error"]["Message"]
    assert admin(endpoints, principals, DR).list_keys()["Keys"] == []


def test_replicate_key_refuses_what_aws_refuses(
    endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    home = admin(endpoints, principals, HOME)
    single = home.create_key()["KeyMetadata"]["KeyId"]
    key_id = primary_key(home)["KeyId"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"KeyId": single, "ReplicaRegion": DR}, "UnsupportedOperationException"),
        ({"KeyId": key_id, "ReplicaRegion": HOME}, "ValidationException"),
        ({"KeyId": key_id, "ReplicaRegion": "not-a-region"}, "ValidationException"),
        (
            {"KeyId": key_id, "ReplicaRegion": DR, "Policy": "{}"},
            "MalformedPolicyDocumentException",
        ),
        (
            {"KeyId": key_id, "ReplicaRegion": DR, "Policy": sealed(principals, RELEASE)},
            "MalformedPolicyDocumentException",  # the lockout check, without the bypass
        ),
    ]
    for params, code in cases:
        with pytest.raises(ClientError) as exc:
            home.replicate_key(**params)
        assert error_code(exc) == code, params
    with pytest.raises(ClientError) as exc:
        role(endpoints, principals, HOME).replicate_key(KeyId=key_id, ReplicaRegion=DR)
    assert error_code(exc) == "AccessDeniedException"

    answer = home.replicate_key(KeyId=key_id, ReplicaRegion=DR)  # AWS's default policy
    assert principals.administrator().arn in answer["ReplicaPolicy"]
    with pytest.raises(ClientError) as exc:
        home.replicate_key(KeyId=key_id, ReplicaRegion=DR)
    assert error_code(exc) == "AlreadyExistsException"
    with pytest.raises(ClientError) as exc:  # a replica is not a primary
        admin(endpoints, principals, DR).replicate_key(KeyId=key_id, ReplicaRegion="eu-central-1")
    assert error_code(exc) == "UnsupportedOperationException"
    home.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as exc:
        home.replicate_key(KeyId=key_id, ReplicaRegion="ap-south-1")
    assert error_code(exc) == "DisabledException"
    home.enable_key(KeyId=key_id)
    scheduled = home.schedule_key_deletion(KeyId=key_id)
    assert scheduled["KeyState"] == "PendingReplicaDeletion"  # waits for its replica


def test_each_regional_endpoint_takes_only_requests_signed_for_its_region(
    endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    misdirected = client(endpoints[HOME].url, principals.admin_credentials(), DR)
    with pytest.raises(ClientError) as exc:
        misdirected.list_keys()
    assert error_code(exc) == "InvalidSignatureException"
    assert HOME in exc.value.response["Error"]["Message"]
    assert admin(endpoints, principals, DR).list_keys()["Keys"] == []


def test_a_replica_is_served_by_another_process_and_survives_restarts(
    state: Path, endpoints: dict[str, KmsServer], principals: Principals
) -> None:
    """The DR region's endpoint as its own process over the same state directory."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nitro_sim.kms.server", "--state-dir", str(state),
         "--region", "ap-southeast-2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = json.loads(process.stdout.readline())
        url = f"http://127.0.0.1:{banner['port']}"
        remote = client(url, principals.admin_credentials(), "ap-southeast-2")
        assert remote.list_keys()["Keys"] == []
        home = admin(endpoints, principals, HOME)
        key_id = primary_key(home)["KeyId"]
        blob = home.encrypt(KeyId=key_id, Plaintext=b"account record")["CiphertextBlob"]
        home.replicate_key(KeyId=key_id, ReplicaRegion="ap-southeast-2")
        assert remote.decrypt(CiphertextBlob=blob)["Plaintext"] == b"account record"
    finally:
        process.terminate()
        process.wait(timeout=10)
    endpoints[DR].close()
    restarted = serve_kms(state, "127.0.0.1", 0, "ap-southeast-2")
    try:
        again = client(restarted.url, principals.admin_credentials(), "ap-southeast-2")
        assert again.decrypt(CiphertextBlob=blob)["Plaintext"] == b"account record"
    finally:
        restarted.close()
