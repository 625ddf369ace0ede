"""Multi-Region keys: ReplicateKey and the MultiRegionConfiguration of DescribeKey.

As AWS KMS behaves (API reference, ReplicateKey; developer guide, multi-Region keys):

- ``CreateKey(MultiRegion=True)`` makes a primary key whose id is ``mrk-`` and 32 hex
  digits; the same id names it and its replicas in every region.
- ``ReplicateKey`` is called on the primary's regional endpoint with ``ReplicaRegion``.
  It needs ``kms:ReplicateKey`` in the primary's key policy and ``kms:CreateKey`` in the
  replica region (an IAM right: the simulator's administrator has it). The replica
  shares id and key material, so a ciphertext of one region decrypts in the other;
  it gets its own key policy (``Policy``, checked for lockout unless
  ``BypassPolicyLockoutSafetyCheck``; AWS's default key policy otherwise), and its
  own description and tags. The answer shows the replica ``Creating``; the simulator
  makes it usable at once.
- Errors: a key that is not multi-Region, or a replica, UnsupportedOperationException;
  a region that already has a replica (or is the primary's), AlreadyExistsException /
  ValidationException; a disabled primary DisabledException; one pending deletion
  KMSInvalidStateException.

Not simulated: UpdatePrimaryRegion, and key rotation of replicas (they keep the
primary's rotation settings as they were at replication).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nitro_sim.kms import policy as pol
from nitro_sim.kms.admin_ops import parse_tags
from nitro_sim.kms.params import KmsError, Params, validation
from nitro_sim.kms.store import (
    DISABLED,
    ENABLED,
    PENDING_STATES,
    REGION_RE,
    KeyRecord,
    RegionalStores,
    StoreError,
)
from nitro_sim.principals import Principal

if TYPE_CHECKING:
    from nitro_sim.kms.service import AuditEntry, KmsService

Handler = Callable[[Principal, Params, "AuditEntry"], dict[str, Any]]
MAX_DESCRIPTION = 8192


def multi_region_metadata(stores: RegionalStores, record: KeyRecord) -> dict[str, Any]:
    """DescribeKey's MultiRegionConfiguration: the same primary and replicas everywhere."""
    primary_region = record.primary_region or record.arn.split(":")[3]
    primary = stores.store(primary_region).get(record.key_id)
    replicas = primary.replica_regions if primary is not None else ()
    arn = stores.store(primary_region).key_arn(record.key_id)
    return {
        "MultiRegionKeyType": "REPLICA" if record.primary_region else "PRIMARY",
        "PrimaryKey": {"Arn": arn, "Region": primary_region},
        "ReplicaKeys": [
            {"Arn": stores.store(region).key_arn(record.key_id), "Region": region}
            for region in replicas
        ],
    }


class MultiRegionOps:
    """Handlers bound to a regional KmsService, registered under their AWS names."""

    def __init__(self, service: KmsService) -> None:
        self._service = service

    def handlers(self) -> dict[str, Handler]:
        return {"ReplicateKey": self.replicate_key}

    def replicate_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        service = self._service
        record = service._key_param(params, entry)
        region = params.required_string("ReplicaRegion", max_len=32)
        text = params.string("Policy", max_len=pol.MAX_POLICY_BYTES)
        bypass = params.boolean("BypassPolicyLockoutSafetyCheck")
        description = params.raw.get("Description", record.description)
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise validation(
                f"'Description' must be a string of at most {MAX_DESCRIPTION} characters"
            )
        tags = parse_tags(params.raw.get("Tags"), required=False)
        if not REGION_RE.match(region):
            raise validation(f"ReplicaRegion {region!r} is not a valid region name")
        service._authorize(principal, record, "kms:ReplicateKey", entry)
        if not record.multi_region or record.primary_region is not None:
            raise KmsError(
                "UnsupportedOperationException",
                f"{record.arn} is not a multi-Region primary key",
            )
        if record.state == DISABLED:
            raise KmsError("DisabledException", f"{record.arn} is disabled.")
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")
        if region == service.region:
            raise validation("ReplicaRegion must differ from the primary key's region")
        if not principal.administrator:  # kms:CreateKey in the replica region is IAM's
            entry.decision = "deny"
            raise KmsError(
                "AccessDeniedException",
                f"User: {principal.arn} is not authorized to perform: kms:CreateKey in "
                f"{region} because no identity-based policy allows the action",
            )
        target = service.stores.store(region)
        arn = target.key_arn(record.key_id)
        if text is None:
            text = pol.default_key_policy(principal.arn)
        else:
            document = service._parse_policy(text)
            if not bypass:
                service._lockout_check(principal, document, arn)
        replica = replace(
            record,
            arn=arn,
            policy=text,
            description=description,
            state=ENABLED,
            deletion_date=None,
            tags=tags,
            primary_region=service.region,
            replica_regions=(),
        )
        try:
            target.insert(replica)
        except StoreError:
            raise KmsError(
                "AlreadyExistsException", f"{region} already has a replica of {record.key_id}"
            ) from None
        service.store.update(record, replica_regions=(*record.replica_regions, region))
        entry.extra["replica_region"] = region
        metadata = service._metadata(replica)
        metadata["KeyState"] = "Creating"
        metadata["Enabled"] = False
        return {
            "ReplicaKeyMetadata": metadata,
            "ReplicaPolicy": text,
            "ReplicaTags": [{"TagKey": k, "TagValue": v} for k, v in tags],
        }


__all__ = ["MultiRegionOps", "multi_region_metadata"]
