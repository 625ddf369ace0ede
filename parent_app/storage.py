"""Account storage: ciphertext records, written once, never overwritten.

``Storage`` is the contract every backend meets (SQLite here; DynamoDB in
``parent_app.storage_dynamodb``, sharing the record type and the cursor format):
an insert is durable before it returns and fails with ``AccountExists`` when the
account id or the address is already taken. Records hold only what the enclave
returned: the address, two ciphertexts and the account's metadata (labels, account-bound
stamp keys, creator), which the enclave seals with the key; nothing here can decrypt them.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from parent_app.errors import AccountExists, RelayError, StorageError, StorageUnavailable
from parent_app.ethaddress import to_checksum_address

SCHEMA_VERSION = 3
MAX_CIPHERTEXT_BYTES = 16 * 1024
#: The metadata of one account: 16 labels and 16 PEM keys fit with room to spare.
MAX_METADATA_BYTES = 16 * 1024
#: The fields the enclave seals with an account (enclave_app.account_metadata).
METADATA_FIELDS = frozenset({"labels", "stamp_keys", "created_by"})
MAX_CURSOR_CHARS = 512
_UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ADDRESS_RE = re.compile(r"\A0x[0-9a-fA-F]{40}\Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")

log = logging.getLogger(__name__)


def metadata_text(fields: object) -> str:
    """The stored form of an account's metadata: compact sorted-key JSON of an object
    holding only ``METADATA_FIELDS`` ("" when it holds none). The enclave validates the
    values (and binds them into the sealed key); here only the shape and size."""
    if not isinstance(fields, dict) or not set(fields) <= METADATA_FIELDS:
        raise ValueError(f"metadata must be an object of {sorted(METADATA_FIELDS)}")
    if not fields:
        return ""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return text


class InvalidCursorError(ValueError):
    """A list cursor that this backend did not produce."""


def is_uuid(value: str) -> bool:
    """Canonical lowercase hyphenated UUID, the only account id form stored."""
    return bool(_UUID_RE.match(value))


@functools.lru_cache(maxsize=1 << 16)
def checksum_address(value: str) -> str:
    """EIP-55 form of a 0x-prefixed 40-hex address; mixed case must already be valid EIP-55.

    Every storage read checks the stored form; a pure function of its input, it is
    memoised (a refusal raises and is not cached)."""
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
    """The inverse of ``format_time`` (the exact fixed-width form only)."""
    if not _TIME_RE.match(text):
        raise ValueError(f"time data {text[:40]!r} does not match format {_TIME_FORMAT!r}")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


@dataclass(frozen=True)
class AccountRecord:
    account_id: str
    address: str
    key_id: str
    encrypted_private_key: bytes
    encrypted_data_key: bytes
    created_at: datetime
    #: Compact sorted-key JSON of the enclave's metadata fields, "" for none (see
    #: ``metadata_text``); sent back with every op on the account, unchanged.
    metadata: str = ""

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
        if self.metadata and metadata_text(json.loads(self.metadata)) != self.metadata:
            raise ValueError("metadata must be the canonical JSON of the metadata fields")

    @functools.cached_property
    def metadata_fields(self) -> dict[str, object]:
        """The metadata as the enclave's record fields (empty for none). Parsed once per
        record (records never change, and a cached one serves every op on its account);
        callers spread it into a new dict and never change it."""
        if not self.metadata:
            return {}
        fields: dict[str, object] = json.loads(self.metadata)
        return fields

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
        """Raise ``StorageError`` (or ``StorageUnavailable``) unless the store answers
        and, where it can tell, takes writes."""

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


_SCHEMA_V1 = """
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
#: Version 2 adds the one-row table the readiness probe writes.
_SCHEMA_V2 = """
CREATE TABLE storage_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    written_at TEXT NOT NULL
);
"""
#: Version 3 adds the account's metadata (labels, account-bound keys, creator).
_SCHEMA_V3 = """
ALTER TABLE accounts ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
"""
_MIGRATIONS = {
    0: _SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3,
    1: _SCHEMA_V2 + _SCHEMA_V3,
    2: _SCHEMA_V3,
}

_COLUMNS = (
    "account_id, address, key_id, encrypted_private_key, encrypted_data_key, created_at, metadata"
)

#: SQLite primary result codes that mean "cannot use the store now", not "bad data":
#: answered 503 storage_unavailable with Retry-After (everything else: 500 storage_error).
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_PROTOCOL,
    }
)
#: errno values meaning "exists, but not for writing": the store is opened read-only.
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: How long a write probe's verdict stands (``ping``, so /readyz, is cheap to poll).
PROBE_TTL_SECONDS = 2.0


