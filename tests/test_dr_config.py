"""Disaster-recovery plumbing outside the enclave: the relay's [kms] region check, and
the replicas of the multi-Region key (nitro_wallet.kms_replicas) against the simulated
KMS, as the stack and the runbook make them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.principals import Principals
from nitro_wallet.kms_replicas import (
    ReplicaError,
    ensure_replica,
    replica_arn,
    same_multi_region_key,
)
from parent_app.config import ConfigError, RelayConfig
from tests.test_sim_kms import client

PRIMARY = "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef"
REPLICA = PRIMARY.replace("us-east-1", "eu-west-1")


def relay_config(key_id: str, region: str) -> dict[str, Any]:
    return {"kms": {"key_id": key_id, "region": region}}


@pytest.mark.parametrize(
    ("key_id", "region"),
    [(REPLICA, "eu-west-1"), (PRIMARY, "us-east-1"), ("alias/nitro-wallet", "eu-west-1")],
)
def test_the_relay_names_a_key_of_its_own_region(key_id: str, region: str) -> None:
    config = RelayConfig.from_mapping(relay_config(key_id, region))
    assert (config.kms.key_id, config.kms.region) == (key_id, region)


def test_a_relay_naming_another_regions_key_is_refused() -> None:
    refused = r"is a key of 'us-east-1', but kms\.region is 'eu-west-1'"
    with pytest.raises(ConfigError, match=refused):
        RelayConfig.from_mapping(relay_config(PRIMARY, "eu-west-1"))


def test_replica_arns_and_the_same_key_across_regions() -> None:
    assert replica_arn(PRIMARY, "eu-west-1") == REPLICA
    assert same_multi_region_key(PRIMARY, REPLICA)
    assert not same_multi_region_key(PRIMARY, REPLICA.replace("111122223333", "999988887777"))
    single = "arn:aws:kms:us-east-1:111122223333:key/0d3c2b1a-0000-4000-8000-000000000001"
    assert not same_multi_region_key(single, single.replace("us-east-1", "eu-west-1"))
    for key, region, message in (
        (single, "eu-west-1", "not the ARN of a multi-Region key"),
        ("alias/nitro-wallet", "eu-west-1", "not the ARN"),
        (PRIMARY, "Europe", "not an AWS region name"),
    ):
        with pytest.raises(ReplicaError, match=message):
            replica_arn(key, region)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[KmsServer, Principals]]:
    server = serve_kms(tmp_path / "state", "127.0.0.1", 0)
    try:
        yield server, Principals.load(tmp_path / "state")
    finally:
        server.close()


def test_a_replica_is_made_once_with_the_given_policy(home: tuple[KmsServer, Principals]) -> None:
    server, principals = home
    admin = client(server.url, principals.admin_credentials(), "us-east-1")
    key = admin.create_key(MultiRegion=True, Description="wallet")["KeyMetadata"]["Arn"]
    policy = json.loads(admin.get_key_policy(KeyId=key)["Policy"])
    policy["Id"] = "replica-policy"
    made = ensure_replica(admin, key, "eu-west-1", json.dumps(policy), False)
    assert made == replica_arn(key, "eu-west-1")
    again = ensure_replica(admin, key, "eu-west-1", '{"not": "used"}', False)
    assert again == made  # idempotent: the replica and its policy are left alone
    dr = serve_kms(server.service.stores.kms_dir.parent, "127.0.0.1", 0, "eu-west-1")
    try:
        dr_admin = client(dr.url, principals.admin_credentials(), "eu-west-1")
        assert json.loads(dr_admin.get_key_policy(KeyId=made)["Policy"])["Id"] == "replica-policy"
        assert dr_admin.describe_key(KeyId=made)["KeyMetadata"]["Description"] == "wallet"
        with pytest.raises(ReplicaError, match="not a multi-Region primary key"):
            ensure_replica(dr_admin, made, "ap-south-1", json.dumps(policy), False)
    finally:
        dr.close()
    single = admin.create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(ReplicaError, match="not the ARN of a multi-Region key"):
        ensure_replica(admin, single, "eu-west-1", json.dumps(policy), False)
