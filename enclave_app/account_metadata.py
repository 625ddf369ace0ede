"""What an account carries besides its key, sealed with it: labels (which policy rules
and limits select accounts by) and stamp keys bound to the account at creation.

The relay stores both in the clear in the account record (it lists accounts by label),
but they are bound into the AES-GCM additional data of the sealed private key (envelope
version 2, see :mod:`enclave_app.envelope`): an account whose labels or keys the parent
changed does not open. The enclave reads labels only from a record it has opened, so a
relay-supplied label never reaches the policy.

Record fields (all optional, absent = empty):
- ``labels``: distinct strings matching ``[a-z0-9][a-z0-9._-]{0,63}``, at most 16;
- ``stamp_keys``: at most 16 objects ``{"id", "public_key" (PEM SPKI, P-256 or Ed25519),
  "scopes": [create|sign|read]}`` with distinct ids;
- ``created_by``: the principal that created the account, ``stamp:<id>`` or
  ``relay:<id>`` (set by the enclave at creation, for the audit trail).
The bound bytes are canonical: labels sorted, keys sorted by id with their SPKI DER in
base64 and their scopes sorted, in compact sorted-key JSON.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from enclave_app.errors import invalid
from enclave_app.policy import syntax
from enclave_app.policy.keys import KeyFormatError, PublicKey, parse_public_key, public_key_pem
from enclave_app.policy.model import Scope

MAX_BOUND_STAMP_KEYS = 16
FIELDS = frozenset({"labels", "stamp_keys", "created_by"})
_SCOPES = frozenset(scope.value for scope in Scope)
_CREATOR_RE = re.compile(rf"(stamp|relay):{syntax.ID_PATTERN}")


@dataclass(frozen=True)
class BoundStampKey:
    id: str
    public_key: PublicKey
    spki_der: bytes
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class AccountMetadata:
    labels: frozenset[str] = frozenset()
    stamp_keys: tuple[BoundStampKey, ...] = ()
    """Sorted by id."""
    created_by: str = ""

    @property
    def empty(self) -> bool:
        return not self.labels and not self.stamp_keys and not self.created_by

    @cached_property
    def canonical(self) -> bytes:
        """The bytes bound into the envelope's additional data."""
        document = {
            "created_by": self.created_by,
            "labels": sorted(self.labels),
            "stamp_keys": [
                {
                    "id": key.id,
                    "public_key": base64.b64encode(key.spki_der).decode("ascii"),
                    "scopes": sorted(key.scopes),
                }
                for key in self.stamp_keys
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")

    def to_record(self) -> dict[str, object]:
        """The record fields, normalised (what generate_account returns)."""
        record: dict[str, object] = {}
        if self.created_by:
            record["created_by"] = self.created_by
        if self.labels:
            record["labels"] = sorted(self.labels)
        if self.stamp_keys:
            record["stamp_keys"] = [
                {
                    "id": key.id,
                    "public_key": public_key_pem(key.spki_der),
                    "scopes": sorted(key.scopes),
                }
                for key in self.stamp_keys
            ]
        return record

    def stamp_key(self, key_id: str) -> BoundStampKey | None:
        for key in self.stamp_keys:
            if key.id == key_id:
                return key
        return None


def parse_metadata(record: Mapping[str, object], where: str = "account") -> AccountMetadata:
    """The metadata fields of a record or a generate_account request (others ignored)."""
    created_by = record.get("created_by", "")
    if not isinstance(created_by, str) or (
        created_by and _CREATOR_RE.fullmatch(created_by) is None
    ):
        raise invalid(f"{where}.created_by must be stamp:<id> or relay:<id>")
    return AccountMetadata(
        labels=parse_labels(f"{where}.labels", record.get("labels", [])),
        stamp_keys=_stamp_keys(f"{where}.stamp_keys", record.get("stamp_keys", [])),
        created_by=created_by,
    )


def parse_labels(name: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or len(value) > syntax.MAX_ACCOUNT_LABELS:
        raise invalid(f"{name} must be a list of at most {syntax.MAX_ACCOUNT_LABELS} labels")
    labels: set[str] = set()
    for i, label in enumerate(value):
        if not syntax.is_label(label):
            raise invalid(f"{name}[{i}] must match {syntax.LABEL_PATTERN}")
        if label in labels:
            raise invalid(f"{name}[{i}] repeats a label")
        labels.add(label)
    return frozenset(labels)


def _stamp_keys(name: str, value: object) -> tuple[BoundStampKey, ...]:
    if not isinstance(value, list) or len(value) > MAX_BOUND_STAMP_KEYS:
        raise invalid(f"{name} must be a list of at most {MAX_BOUND_STAMP_KEYS} keys")
    keys: dict[str, BoundStampKey] = {}
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict) or set(item) != {"id", "public_key", "scopes"}:
            raise invalid(f"{where} must be an object with exactly id, public_key and scopes")
        key_id = item["id"]
        if not syntax.is_id(key_id):
            raise invalid(f"{where}.id must match {syntax.ID_PATTERN}")
        if key_id in keys:
            raise invalid(f"{where}.id repeats a key id")
        try:
            public_key, der = parse_public_key(f"{where}.public_key", item["public_key"])
        except KeyFormatError as exc:
            raise invalid(str(exc)) from None
        scopes = item["scopes"]
        if (
            not isinstance(scopes, list)
            or not all(isinstance(s, str) and s in _SCOPES for s in scopes)
            or len(set(scopes)) != len(scopes)
        ):
            raise invalid(f"{where}.scopes must be distinct names among create, sign, read")
        keys[key_id] = BoundStampKey(key_id, public_key, der, frozenset(Scope(s) for s in scopes))
    return tuple(keys[key_id] for key_id in sorted(keys))
