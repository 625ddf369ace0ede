"""Persistent KMS state: keys, their material and policies, aliases; and the blob format.

`$STATE/kms/state.json` (0600, atomic rewrite on every change) holds everything, so a
restarted KMS decrypts what it encrypted before. Key material is 32 random bytes per
key from os.urandom and never leaves this module except into AES-GCM.

Ciphertext blob (this simulator's own format, authenticated end to end):

    0x01 | len(key_id) (1 byte) | key_id (ASCII) | nonce (12) | AES-256-GCM(ct || tag)

AAD = the header (version, length, key id) || canonical JSON of the EncryptionContext,
so a blob decrypts only under its key and with exactly its encryption context.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nitro_sim.principals import write_private_file

STATE_FILE = "state.json"
BLOB_VERSION = 0x01
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_STATE_BYTES = 16 * 1024 * 1024
KEY_ID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
ALIAS_RE = re.compile(r"\Aalias/[A-Za-z0-9/_-]{1,250}\Z")

ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_DELETION = "PendingDeletion"


class StoreError(Exception):
    """state.json is unreadable or inconsistent."""


class BlobError(Exception):
    """A ciphertext blob is malformed or does not authenticate."""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    arn: str
    material: bytes
    policy: str
    description: str
    state: str
    creation_date: float
    deletion_date: float | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (TagKey, TagValue), in insertion order
    rotation_period_days: int | None = None  # None: automatic rotation is disabled
    rotation_enabled_date: float | None = None

    def __repr__(self) -> str:  # never print key material
        return f"KeyRecord(key_id={self.key_id!r}, state={self.state!r})"

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "arn": self.arn,
            "material": base64.b64encode(self.material).decode("ascii"),
            "policy": self.policy,
            "description": self.description,
            "state": self.state,
            "creation_date": self.creation_date,
            "deletion_date": self.deletion_date,
            "tags": [[name, value] for name, value in self.tags],
            "rotation_period_days": self.rotation_period_days,
            "rotation_enabled_date": self.rotation_enabled_date,
        }

    @classmethod
    def from_json(cls, raw: Any) -> KeyRecord:
        if not isinstance(raw, dict):
            raise StoreError("key record must be an object")
        try:
            material = base64.b64decode(raw["material"], validate=True)
            record = cls(
                key_id=str(raw["key_id"]),
                arn=str(raw["arn"]),
                material=material,
                policy=str(raw["policy"]),
                description=str(raw["description"]),
                state=str(raw["state"]),
                creation_date=float(raw["creation_date"]),
                deletion_date=None if raw["deletion_date"] is None else float(raw["deletion_date"]),
                # Absent in state written before tags and rotation were simulated.
                tags=_tags_from_json(raw.get("tags", [])),
                rotation_period_days=_optional_int(raw.get("rotation_period_days")),
                rotation_enabled_date=_optional_float(raw.get("rotation_enabled_date")),
            )
        except (KeyError, ValueError, TypeError):
            raise StoreError("key record is malformed") from None
        if not KEY_ID_RE.match(record.key_id) or len(record.material) != 32:
            raise StoreError("key record is malformed")
        if record.state not in (ENABLED, DISABLED, PENDING_DELETION):
            raise StoreError("key record has an unknown state")
        return record


def _tags_from_json(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise TypeError("tags must be a list")
    tags: list[tuple[str, str]] = []
    for item in raw:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)
        ):
            raise TypeError("a tag must be a [key, value] pair of strings")
        tags.append((item[0], item[1]))
    if len({name for name, _ in tags}) != len(tags):
        raise ValueError("duplicate tag key")
    return tuple(tags)


def _optional_int(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int:
        raise TypeError("expected an integer")
    return raw


def _optional_float(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def canonical_context(context: Mapping[str, str]) -> bytes:
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("utf-8")


def seal(record: KeyRecord, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    key_id = record.key_id.encode("ascii")
    header = bytes([BLOB_VERSION, len(key_id)]) + key_id
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(record.material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + sealed


def blob_key_id(blob: bytes) -> str:
    """The key id a blob names (unauthenticated until `open_blob` succeeds)."""
    if len(blob) < 2 or blob[0] != BLOB_VERSION:
        raise BlobError("unknown ciphertext format")
    length = blob[1]
    if len(blob) < 2 + length + NONCE_BYTES + TAG_BYTES:
        raise BlobError("ciphertext is truncated")
    try:
        key_id = blob[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError:
        raise BlobError("ciphertext names no key") from None
    if not KEY_ID_RE.match(key_id):
        raise BlobError("ciphertext names no key")
    return key_id


def open_blob(record: KeyRecord, blob: bytes, context: Mapping[str, str]) -> bytes:
    if blob_key_id(blob) != record.key_id:
        raise BlobError("ciphertext belongs to another key")
    split = 2 + blob[1]
    header, nonce, sealed = (
        blob[:split],
        blob[split : split + NONCE_BYTES],
        blob[split + NONCE_BYTES :],
    )
    try:
        return AESGCM(record.material).decrypt(nonce, sealed, header + canonical_context(context))
    except InvalidTag:
        raise BlobError("ciphertext or encryption context does not authenticate") from None


class KeyStore:
    """Thread-safe keys and aliases, persisted to `directory/state.json`."""

    def __init__(self, directory: Path, account_id: str, region: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.account_id = account_id
        self.region = region
        self._lock = threading.RLock()
        self._keys: dict[str, KeyRecord] = {}
        self._aliases: dict[str, str] = {}
        self._load()

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
            raw = json.loads(data)
        except (OSError, ValueError):
            raise StoreError(f"cannot read {self.path}") from None
        if len(data) > MAX_STATE_BYTES or not isinstance(raw, dict):
            raise StoreError(f"{self.path} is malformed")
        keys, aliases = raw.get("keys"), raw.get("aliases")
        if not isinstance(keys, list) or not isinstance(aliases, dict):
            raise StoreError(f"{self.path} is malformed")
        for item in keys:
            record = KeyRecord.from_json(item)
            self._keys[record.key_id] = record
        for alias, key_id in aliases.items():
            if not isinstance(alias, str) or not ALIAS_RE.match(alias) or key_id not in self._keys:
                raise StoreError(f"{self.path} has a bad alias")
            self._aliases[alias] = key_id

    def _save(self) -> None:
        document = {
            "version": 1,
            "keys": [record.to_json() for record in self._keys.values()],
            "aliases": dict(sorted(self._aliases.items())),
        }
        write_private_file(self.path, json.dumps(document, indent=1).encode("utf-8"))

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:key/{key_id}"

    def alias_arn(self, alias: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:{alias}"

    @staticmethod
    def new_key_id() -> str:
        return str(uuid.uuid4())

    def create_key(
        self,
        policy: str,
        description: str,
        key_id: str | None = None,
        tags: tuple[tuple[str, str], ...] = (),
    ) -> KeyRecord:
        key_id = key_id or self.new_key_id()
        if not KEY_ID_RE.match(key_id) or key_id in self._keys:
            raise StoreError("bad or duplicate key id")
        record = KeyRecord(
            key_id=key_id,
            arn=self.key_arn(key_id),
            material=os.urandom(32),
            policy=policy,
            description=description,
            state=ENABLED,
            creation_date=time.time(),
            tags=tags,
        )
        with self._lock:
            self._keys[key_id] = record
            self._save()
        return record

    def resolve(self, key_ref: str) -> KeyRecord | None:
        """A key by id, key ARN, alias name or alias ARN; None if unknown."""
        prefix = f"arn:aws:kms:{self.region}:{self.account_id}:"
        if key_ref.startswith(prefix):
            ref = key_ref[len(prefix) :]
            if not ref.startswith(("alias/", "key/")):
                return None
            ref = ref.removeprefix("key/")
        elif key_ref.startswith("arn:"):
            return None  # another partition, account or region
        else:
            ref = key_ref
        with self._lock:
            if ref.startswith("alias/"):
                key_id = self._aliases.get(ref)
                return None if key_id is None else self._keys.get(key_id)
            return self._keys.get(ref)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get(key_id)

    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda r: (r.creation_date, r.key_id))

    def update(self, record: KeyRecord, **changes: Any) -> KeyRecord:
        with self._lock:
            current = self._keys.get(record.key_id)
            if current is None:
                raise StoreError("key vanished")
            updated = replace(current, **changes)
            self._keys[record.key_id] = updated
            self._save()
            return updated

    def create_alias(self, alias: str, key_id: str) -> bool:
        """False if the alias exists already."""
        with self._lock:
            if alias in self._aliases:
                return False
            self._aliases[alias] = key_id
            self._save()
            return True

    def update_alias(self, alias: str, key_id: str) -> bool:
        """Point an existing alias at another key; False if the alias does not exist."""
        with self._lock:
            if alias not in self._aliases or key_id not in self._keys:
                return False
            self._aliases[alias] = key_id
            self._save()
            return True

    def delete_alias(self, alias: str) -> str | None:
        """Remove an alias; the key id it pointed to, or None if it did not exist."""
        with self._lock:
            key_id = self._aliases.pop(alias, None)
            if key_id is not None:
                self._save()
            return key_id

    def alias_target(self, alias: str) -> str | None:
        with self._lock:
            return self._aliases.get(alias)

    def aliases(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._aliases.items())
