"""Check an account database (a backup, or a store at rest) without any KMS call.

What a record must look like is decided by the relay's own record type
(``parent_app.storage.AccountRecord``: canonical UUID, EIP-55 address, key id, blob
sizes, timezone-aware time) plus what only an operator tool needs to know:

* the key id is one KMS accepts as ``KeyId`` (key id, multi-Region key id, key ARN,
  alias name or alias ARN): nothing else could have created the record;
* the sealed private key is the enclave's envelope (``enclave_app.envelope``): a
  known version byte, then nonce, 32 key bytes and the GCM tag, nothing more or less;
* the data key is a KMS ``CiphertextBlob``: at least a 256-bit key plus a tag, at most
  the 6144 bytes KMS ever returns;
* the address index column agrees with the address.

The file is opened read-only; SQLite's integrity check runs first, so a torn or
edited page is found before any record is read.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from enclave_app import envelope
from nitro_wallet.backup_errors import BackupCode, BackupError
from parent_app.storage import SCHEMA_VERSION, AccountRecord, format_time, parse_time

SQLITE_HEADER = b"SQLite format 3\x00"
PRIVATE_KEY_BYTES = 32
GCM_TAG_BYTES = 16
SEALED_KEY_BYTES = 1 + envelope.NONCE_BYTES + PRIVATE_KEY_BYTES + GCM_TAG_BYTES
KNOWN_ENVELOPE_VERSIONS = envelope.VERSIONS
MIN_DATA_KEY_BLOB_BYTES = envelope.DATA_KEY_BYTES + GCM_TAG_BYTES
MAX_DATA_KEY_BLOB_BYTES = 6144  # KMS CiphertextBlob maximum (API reference)
RECORD_FIELDS = tuple(f.name for f in fields(AccountRecord))
TABLE_COLUMNS = ("seq", *RECORD_FIELDS, "address_lower")

_KEY_ID = r"(?:mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_ARN_PREFIX = r"arn:aws(?:-[a-z]+)*:kms:[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}:[0-9]{12}:"
KMS_KEY_ID_RE = re.compile(rf"\A(?:{_KEY_ID}|{_ALIAS}|{_ARN_PREFIX}(?:key/{_KEY_ID}|{_ALIAS}))\Z")


@dataclass(frozen=True)
class CheckReport:
    """What a checked database holds: counts only, nothing secret."""

    accounts: int
    schema_version: int
    key_ids: dict[str, int] = field(default_factory=dict)
    envelope_versions: dict[int, int] = field(default_factory=dict)
    first_created_at: str | None = None
    last_created_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "schema_version": self.schema_version,
            "key_ids": self.key_ids,
            "envelope_versions": {str(v): n for v, n in sorted(self.envelope_versions.items())},
            "first_created_at": self.first_created_at,
            "last_created_at": self.last_created_at,
        }


def read_only_uri(path: Path) -> str:
    """A ``file:`` URI that opens ``path`` read-only and never creates it."""
    return f"{path.resolve().as_uri()}?mode=ro"


def check_database(path: Path) -> CheckReport:
    """Check every page and every record of the database at ``path``.

    Raises ``BackupError`` naming the first problem: ``not_a_store`` (not SQLite,
    integrity check failed), ``schema_mismatch`` or ``bad_record``.
    """
    _check_header(path)
    try:
        connection = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot open {path}: {exc}") from None
    with closing(connection):
        try:
            _check_integrity(connection, path)
            version = _check_schema(connection, path)
            return _check_records(connection, version)
        except sqlite3.DatabaseError as exc:
            raise BackupError(BackupCode.NOT_A_STORE, f"{path}: {exc}") from None


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot read {path}: {exc.strerror}") from None
    if header != SQLITE_HEADER:
        raise BackupError(BackupCode.NOT_A_STORE, f"{path} is not an SQLite database")


def _check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    problems = [str(row[0]) for row in connection.execute("PRAGMA integrity_check(5)")]
    if problems != ["ok"]:
        raise BackupError(
            BackupCode.NOT_A_STORE, f"{path} fails SQLite's integrity check: {problems[0]}"
        )


def _check_schema(connection: sqlite3.Connection, path: Path) -> int:
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        raise BackupError(
            BackupCode.SCHEMA_MISMATCH,
            f"{path} has account schema version {version}; this tool knows {SCHEMA_VERSION}",
        )
    columns = {str(row[1]) for row in connection.execute("PRAGMA table_info(accounts)")}
    missing = [name for name in TABLE_COLUMNS if name not in columns]
    if missing:
        raise BackupError(
            BackupCode.SCHEMA_MISMATCH, f"{path}: table accounts lacks column(s) {missing}"
        )
    return int(version)


def _rows(connection: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    connection.row_factory = sqlite3.Row
    names = ", ".join(TABLE_COLUMNS)
    yield from connection.execute(f"SELECT {names} FROM accounts ORDER BY seq")  # noqa: S608


def _check_records(connection: sqlite3.Connection, version: int) -> CheckReport:
    count = 0
    key_ids: Counter[str] = Counter()
    versions: Counter[int] = Counter()
    first: str | None = None
    last: str | None = None
    for row in _rows(connection):
        record = check_row(row)
        count += 1
        key_ids[record.key_id] += 1
        versions[record.encrypted_private_key[0]] += 1
        created = format_time(record.created_at)
        first = created if first is None or created < first else first
        last = created if last is None or created > last else last
    return CheckReport(
        accounts=count,
        schema_version=version,
        key_ids=dict(sorted(key_ids.items())),
        envelope_versions=dict(versions),
        first_created_at=first,
        last_created_at=last,
    )


def check_row(row: sqlite3.Row) -> AccountRecord:
    """The record of one table row, or ``bad_record`` naming the row and the reason."""
    try:
        record = _record(row)
        _check_record(record, row["address_lower"])
    except ValueError as exc:
        raise BackupError(BackupCode.BAD_RECORD, f"{_name(row)}: {exc}") from None
    return record


def _record(row: sqlite3.Row) -> AccountRecord:
    values: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        value = row[name]
        expected: type = bytes if name.startswith("encrypted_") else str
        if not isinstance(value, expected):
            raise ValueError(f"{name} is stored as {type(value).__name__}, not {expected.__name__}")
        values[name] = value
    values["created_at"] = parse_time(values["created_at"])
    return AccountRecord(**values)


def _check_record(record: AccountRecord, address_lower: object) -> None:
    if address_lower != record.address.lower():
        raise ValueError("address_lower does not match the address")
    if not KMS_KEY_ID_RE.match(record.key_id):
        raise ValueError("key_id is not a KMS key id, key ARN or alias")
    sealed = record.encrypted_private_key
    if sealed[0] not in KNOWN_ENVELOPE_VERSIONS:
        raise ValueError(f"encrypted_private_key has unknown envelope version {sealed[0]}")
    if len(sealed) != SEALED_KEY_BYTES:
        raise ValueError(
            f"encrypted_private_key is {len(sealed)} bytes; the envelope is {SEALED_KEY_BYTES}"
        )
    blob = record.encrypted_data_key
    if not MIN_DATA_KEY_BLOB_BYTES <= len(blob) <= MAX_DATA_KEY_BLOB_BYTES:
        raise ValueError(
            f"encrypted_data_key is {len(blob)} bytes; a KMS CiphertextBlob of a 256-bit "
            f"key is {MIN_DATA_KEY_BLOB_BYTES} to {MAX_DATA_KEY_BLOB_BYTES}"
        )


def _name(row: sqlite3.Row) -> str:
    """How a message names a row: its sequence number and account id (both public)."""
    account_id = row["account_id"]
    shown = account_id if isinstance(account_id, str) and len(account_id) <= 64 else "?"
    return f"record seq={row['seq']} account_id={shown!r}"
