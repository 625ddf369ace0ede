"""Key administration operations beyond the core: tags, rotation, grants, aliases, descriptions.

These are what configuration tools (amazon.aws.kms_key, Terraform) call to read and
converge a key. Semantics, key-state rules and response shapes follow AWS KMS; every
call is authorized against the key policy like the core operations in service.py.

Grants are not simulated: ListGrants answers an empty list and CreateGrant fails with
UnsupportedOperationException, so nothing can reach a key except through its policy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nitro_sim.kms.params import KmsError, Params, validation
from nitro_sim.kms.store import ALIAS_RE, DISABLED, PENDING_STATES, KeyRecord
from nitro_sim.principals import Principal

if TYPE_CHECKING:
    from nitro_sim.kms.service import AuditEntry, KmsService

MAX_TAGS_PER_KEY = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_TAGS_PAGE = 50
MAX_DESCRIPTION = 8192
DEFAULT_ROTATION_DAYS = 365
MIN_ROTATION_DAYS = 90
MAX_ROTATION_DAYS = 2560
# AWS: Unicode letters, digits, white space, and _ . : / = + - @
TAG_CHARS_RE = re.compile(r"\A[\w\s.:/=+\-@]*\Z")

Handler = Callable[[Principal, Params, "AuditEntry"], dict[str, Any]]


def _tag_error(message: str) -> KmsError:
    return KmsError("TagException", message)


def _check_tag_key(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_TAG_KEY:
        raise validation(f"'TagKey' must be a string of 1..{MAX_TAG_KEY} characters")
    if not TAG_CHARS_RE.match(name):
        raise _tag_error(f"Tag key {name!r} contains characters that are not allowed")
    if name.lower().startswith("aws:"):
        raise _tag_error("Tag keys beginning with 'aws:' are reserved for AWS")
    return name


def parse_tags(raw: Any, *, required: bool) -> tuple[tuple[str, str], ...]:
    """A TagList (`[{"TagKey": k, "TagValue": v}]`) as validated (key, value) pairs."""
    if raw is None:
        if required:
            raise validation("Value null at 'Tags' failed to satisfy constraint: not null")
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_TAGS_PER_KEY:
        raise validation(f"'Tags' must be a list of at most {MAX_TAGS_PER_KEY} tags")
    tags: list[tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"TagKey", "TagValue"}:
            raise validation("each tag must be {'TagKey': ..., 'TagValue': ...}")
        name = _check_tag_key(item.get("TagKey"))
        value = item.get("TagValue")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise validation(f"'TagValue' must be a string of 0..{MAX_TAG_VALUE} characters")
        if not TAG_CHARS_RE.match(value):
            raise _tag_error(f"The value of tag {name!r} contains characters that are not allowed")
        tags.append((name, value))
    if len({name for name, _ in tags}) != len(tags):
        raise _tag_error("Duplicate tag keys in the request")
    return tuple(tags)


def tag_condition_keys(tags: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, ...]]:
    """aws:RequestTag/<key> and aws:TagKeys for a request that carries tags."""
    keys: dict[str, tuple[str, ...]] = {f"aws:requesttag/{k}".lower(): (v,) for k, v in tags}
    if tags:
        keys["aws:tagkeys"] = tuple(name for name, _ in tags)
    return keys


class AdminOps:
    """Handlers bound to a KmsService, registered by it under their AWS operation names."""

    def __init__(self, service: KmsService) -> None:
        self._service = service

    def handlers(self) -> dict[str, Handler]:
        return {
            "TagResource": self.tag_resource,
            "UntagResource": self.untag_resource,
            "ListResourceTags": self.list_resource_tags,
            "GetKeyRotationStatus": self.get_key_rotation_status,
            "EnableKeyRotation": self.enable_key_rotation,
            "DisableKeyRotation": self.disable_key_rotation,
            "ListGrants": self.list_grants,
            "CreateGrant": self.create_grant,
            "ListKeyPolicies": self.list_key_policies,
            "UpdateKeyDescription": self.update_key_description,
            "UpdateAlias": self.update_alias,
            "DeleteAlias": self.delete_alias,
        }

    # ---------------------------------------------------------------- helpers

    def _key(self, params: Params, entry: AuditEntry) -> KeyRecord:
        """KeyId as a key id or key ARN; these operations do not take aliases (as on AWS)."""
        key_ref = params.required_string("KeyId")
        if key_ref.startswith("alias/") or ":alias/" in key_ref:
            raise KmsError(
                "NotFoundException",
                f"Invalid keyId '{key_ref}': specify a key ID or key ARN, not an alias",
            )
        return self._service._resolve(key_ref, entry)

    def _authorized_key(
        self,
        principal: Principal,
        params: Params,
        entry: AuditEntry,
        action: str,
        keys: dict[str, tuple[str, ...]] | None = None,
    ) -> KeyRecord:
        record = self._key(params, entry)
        if keys is not None:
            keys = {**self._service._condition_keys(principal, None, None), **keys}
        self._service._authorize(principal, record, action, entry, keys)
        return record

    @staticmethod
    def _not_pending_deletion(record: KeyRecord) -> None:
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")

    def _alias_name(self, params: Params) -> str:
        alias = params.required_string("AliasName", max_len=256)
        if not ALIAS_RE.match(alias):
            raise validation(f"Alias {alias} is not a valid alias name")
        if alias.startswith("alias/aws/"):
            raise validation(f"Alias {alias} is reserved for AWS managed keys")
        return alias

    # ------------------------------------------------------------------- tags

    def tag_resource(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        tags = parse_tags(params.raw.get("Tags"), required=True)
        record = self._authorized_key(
            principal, params, entry, "kms:TagResource", tag_condition_keys(tags)
        )
        self._not_pending_deletion(record)
        merged = dict(record.tags)
        merged.update(tags)  # an existing key takes the new value, as on AWS
        if len(merged) > MAX_TAGS_PER_KEY:
            raise KmsError(
                "LimitExceededException", f"A KMS key can have at most {MAX_TAGS_PER_KEY} tags"
            )
        self._service.store.update(record, tags=tuple(merged.items()))
        entry.extra["tag_keys"] = [name for name, _ in tags]
        return {}

    def untag_resource(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        raw = params.raw.get("TagKeys")
        if not isinstance(raw, list) or len(raw) > MAX_TAGS_PER_KEY:
            raise validation(f"'TagKeys' must be a list of at most {MAX_TAGS_PER_KEY} tag keys")
        names = tuple(_check_tag_key(name) for name in raw)
        keys = {"aws:tagkeys": names} if names else {}
        record = self._authorized_key(principal, params, entry, "kms:UntagResource", keys)
        self._not_pending_deletion(record)
        remaining = tuple((k, v) for k, v in record.tags if k not in names)
        self._service.store.update(record, tags=remaining)
        entry.extra["tag_keys"] = list(names)
        return {}

    def list_resource_tags(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        limit = params.integer("Limit", 1, MAX_TAGS_PAGE) or MAX_TAGS_PAGE
        record = self._authorized_key(principal, params, entry, "kms:ListResourceTags")
        page, extra = self._service._page(Params({**params.raw, "Limit": limit}), list(record.tags))
        return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in page], **extra}

    # --------------------------------------------------------------- rotation

    def get_key_rotation_status(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._authorized_key(principal, params, entry, "kms:GetKeyRotationStatus")
        result: dict[str, Any] = {
            "KeyId": record.key_id,
            "KeyRotationEnabled": record.rotation_period_days is not None,
        }
        if record.rotation_period_days is not None:
            result["RotationPeriodInDays"] = record.rotation_period_days
            start = record.rotation_enabled_date or record.creation_date
            result["NextRotationDate"] = start + record.rotation_period_days * 86400
        return result

    def _rotation_target(
        self, principal: Principal, params: Params, entry: AuditEntry, action: str
    ) -> KeyRecord:
        record = self._authorized_key(principal, params, entry, action)
        if record.state == DISABLED:
            raise KmsError("DisabledException", f"{record.arn} is disabled.")
        self._not_pending_deletion(record)
        return record

    def enable_key_rotation(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        days = params.integer("RotationPeriodInDays", MIN_ROTATION_DAYS, MAX_ROTATION_DAYS)
        record = self._rotation_target(principal, params, entry, "kms:EnableKeyRotation")
        period = days or DEFAULT_ROTATION_DAYS
        since = record.rotation_enabled_date
        if record.rotation_period_days is None or since is None:
            since = time.time()
        self._service.store.update(record, rotation_period_days=period, rotation_enabled_date=since)
        entry.extra["rotation_period_days"] = period
        return {}

    def disable_key_rotation(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._rotation_target(principal, params, entry, "kms:DisableKeyRotation")
        self._service.store.update(record, rotation_period_days=None, rotation_enabled_date=None)
        return {}

    # ----------------------------------------------------------------- grants

    def list_grants(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        params.string("GrantId", max_len=128)
        params.string("GranteePrincipal", max_len=256)
        params.string("GranteeServicePrincipal", max_len=256)
        self._authorized_key(principal, params, entry, "kms:ListGrants")
        page, extra = self._service._page(params, [])
        return {"Grants": page, **extra}

    def create_grant(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        raise KmsError(
            "UnsupportedOperationException",
            "CreateGrant is not supported by this KMS simulator: grant access through the "
            "key policy instead",
        )

    # --------------------------------------------------------------- policies

    def list_key_policies(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        self._authorized_key(principal, params, entry, "kms:ListKeyPolicies")
        page, extra = self._service._page(params, ["default"])
        return {"PolicyNames": page, **extra}

    # ------------------------------------------------------------ description

    def update_key_description(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        description = params.raw.get("Description")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise validation(
                f"'Description' must be a string of at most {MAX_DESCRIPTION} characters"
            )
        record = self._authorized_key(principal, params, entry, "kms:UpdateKeyDescription")
        self._not_pending_deletion(record)
        self._service.store.update(record, description=description)
        return {}

    # ---------------------------------------------------------------- aliases

    def update_alias(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        alias = self._alias_name(params)
        target = params.required_string("TargetKeyId")
        if "alias/" in target:
            raise validation("TargetKeyId must be a key id or key ARN, not an alias")
        entry.extra["alias"] = alias
        current_id = self._service.store.alias_target(alias)
        if current_id is None:
            raise KmsError(
                "NotFoundException", f"Alias {self._service.store.alias_arn(alias)} is not found."
            )
        current = self._service.store.get(current_id)
        new = self._service._resolve(target, entry)
        # AWS: kms:UpdateAlias is required on both the current and the new key.
        if current is not None:
            self._service._authorize(principal, current, "kms:UpdateAlias", entry)
        self._service._authorize(principal, new, "kms:UpdateAlias", entry)
        self._not_pending_deletion(new)
        if not self._service.store.update_alias(alias, new.key_id):
            raise KmsError("NotFoundException", f"Alias {alias} is not found.")
        entry.extra["previous_key"] = current.arn if current is not None else current_id
        return {}

    def delete_alias(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        alias = self._alias_name(params)
        entry.extra["alias"] = alias
        key_id = self._service.store.alias_target(alias)
        record = None if key_id is None else self._service.store.get(key_id)
        if record is None:
            raise KmsError(
                "NotFoundException", f"Alias {self._service.store.alias_arn(alias)} is not found."
            )
        entry.key_arn = record.arn
        self._service._authorize(principal, record, "kms:DeleteAlias", entry)
        if self._service.store.delete_alias(alias) is None:
            raise KmsError("NotFoundException", f"Alias {alias} is not found.")
        return {}


__all__ = ["AdminOps", "parse_tags", "tag_condition_keys"]
