"""Account storage: ciphertext records, written once, never overwritten.

``Storage`` is the contract every backend meets (SQLite here; DynamoDB in
``parent_app.storage_dynamodb``, sharing the record type and the cursor format):
an insert is durable before it returns and fails with ``AccountExists`` when the
account id or the address is already taken. Records hold only what the enclave
returned: the address and two ciphertexts; nothing here can decrypt them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from parent_app.errors import AccountExists, StorageError
from parent_app.ethaddress import to_checksum_address

SCHEMA_VERSION = 1
MAX_CIPHERTEXT_BYTES = 16 * 1024
MAX_CURSOR_CHARS = 512
_UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ADDRESS_RE = re.compile(r"\A0x[0-9a-fA-F]{40}\Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class InvalidCursorError(ValueError):
    """A list cursor that this backend did not produce."""


def is_uuid(value: str) -> bool:
    """Canonical lowercase hyphenated UUID, the only account id form stored."""
    return bool(_UUID_RE.match(value))


def checksum_address(value: str) -> str:
    """EIP-55 form of a 0x-prefixed 40-hex address; mixed case must already be valid EIP-55."""
    if not _ADDRESS_RE.match(value):
        raise ValueError("address must be 0x followed by 40 hex digits")
    checksummed = to_checksum_address(bytes.fromhex(value[2:]))
    body = value[2:]
    if body != body.lower() and body != body.upper() and checksummed != value:
        raise ValueError("address has an invalid EIP-55 checksum")
    return checksummed


def format_time(moment: datetime) -> str:
    """Fixed-width UTC form: lexicographic order is chronological order."""
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class AccountRecord:
    account_id: str
    address: str
    key_id: str
    encrypted_private_key: bytes
    encrypted_data_key: bytes
    created_at: datetime

    def __post_init__(self) -> None:
        if not is_uuid(self.account_id):
            raise ValueError("account_id must be a canonical lowercase UUID")
        if checksum_address(self.address) != self.address:
            raise ValueError("address must be stored in its EIP-55 checksummed form")
        if not self.key_id or len(self.key_id) > 2048:
            raise ValueError("key_id must be a non-empty string")
        for name in ("encrypted_private_key", "encrypted_data_key"):
            blob = getattr(self, name)
            if not isinstance(blob, bytes) or not 0 < len(blob) <= MAX_CIPHERTEXT_BYTES:
                raise ValueError(f"{name} must be 1 to {MAX_CIPHERTEXT_BYTES} bytes")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")

    def __repr__(self) -> str:  # ciphertexts are not secret, but they are noise in logs
        return f"AccountRecord(account_id={self.account_id!r}, address={self.address!r})"


@dataclass(frozen=True)
class AccountPage:
    records: list[AccountRecord]
    next_cursor: str | None


class Storage(Protocol):
    def insert(self, record: AccountRecord) -> None:
        """Store a new record durably; ``AccountExists`` if its id or address is taken."""

    def get(self, account_id: str) -> AccountRecord | None: ...

    def get_by_address(self, address: str) -> AccountRecord | None:
        """Look up by address, case-insensitively."""

    def list(self, limit: int, after: str | None) -> AccountPage:
        """Records ordered by (created_at, account_id), starting after an opaque cursor."""

    def ping(self) -> None:
        """Raise ``StorageError`` unless the store answers."""

    def close(self) -> None: ...


def encode_cursor(created_at: datetime, account_id: str) -> str:
    raw = json.dumps([format_time(created_at), account_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    if not 0 < len(cursor) <= MAX_CURSOR_CHARS:
        raise InvalidCursorError("cursor has an invalid length")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, account_id = json.loads(raw.decode())
        parse_time(created)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursorError("cursor is not one this relay issued") from exc
    if not isinstance(account_id, str) or not is_uuid(account_id):
        raise InvalidCursorError("cursor is not one this relay issued")
    return created, account_id


_SCHEMA = """
CREATE TABLE accounts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    address_lower TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    encrypted_private_key BLOB NOT NULL,
    encrypted_data_key BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX accounts_by_creation ON accounts (created_at, account_id);
"""

_COLUMNS = "account_id, address, key_id, encrypted_private_key, encrypted_data_key, created_at"


class SqliteStorage:
    """SQLite in WAL mode with synchronous=FULL: a committed insert survives a crash.

    One connection shared behind a lock: writes are serialised anyway, and reads are
    short. The database file is created 0600 in a 0700 directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the account database: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise StorageError(f"cannot initialise the account database: {exc}") from exc
        except StorageError:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise StorageError(
                f"account database schema version {version} is not supported "
                f"(this relay knows version {SCHEMA_VERSION})"
            )
        tables = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        if tables:
            raise StorageError("account database has tables but no schema version: refusing it")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StorageError(f"account database error: {exc}") from exc

    def insert(self, record: AccountRecord) -> None:
        with self._locked() as conn:
            try:
                conn.execute(
                    f"INSERT INTO accounts ({_COLUMNS}, address_lower) "  # noqa: S608 constants
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.account_id,
                        record.address,
                        record.key_id,
                        record.encrypted_private_key,
                        record.encrypted_data_key,
                        format_time(record.created_at),
                        record.address.lower(),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AccountExists(
                    f"account {record.account_id} or address {record.address} already exists"
                ) from exc

    def get(self, account_id: str) -> AccountRecord | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE account_id = ?",  # noqa: S608 constants
                (account_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def get_by_address(self, address: str) -> AccountRecord | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE address_lower = ?",  # noqa: S608 constants
                (address.lower(),),
            ).fetchone()
        return None if row is None else _record(row)

    def list(self, limit: int, after: str | None) -> AccountPage:
        if limit < 1:
            raise ValueError("limit must be positive")
        query = f"SELECT {_COLUMNS} FROM accounts"  # noqa: S608 constants only
        args: tuple[object, ...] = ()
        if after is not None:
            created, account_id = decode_cursor(after)
            query += " WHERE (created_at, account_id) > (?, ?)"
            args = (created, account_id)
        query += " ORDER BY created_at, account_id LIMIT ?"
        with self._locked() as conn:
            rows = conn.execute(query, (*args, limit + 1)).fetchall()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        cursor = encode_cursor(records[-1].created_at, records[-1].account_id) if more else None
        return AccountPage(records=records, next_cursor=cursor)

    def ping(self) -> None:
        with self._locked() as conn:
            conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _record(row: tuple[object, ...]) -> AccountRecord:
    account_id, address, key_id, private_key, data_key, created_at = row
    try:
        return AccountRecord(
            account_id=str(account_id),
            address=str(address),
            key_id=str(key_id),
            encrypted_private_key=bytes(private_key),  # type: ignore[call-overload]
            encrypted_data_key=bytes(data_key),  # type: ignore[call-overload]
            created_at=parse_time(str(created_at)),
        )
    except (TypeError, ValueError) as exc:
        raise StorageError("a stored account record is malformed") from exc