@dataclass(frozen=True)
class JournalSettings:
    """How SQLite journals and syncs. ``bench/bench_storage.py`` compares the options."""

    journal_mode: str = "TRUNCATE"
    synchronous: str = "FULL"
    locking_mode: str = "NORMAL"

    def apply(self, conn: sqlite3.Connection) -> None:
        """Set the modes on ``conn``; ``StorageError`` if SQLite kept another journal mode
        (a WAL database still open elsewhere cannot leave WAL)."""
        # locking_mode first: with WAL it decides where the WAL index lives.
        conn.execute(f"PRAGMA locking_mode={self.locking_mode}")
        (mode,) = conn.execute(f"PRAGMA journal_mode={self.journal_mode}").fetchone()
        if str(mode).upper() != self.journal_mode.upper():
            raise StorageError(
                f"the account database stays in journal mode {mode}, not "
                f"{self.journal_mode}: is another process holding it open?"
            )
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA mmap_size=0")  # never map the database file either


#: The relay's choice, measured in docs/reliability.md: a rollback journal (no
#: memory-mapped WAL index, so no SIGBUS when the file turns immutable or the disk
#: fills), truncated and fsynced at each commit, so an answered insert survives a
#: crash or power loss; NORMAL locking, so another process can take an online backup
#: (the SQLite backup API) while the relay runs.
DURABLE = JournalSettings()


