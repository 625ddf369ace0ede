"""Persistent KMS state: keys, their material and policies, aliases; and the blob format.

One store per region: `$STATE/kms/state.json` for the account's home region,
`$STATE/kms/regions/<region>/state.json` for the others (0600, atomic rewrite on every
change), so a restarted KMS decrypts what it encrypted before. Key material is 32
random bytes per key from os.urandom and never leaves this module except into AES-GCM
(and into the replica of a multi-Region key, which shares it, as on AWS).

Several processes may serve the regions of one state directory (one per regional
endpoint) and ReplicateKey writes into another region's store: every change happens
under an exclusive lock file (`state.json.lock`, flock) on fresh state, and a store
reloads whenever the file changed on disk.

Key ids are UUIDs, or `mrk-` and 32 hex digits for multi-Region keys; a multi-Region
key and its replicas share id and material, so a ciphertext from one region decrypts
in another.

Ciphertext blob (this simulator's own format, authenticated end to end):

    0x01 | len(key_id) (1 byte) | key_id (ASCII) | nonce (12) | AES-256-GCM(ct || tag)

AAD = the header (version, length, key id) || canonical JSON of the EncryptionContext,
so a blob decrypts only under its key and with exactly its encryption context.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
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
KEY_ID_RE = re.compile(
    r"\A([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})\Z"
)
REGION_RE = re.compile(r"\A[a-z]{2}(-[a-z]+)+-[0-9]\Z")
ALIAS_RE = re.compile(r"\Aalias/[A-Za-z0-9/_-]{1,250}\Z")

ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_DELETION = "PendingDeletion"
PENDING_REPLICA_DELETION = "PendingReplicaDeletion"
STATES = (ENABLED, DISABLED, PENDING_DELETION, PENDING_REPLICA_DELETION)
PENDING_STATES = frozenset({PENDING_DELETION, PENDING_REPLICA_DELETION})


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
    # Multi-Region keys: a primary lists its replicas' regions, a replica names its
    # primary's region.
    multi_region: bool = False
    primary_region: str | None = None
    replica_regions: tuple[str, ...] = ()

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
            "multi_region": self.multi_region,
            "primary_region": self.primary_region,
            "replica_regions": list(self.replica_regions),
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
                # Absent in state written before multi-Region keys were simulated.
                multi_region=bool(raw.get("multi_region", False)),
                primary_region=_optional_region(raw.get("primary_region")),
                replica_regions=tuple(
                    _optional_region(r) or "" for r in raw.get("replica_regions", [])
                ),
            )
        except (KeyError, ValueError, TypeError):
            raise StoreError("key record is malformed") from None
        if not KEY_ID_RE.match(record.key_id) or len(record.material) != 32:
            raise StoreError("key record is malformed")
        if record.state not in STATES:
            raise StoreError("key record has an unknown state")
        if record.multi_region != record.key_id.startswith("mrk-") or "" in record.replica_regions:
            raise StoreError("key record has inconsistent multi-Region fields")
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


def _optional_region(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not REGION_RE.match(raw):
        raise ValueError("bad region")
    return raw


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
    """Thread- and process-safe keys and aliases of one region, in `directory/state.json`."""

    def __init__(self, directory: Path, account_id: str, region: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.account_id = account_id
        self.region = region
        self._lock = threading.RLock()
        self._keys: dict[str, KeyRecord] = {}
        self._aliases: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        with self._lock:
            self._refresh()

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def _disk_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _refresh(self) -> None:
        """Reload when another process changed the file (hold self._lock)."""
        stamp = self._disk_stamp()
        if stamp == self._stamp:
            return
        keys: dict[str, KeyRecord] = {}
        aliases: dict[str, str] = {}
        if stamp is not None:
            keys, aliases = self._read()
        self._keys, self._aliases, self._stamp = keys, aliases, stamp

    def _read(self) -> tuple[dict[str, KeyRecord], dict[str, str]]:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
            raw = json.loads(data)
        except (OSError, ValueError):
            raise StoreError(f"cannot read {self.path}") from None
        if len(data) > MAX_STATE_BYTES or not isinstance(raw, dict):
            raise StoreError(f"{self.path} is malformed")
        raw_keys, raw_aliases = raw.get("keys"), raw.get("aliases")
        if not isinstance(raw_keys, list) or not isinstance(raw_aliases, dict):
            raise StoreError(f"{self.path} is malformed")
        keys: dict[str, KeyRecord] = {}
        for item in raw_keys:
            record = KeyRecord.from_json(item)
            keys[record.key_id] = record
        aliases: dict[str, str] = {}
        for alias, key_id in raw_aliases.items():
            if not isinstance(alias, str) or not ALIAS_RE.match(alias) or key_id not in keys:
                raise StoreError(f"{self.path} has a bad alias")
            aliases[alias] = key_id
        return keys, aliases

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            self._refresh()
            yield

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Exclusive across threads and processes, on fresh state; saves on success."""
        with self._lock, open(self.directory / f"{STATE_FILE}.lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._refresh()
            try:
                yield
                self._save()
            except BaseException:
                self._stamp = None  # memory may be ahead of the disk: reload next time
                raise

    def _save(self) -> None:
        document = {
            "version": 1,
            "keys": [record.to_json() for record in self._keys.values()],
            "aliases": dict(sorted(self._aliases.items())),
        }
        write_private_file(self.path, json.dumps(document, indent=1).encode("utf-8"))
        self._stamp = self._disk_stamp()

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:key/{key_id}"

    def alias_arn(self, alias: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:{alias}"

    @staticmethod
    def new_key_id(multi_region: bool = False) -> str:
        return f"mrk-{uuid.uuid4().hex}" if multi_region else str(uuid.uuid4())

    def create_key(
        self,
        policy: str,
        description: str,
        key_id: str | None = None,
        tags: tuple[tuple[str, str], ...] = (),
    ) -> KeyRecord:
        key_id = key_id or self.new_key_id()
        record = KeyRecord(
            key_id=key_id,
            arn=self.key_arn(key_id),
            material=os.urandom(32),
            policy=policy,
            description=description,
            state=ENABLED,
            creation_date=time.time(),
            tags=tags,
            multi_region=key_id.startswith("mrk-"),
        )
        return self.insert(record)

    def insert(self, record: KeyRecord) -> KeyRecord:
        """Add a new key record (a created key, or a replica); its id must be new here."""
        if not KEY_ID_RE.match(record.key_id) or record.arn != self.key_arn(record.key_id):
            raise StoreError("bad key id or ARN for this region")
        with self._changing():
            if record.key_id in self._keys:
                raise StoreError("duplicate key id")
            self._keys[record.key_id] = record
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
        with self._reading():
            if ref.startswith("alias/"):
                key_id = self._aliases.get(ref)
                return None if key_id is None else self._keys.get(key_id)
            return self._keys.get(ref)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._reading():
            return self._keys.get(key_id)

    def list_keys(self) -> list[KeyRecord]:
        with self._reading():
            return sorted(self._keys.values(), key=lambda r: (r.creation_date, r.key_id))

    def update(self, record: KeyRecord, **changes: Any) -> KeyRecord:
        with self._changing():
            current = self._keys.get(record.key_id)
            if current is None:
                raise StoreError("key vanished")
            updated = replace(current, **changes)
            self._keys[record.key_id] = updated
            return updated

    def create_alias(self, alias: str, key_id: str) -> bool:
        """False if the alias exists already."""
        with self._changing():
            if alias in self._aliases:
                return False
            self._aliases[alias] = key_id
            return True

    def update_alias(self, alias: str, key_id: str) -> bool:
        """Point an existing alias at another key; False if the alias does not exist."""
        with self._changing():
            if alias not in self._aliases or key_id not in self._keys:
                return False
            self._aliases[alias] = key_id
            return True

    def delete_alias(self, alias: str) -> str | None:
        """Remove an alias; the key id it pointed to, or None if it did not exist."""
        with self._changing():
            return self._aliases.pop(alias, None)

    def alias_target(self, alias: str) -> str | None:
        with self._reading():
            return self._aliases.get(alias)

    def aliases(self) -> list[tuple[str, str]]:
        with self._reading():
            return sorted(self._aliases.items())


class RegionalStores:
    """The stores of every region of one simulated account, opened on demand."""

    def __init__(self, kms_dir: Path, account_id: str, home_region: str) -> None:
        self.kms_dir = Path(kms_dir)
        self.account_id = account_id
        self.home_region = home_region
        self._lock = threading.Lock()
        self._stores: dict[str, KeyStore] = {}

    def directory(self, region: str) -> Path:
        if not REGION_RE.match(region):
            raise StoreError(f"{region!r} is not a region name")
        if region == self.home_region:
            return self.kms_dir
        return self.kms_dir / "regions" / region

    def store(self, region: str) -> KeyStore:
        with self._lock:
            store = self._stores.get(region)
            if store is None:
                store = KeyStore(self.directory(region), self.account_id, region)
                self._stores[region] = store
            return store
