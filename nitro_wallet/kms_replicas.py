"""Replicas of the appliance's multi-Region KMS key in disaster-recovery regions.

A replica shares the primary key's id (``mrk-...``) and key material, so every stored
data key decrypts in the replica's region too, under the replica's own key policy. The
replica is made with the same policy rendering as the primary, BEFORE the primary is
sealed: the sealed policy denies ``kms:ReplicateKey`` to everyone, and a replica made
later would need a policy its creator chooses. Making it is idempotent: a region that
already has a replica keeps it (and its policy) as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave_app.key_ids import REGION_RE, KeyArn

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

__all__ = ["ReplicaError", "ensure_replica", "replica_arn", "same_multi_region_key"]


class ReplicaError(ValueError):
    """The key cannot have a replica there (not multi-Region, not an ARN, bad region)."""


def replica_arn(key_arn: str, region: str) -> str:
    """The ARN of ``key_arn``'s multi-Region key in ``region`` (same partition, account, id)."""
    arn = KeyArn.parse(key_arn)
    if arn is None or not arn.multi_region:
        raise ReplicaError(f"{key_arn!r} is not the ARN of a multi-Region key (mrk-...)")
    if not REGION_RE.fullmatch(region):
        raise ReplicaError(f"{region!r} is not an AWS region name")
    return str(arn.in_region(region))


def same_multi_region_key(first: str, second: str) -> bool:
    """Whether two ARNs name one multi-Region key (in the same or different regions)."""
    a, b = KeyArn.parse(first), KeyArn.parse(second)
    if a is None or b is None or not a.multi_region:
        return False
    return (a.partition, a.account, a.key_id) == (b.partition, b.account, b.key_id)


def ensure_replica(
    kms: KMSClient, key_arn: str, region: str, policy: str, bypass_lockout_check: bool
) -> str:
    """The ARN of the replica of ``key_arn`` (the primary, on its region's client) in
    ``region``; replicated with ``policy`` if the region has none yet.

    ``bypass_lockout_check``: for a sealed policy, which gives nobody PutKeyPolicy.
    """
    wanted = replica_arn(key_arn, region)
    metadata = kms.describe_key(KeyId=key_arn)["KeyMetadata"]
    configuration = metadata.get("MultiRegionConfiguration", {})
    if configuration.get("MultiRegionKeyType") != "PRIMARY":
        raise ReplicaError(f"{key_arn} is not a multi-Region primary key")
    for replica in configuration.get("ReplicaKeys", []):
        if replica.get("Region") == region:
            return wanted
    answer = kms.replicate_key(
        KeyId=key_arn,
        ReplicaRegion=region,
        Policy=policy,
        BypassPolicyLockoutSafetyCheck=bypass_lockout_check,
        Description=metadata.get("Description", ""),
    )
    made = answer["ReplicaKeyMetadata"]["Arn"]
    if made != wanted:
        raise ReplicaError(f"KMS made the replica {made}, not {wanted}")
    return made