def storage_failure(exc: sqlite3.Error, doing: str) -> RelayError:
    """The typed relay error for a SQLite failure while ``doing`` something."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if isinstance(code, int) and code & 0xFF in _UNAVAILABLE:
        return StorageUnavailable(f"account storage is unavailable while {doing} ({name})")
    return StorageError(f"account database error while {doing}: {exc}")


class _Waiting:
    """The outcome of an insert no commit has reached yet."""


_WAITING = _Waiting()


class _PendingInsert:
    """One ``insert`` waiting for a group commit; ``outcome`` is set (None: stored, or the
    error to raise) by the thread that commits it, under the storage lock."""

    __slots__ = ("outcome", "record")

    def __init__(self, record: AccountRecord) -> None:
        self.record = record
        self.outcome: RelayError | _Waiting | None = _WAITING


def _insert_one(conn: sqlite3.Connection, record: AccountRecord) -> AccountExists | None:
    """Insert ``record`` inside the open transaction, behind its own savepoint: a
    duplicate id or address undoes this record only."""
    conn.execute("SAVEPOINT one_account")
    try:
        conn.execute(
            f"INSERT INTO accounts ({_COLUMNS}, address_lower) "  # noqa: S608 constants
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.account_id,
                record.address,
                record.key_id,
                record.encrypted_private_key,
                record.encrypted_data_key,
                format_time(record.created_at),
                record.metadata,
                record.address.lower(),
            ),
        )
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO one_account")
        conn.execute("RELEASE one_account")
        return AccountExists(
            f"account {record.account_id} or address {record.address} already exists"
        )
    conn.execute("RELEASE one_account")
    return None


@dataclass(frozen=True)
class _Probe:
    at: float
    failure: str | None  # the StorageUnavailable message, None when writable


class SqliteStorage:
    """SQLite with a rollback journal and synchronous=FULL (see ``DURABLE``).

    One connection shared behind a lock: writes are serialised anyway, and reads are
    short. Inserts are committed in groups: an insert queues its record and, once it
    holds the lock, commits every record queued so far in one transaction (one set of
    fsyncs), each behind its own savepoint so that a duplicate fails only its own
    insert. Every insert returns only after the commit that made its record durable;
    concurrent creations share a commit instead of queueing for one each (about 13 ms
    here; docs/performance.md, "Account creation").

    The database file is created 0600 in a 0700 directory. I/O failures (read-only
    or immutable file, full disk, a lock held too long) raise ``StorageUnavailable``
    (503, Retry-After) and never take the process down; ``ping`` proves the store is
    writable with a real, cached write. A store that exists but cannot be opened for
    writing (read-only file system, immutable or read-only file) is opened read-only:
    reads (signing) go on, writes and ``ping`` answer 503, and ``ping`` reopens it for
    writing once that works again.
    """

    def __init__(self, path: str | os.PathLike[str], *, journal: JournalSettings = DURABLE) -> None:
        self.path = Path(path)
        self._journal = journal
        self._lock = threading.Lock()
        self._pending: list[_PendingInsert] = []  # inserts waiting for a group commit
        self._pending_lock = threading.Lock()
        self._probe: _Probe | None = None
        self.read_only = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._conn = self._open_writable()
        except OSError as exc:
            if exc.errno not in _NOT_WRITABLE or not self.path.is_file():
                raise StorageError(f"cannot open the account database: {exc}") from exc
            self._conn = self._open_read_only(exc)

    def _open_writable(self) -> sqlite3.Connection:
        """A read-write connection, configured and migrated (``OSError`` if not writable)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        try:
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the account database: {exc}") from exc
        try:
            self._journal.apply(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            _migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot initialise the account database: {exc}") from exc
        except StorageError:
            conn.close()
            raise
        return conn

    def _open_read_only(self, why: OSError) -> sqlite3.Connection:
        log.error("account database %s is not writable (%s): serving reads only", self.path, why)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10.0)
            conn.isolation_level = None
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the account database read-only: {exc}") from exc
        if version != SCHEMA_VERSION:
            conn.close()
            raise StorageError(
                f"account database schema version {version} needs a migration, and the "
                f"file is not writable ({why.strerror})"
            )
        self.read_only = True
        self._probe = _Probe(time.monotonic(), f"account storage is read-only ({why.strerror})")
        return conn

    def _reopen_writable(self) -> None:
        """Swap a read-only connection for a writable one once the fault is gone (lock held)."""
        try:
            conn = self._open_writable()
        except (OSError, StorageError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            self._record_probe(f"account storage is read-only ({reason})")
            return
        self._conn.close()
        self._conn, self.read_only = conn, False
        log.warning("account database %s is writable again", self.path)

    @contextmanager
    def _locked(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                failure = storage_failure(exc, doing)
                if isinstance(failure, StorageUnavailable):
                    self._record_probe(failure.message)
                raise failure from exc

    def _record_probe(self, failure: str | None) -> None:
        """Keep the latest verdict on writability; log when it changes (lock held)."""
        before = self._probe
        self._probe = _Probe(time.monotonic(), failure)
        if failure is not None and (before is None or before.failure is None):
            log.error("account storage %s is not writable: %s", self.path, failure)
        elif failure is None and before is not None and before.failure is not None:
            log.warning("account storage %s is writable again", self.path)

    def insert(self, record: AccountRecord) -> None:
        pending = _PendingInsert(record)
        with self._pending_lock:
            self._pending.append(pending)
        with self._lock:
            if pending.outcome is _WAITING:  # no commit took it yet: commit the group
                with self._pending_lock:
                    group, self._pending = self._pending, []
                self._commit_group(group)
        if isinstance(pending.outcome, RelayError):
            raise pending.outcome

    def _commit_group(self, group: list[_PendingInsert]) -> None:
        """Store ``group`` in one transaction and set each insert's outcome (lock held)."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            for pending in group:
                pending.outcome = _insert_one(conn, pending.record)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failure = storage_failure(exc, "storing an account")
            if isinstance(failure, StorageUnavailable):
                self._record_probe(failure.message)
            for pending in group:
                if not isinstance(pending.outcome, AccountExists):
                    pending.outcome = failure
            return
        self._record_probe(None)  # a commit is the best probe

    def get(self, account_id: str) -> AccountRecord | None:
        with self._locked("reading an account") as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE account_id = ?",  # noqa: S608 constants
                (account_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def get_by_address(self, address: str) -> AccountRecord | None:
        with self._locked("reading an account") as conn:
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
        with self._locked("listing accounts") as conn:
            rows = conn.execute(query, (*args, limit + 1)).fetchall()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        cursor = encode_cursor(records[-1].created_at, records[-1].account_id) if more else None
        return AccountPage(records=records, next_cursor=cursor)

    def ping(self) -> None:
        """Raise unless the store reads and takes a durable write (cached for
        ``PROBE_TTL_SECONDS``, and refreshed by every insert)."""
        with self._lock:
            probe = self._probe
            fresh = probe is not None and time.monotonic() - probe.at < PROBE_TTL_SECONDS
            if not fresh and self.read_only:
                self._reopen_writable()
        probe = self._probe
        if probe is None or time.monotonic() - probe.at >= PROBE_TTL_SECONDS:
            with self._locked("probing that storage is writable") as conn:
                conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()
                conn.execute(
                    "INSERT OR REPLACE INTO storage_probe (id, written_at) VALUES (1, ?)",
                    (format_time(datetime.now(UTC)),),
                )
                self._record_probe(None)
            return
        if probe.failure is not None:
            raise StorageUnavailable(probe.failure)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction, or refuse the file."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version not in _MIGRATIONS:
        raise StorageError(
            f"account database schema version {version} is not supported "
            f"(this relay knows version {SCHEMA_VERSION})"
        )
    if (
        version == 0
        and conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    ):
        raise StorageError("account database has tables but no schema version: refusing it")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _record(row: tuple[object, ...]) -> AccountRecord:
    account_id, address, key_id, private_key, data_key, created_at, metadata = row
    try:
        return AccountRecord(
            account_id=str(account_id),
            address=str(address),
            key_id=str(key_id),
            encrypted_private_key=bytes(private_key),  # type: ignore[call-overload]
            encrypted_data_key=bytes(data_key),  # type: ignore[call-overload]
            created_at=parse_time(str(created_at)),
            metadata=str(metadata),
        )
    except (TypeError, ValueError) as exc:
        raise StorageError("a stored account record is malformed") from exc
