"""Online backup and restore of the relay's SQLite account store.

The store holds ciphertext only (docs/security.md), so a backup does too: it is
safe to keep off the host, but it is the only copy of the accounts besides the store
itself, so it is written as carefully as the store.

Backup (``online_backup``):
  1. the store is opened read-only (``mode=ro``: never created, never written) and
     copied with SQLite's backup API in one step, i.e. from one read snapshot: in WAL
     mode the relay keeps inserting meanwhile and the copy is consistent. A store the
     relay holds exclusively stays ``store_busy`` until the timeout, never hangs;
  2. the copy is a private temporary file next to the output (0600, ``O_EXCL``),
     switched to a self-contained rollback journal, checked (``backup_check``), fsynced,
     renamed over the output, and the directory fsynced: a crash leaves the old backup
     or the new one, never half of one;
  3. a manifest (``<output>.manifest.json``: accounts, sha256, size, time, source) is
     written the same way next to it.

Restore (``restore``): checks the backup (and its manifest when there is one) before
touching anything; creates a missing store with the relay's own code
(``parent_app.storage.SqliteStorage``: schema, WAL, 0600); then copies the records in
one write transaction that first counts the store: a store holding accounts is refused
unless ``force``, and then it is first saved next to itself (``<store>.pre-restore-*``),
so a restore never loses an account either.

Run both as the store's owner (the relay's user): SQLite creates ``-wal``/``-shm``
files as whoever opens a WAL database, and files the relay cannot open stop it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from nitro_wallet.backup_check import TABLE_COLUMNS, CheckReport, check_database, read_only_uri
from nitro_wallet.backup_errors import BackupCode, BackupError
from parent_app.errors import StorageError
from parent_app.storage import SqliteStorage

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_TIMEOUT_SECONDS = 60.0
_BUSY_SLEEP_SECONDS = 0.05
_HASH_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    duration_seconds: float


@dataclass(frozen=True)
class RestoreResult:
    store: Path
    restored: int
    replaced: int
    saved_previous: Path | None


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


# ----------------------------------------------------------------- ownership


def check_owner(path: Path) -> None:
    """Refuse to open the store as another user than its owner (see module docstring).

    A store that does not exist yet is judged by the nearest existing directory above it.
    """
    target = next(p for p in (path, *path.parents) if p.exists())
    try:
        owner = target.stat().st_uid
    except OSError as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot stat {target}: {exc.strerror}") from None
    if owner != os.geteuid():
        raise BackupError(
            BackupCode.WRONG_USER,
            f"{target} belongs to uid {owner}, this process runs as uid {os.geteuid()}: run as "
            "the relay's user (e.g. sudo -u nitro-wallet), or SQLite may leave -wal/-shm files "
            "the relay cannot open",
        )


# ------------------------------------------------------------------- backup


def online_backup(
    store: Path, output: Path, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> BackupResult:
    """Copy ``store`` to ``output`` consistently while the relay may keep writing."""
    started = time.monotonic()
    copy = save_copy(store, output, timeout, inspect=check_database)
    manifest = _manifest(copy.inspected, copy.sha256, copy.size, store)
    manifest_file = manifest_path(output)
    write_atomically(manifest_file, (json.dumps(manifest, indent=2) + "\n").encode())
    return BackupResult(output, manifest_file, manifest, time.monotonic() - started)


@dataclass(frozen=True)
class SavedCopy(Generic[T]):
    sha256: str
    size: int
    inspected: T


def save_copy(
    store: Path, output: Path, timeout: float, *, inspect: Callable[[Path], T]
) -> SavedCopy[T]:
    """The backup API copy of ``store``, replacing ``output`` atomically once ``inspect``
    returned on the copy (``check_database`` raises on a bad page or record)."""
    if not store.is_file():
        raise BackupError(BackupCode.IO_ERROR, f"the account store {store} does not exist")
    check_owner(store)
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = _private_temporary(output)
    try:
        _copy_with_backup_api(store, temporary, timeout)
        inspected = inspect(temporary)
        _fsync_file(temporary)
        digest, size = _sha256(temporary)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(output.parent)
    return SavedCopy(digest, size, inspected)


def _copy_with_backup_api(store: Path, destination: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def progress(status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > deadline:
            raise BackupError(
                BackupCode.STORE_BUSY,
                f"{store} stayed locked for {timeout:g} s (does the relay hold it exclusively?)",
            )

    try:
        source = sqlite3.connect(read_only_uri(store), uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot open {store}: {exc}") from None
    with closing(source), closing(sqlite3.connect(destination)) as target:
        try:
            # pages=-1: every page in one step, from one read snapshot of the store.
            source.backup(target, pages=-1, progress=progress, sleep=_BUSY_SLEEP_SECONDS)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        except sqlite3.DatabaseError as exc:
            raise BackupError(BackupCode.NOT_A_STORE, f"cannot back up {store}: {exc}") from None
        except sqlite3.Error as exc:
            raise BackupError(BackupCode.IO_ERROR, f"cannot back up {store}: {exc}") from None


def _manifest(report: CheckReport, digest: str, size: int, store: Path) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "kind": "nitro-wallet account store (SQLite), ciphertext only",
        "accounts": report.accounts,
        "sha256": digest,
        "bytes": size,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"host": socket.gethostname(), "path": str(store)},
        "schema_version": report.schema_version,
        "key_ids": report.key_ids,
        "envelope_versions": report.to_json()["envelope_versions"],
    }


# ------------------------------------------------------------------ verify


def verify_backup(path: Path, *, manifest_required: bool = False) -> CheckReport:
    """Check the file against its manifest (when present, or required), then every page
    and record of it."""
    manifest_file = manifest_path(path)
    manifest: dict[str, Any] | None = None
    if manifest_file.exists():
        manifest = read_manifest(manifest_file)
        digest, size = _sha256(path)
        if manifest.get("sha256") != digest or manifest.get("bytes") != size:
            raise BackupError(
                BackupCode.MANIFEST_MISMATCH,
                f"{path} does not match {manifest_file} (sha256 or size differs): it changed "
                "after the backup was taken",
            )
    elif manifest_required:
        raise BackupError(BackupCode.MANIFEST_MISMATCH, f"{manifest_file} is missing")
    report = check_database(path)
    if manifest is not None and manifest.get("accounts") != report.accounts:
        raise BackupError(
            BackupCode.MANIFEST_MISMATCH,
            f"{path} holds {report.accounts} accounts; its manifest says "
            f"{manifest.get('accounts')}",
        )
    return report


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot read {path}: {exc.strerror}") from None
    try:
        manifest = json.loads(raw[: 64 * 1024])
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(BackupCode.MANIFEST_MISMATCH, f"{path} is not a backup manifest")
    return manifest


# ----------------------------------------------------------------- restore


def restore(
    backup: Path,
    store: Path,
    *,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    on_checked: Callable[[CheckReport], None] | None = None,
) -> RestoreResult:
    """Put the accounts of ``backup`` into ``store`` (see the module docstring)."""
    report = verify_backup(backup)
    if on_checked is not None:
        on_checked(report)
    check_owner(store)
    try:
        SqliteStorage(store).close()  # creates a missing store exactly as the relay does
    except StorageError as exc:
        raise BackupError(BackupCode.IO_ERROR, str(exc)) from None
    saved: Path | None = None
    existing = _count(store, timeout)
    if existing and not force:
        raise _not_empty(store, existing)
    if existing:
        saved = store.with_name(f"{store.name}.pre-restore-{_stamp()}")
        save_copy(store, saved, timeout, inspect=lambda _: None)
    _copy_records(backup, store, expected_existing=existing, timeout=timeout)
    restored = _count(store, timeout)
    if restored != report.accounts:
        raise BackupError(
            BackupCode.IO_ERROR,
            f"{store} holds {restored} accounts after the restore, the backup {report.accounts}",
        )
    return RestoreResult(store=store, restored=restored, replaced=existing, saved_previous=saved)


def _not_empty(store: Path, existing: int) -> BackupError:
    return BackupError(
        BackupCode.STORE_NOT_EMPTY,
        f"{store} already holds {existing} account(s): restore refuses to overwrite them "
        "(--force replaces them, after saving the store next to itself)",
    )


def _copy_records(backup: Path, store: Path, *, expected_existing: int, timeout: float) -> None:
    """One write transaction: recount, replace, insert every record of the backup.

    The recount must find what was counted (and saved) before: an account the relay
    inserted meanwhile would otherwise be replaced without having been saved.
    """
    columns = ", ".join(TABLE_COLUMNS)
    try:
        connection = sqlite3.connect(store, timeout=timeout, isolation_level=None, uri=True)
    except sqlite3.Error as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot open {store}: {exc}") from None
    with closing(connection):
        try:
            connection.execute("ATTACH DATABASE ? AS backup", (read_only_uri(backup),))
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _busy_or_io(store, exc) from None
        try:
            (existing,) = connection.execute("SELECT count(*) FROM main.accounts").fetchone()
            if existing != expected_existing:
                if not expected_existing:
                    raise _not_empty(store, existing)
                raise BackupError(
                    BackupCode.STORE_BUSY,
                    f"{store} changed during the restore: stop the relay "
                    "(systemctl stop nitro-wallet-relay) and retry",
                )
            connection.execute("DELETE FROM main.accounts")
            connection.execute(
                f"INSERT INTO main.accounts ({columns}) "  # noqa: S608 constant column names
                f"SELECT {columns} FROM backup.accounts ORDER BY seq"
            )
            connection.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise


def _count(store: Path, timeout: float) -> int:
    try:
        with closing(sqlite3.connect(read_only_uri(store), uri=True, timeout=timeout)) as db:
            (count,) = db.execute("SELECT count(*) FROM accounts").fetchone()
    except sqlite3.OperationalError as exc:
        raise _busy_or_io(store, exc) from None
    return int(count)


def _busy_or_io(store: Path, exc: sqlite3.OperationalError) -> BackupError:
    if "locked" in str(exc) or "busy" in str(exc):
        return BackupError(
            BackupCode.STORE_BUSY,
            f"{store} is locked: stop the relay (systemctl stop nitro-wallet-relay) and retry",
        )
    return BackupError(BackupCode.IO_ERROR, f"{store}: {exc}")


# -------------------------------------------------------------------- files


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temporary file, fsync, rename, fsync of the directory: all of ``data`` or nothing."""
    temporary = _private_temporary(path, mode)
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _private_temporary(path: Path, mode: int = 0o600) -> Path:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise BackupError(
            BackupCode.IO_ERROR, f"cannot create a file in {path.parent}: {exc.strerror}"
        ) from None
    os.fchmod(fd, mode)  # whatever the umask
    os.close(fd)
    return temporary


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
