"""SqliteStorage: write-once records, durable inserts, ordered pages, strict schema."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from parent_app.errors import AccountExists, StorageError
from parent_app.storage import (
    SCHEMA_VERSION,
    AccountRecord,
    InvalidCursorError,
    SqliteStorage,
    checksum_address,
)
from tests.fake_enclave import KEY_ID, fake_address

NOW = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def record(account_id: str | None = None, created_at: datetime = NOW) -> AccountRecord:
    account_id = account_id or str(uuid.uuid4())
    return AccountRecord(
        account_id=account_id,
        address=fake_address(account_id),
        key_id=KEY_ID,
        encrypted_private_key=b"\x01" + uuid.UUID(account_id).bytes,
        encrypted_data_key=b"edk-" + account_id.encode(),
        created_at=created_at,
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStorage:
    return SqliteStorage(tmp_path / "sub" / "accounts.db")


def test_insert_and_read_back(store: SqliteStorage) -> None:
    stored = record()
    store.insert(stored)
    assert store.get(stored.account_id) == stored
    assert store.get_by_address(stored.address.lower()) == stored
    assert store.get_by_address(stored.address.upper().replace("0X", "0x")) == stored
    assert store.get(str(uuid.uuid4())) is None
    assert store.get_by_address("0x" + "00" * 20) is None
    store.ping()


def test_existing_account_id_is_never_overwritten(store: SqliteStorage) -> None:
    first = record()
    store.insert(first)
    other = record()
    clash = AccountRecord(
        first.account_id, other.address, KEY_ID, b"other-key", b"other-dk", NOW + timedelta(1)
    )
    with pytest.raises(AccountExists):
        store.insert(clash)
    assert store.get(first.account_id) == first
    assert store.get_by_address(other.address) is None


def test_existing_address_is_never_reused(store: SqliteStorage) -> None:
    first = record()
    store.insert(first)
    clash = AccountRecord(str(uuid.uuid4()), first.address, KEY_ID, b"k", b"d", NOW)
    with pytest.raises(AccountExists):
        store.insert(clash)
    assert store.get(clash.account_id) is None


def test_concurrent_inserts_of_one_id_have_one_winner(store: SqliteStorage) -> None:
    account_id = str(uuid.uuid4())
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def insert(index: int) -> None:
        candidate = AccountRecord(
            account_id, fake_address(account_id), KEY_ID, bytes([index + 1]), b"d", NOW
        )
        barrier.wait()
        try:
            store.insert(candidate)
            result = f"won-{index}"
        except AccountExists:
            result = "exists"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1
    assert outcomes.count("exists") == 9
    saved = store.get(account_id)
    assert saved is not None
    assert saved.encrypted_private_key == bytes([int(winners[0].split("-")[1]) + 1])


def _insert_all_while_locked(
    store: SqliteStorage, records: list[AccountRecord]
) -> tuple[dict[str, str], list[str]]:
    """Insert ``records`` from one thread each while the store's lock is held, so that
    they queue, then let them go; the outcome per account id and the COMMITs issued."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    outcomes: dict[str, str] = {}
    done = threading.Lock()

    def insert(candidate: AccountRecord) -> None:
        try:
            store.insert(candidate)
            result = "stored"
        except AccountExists:
            result = "exists"
        except StorageError as exc:
            result = exc.code
        with done:
            outcomes[candidate.encrypted_private_key.hex()] = result

    threads = [threading.Thread(target=insert, args=(r,)) for r in records]
    with store._lock:
        for thread in threads:
            thread.start()
        while len(store._pending) < len(records):
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    store._conn.set_trace_callback(None)
    return outcomes, [s for s in statements if s == "COMMIT"]


def test_queued_inserts_share_one_commit_and_a_duplicate_fails_alone(
    store: SqliteStorage,
) -> None:
    existing = record()
    store.insert(existing)
    fresh = [record() for _ in range(8)]
    clash = AccountRecord(
        existing.account_id, fake_address(str(uuid.uuid4())), KEY_ID, b"clash", b"d", NOW
    )
    outcomes, commits = _insert_all_while_locked(store, [*fresh, clash])
    assert len(commits) == 1
    assert outcomes.pop(b"clash".hex()) == "exists"
    assert set(outcomes.values()) == {"stored"}
    for stored in fresh:
        assert store.get(stored.account_id) == stored
    assert store.get(existing.account_id) == existing


def test_a_failed_group_commit_fails_every_insert_in_it(store: SqliteStorage) -> None:
    fresh = [record() for _ in range(4)]
    # The fourth insert fails with an I/O-like error once the first three are in the
    # transaction: nothing of the group may be stored, and every insert gets the error.

    def refuse(account_id: str) -> int:
        if account_id == fresh[3].account_id:
            raise OSError("refused by the test")
        return 0

    store._conn.create_function("refuse", 1, refuse)
    store._conn.execute(
        "CREATE TEMP TRIGGER refuse_fourth AFTER INSERT ON main.accounts "
        "BEGIN SELECT refuse(NEW.account_id); END"
    )
    outcomes, _ = _insert_all_while_locked(store, fresh)
    assert set(outcomes.values()) == {"storage_error"}
    for candidate in fresh:
        assert store.get(candidate.account_id) is None
    store._conn.execute("DROP TRIGGER refuse_fourth")
    store.insert(fresh[0])  # the store goes on
    assert store.get(fresh[0].account_id) == fresh[0]


def test_pages_are_ordered_by_creation_then_id(store: SqliteStorage) -> None:
    same_moment = sorted(str(uuid.uuid4()) for _ in range(3))
    later = str(uuid.uuid4())
    earlier = str(uuid.uuid4())
    store.insert(record(later, NOW + timedelta(seconds=1)))
    for account_id in reversed(same_moment):
        store.insert(record(account_id, NOW))
    store.insert(record(earlier, NOW - timedelta(microseconds=1)))
    expected = [earlier, *same_moment, later]
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(2, cursor)
        seen.extend(r.account_id for r in page.records)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    assert [r.account_id for r in store.list(10, None).records] == expected
    assert store.list(5, None).next_cursor is None


@pytest.mark.parametrize("cursor", ["", "!!!", "bm9uc2Vuc2U", "W10", "x" * 600])
def test_foreign_cursors_are_refused(store: SqliteStorage, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        store.list(10, cursor)


def test_database_file_is_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    store = SqliteStorage(path)
    stored = record()
    store.insert(stored)
    assert path.stat().st_mode & 0o777 == 0o600
    # A rollback journal truncated at commit; no memory-mapped WAL index (-shm) at all.
    assert (tmp_path / "accounts.db-journal").stat().st_size == 0
    assert not (tmp_path / "accounts.db-wal").exists()
    assert not (tmp_path / "accounts.db-shm").exists()
    with sqlite3.connect(path) as conn:  # another connection sees it: it is committed
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (1,)
    store.close()
    assert SqliteStorage(path).get(stored.account_id) == stored


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    SqliteStorage(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="schema version"):
        SqliteStorage(path)


def test_unversioned_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (x)")
    with pytest.raises(StorageError, match="no schema version"):
        SqliteStorage(path)


def test_closed_store_raises_storage_error(store: SqliteStorage) -> None:
    store.close()
    with pytest.raises(StorageError):
        store.ping()


@pytest.mark.parametrize(
    "change",
    [
        {"account_id": "not-a-uuid"},
        {"account_id": str(uuid.uuid4()).upper()},
        {"address": fake_address(str(uuid.uuid4())).lower()},
        {"encrypted_private_key": b""},
        {"encrypted_data_key": b"x" * 20000},
        {"created_at": datetime(2030, 1, 1)},
        {"key_id": ""},
    ],
)
def test_records_validate_their_fields(change: dict[str, object]) -> None:
    fields = {
        "account_id": str(uuid.uuid4()),
        "key_id": KEY_ID,
        "encrypted_private_key": b"k",
        "encrypted_data_key": b"d",
        "created_at": NOW,
    }
    fields["address"] = fake_address(str(fields["account_id"]))
    fields.update(change)
    with pytest.raises(ValueError, match=r"must|checksum"):
        AccountRecord(**fields)  # type: ignore[arg-type]


def test_checksum_address() -> None:
    lower = "0x52908400098527886e0f7030069857d2e4169ee7"
    assert checksum_address(lower) == "0x52908400098527886E0F7030069857D2E4169EE7"
    assert checksum_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed") == (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    )
    with pytest.raises(ValueError, match="checksum"):
        checksum_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD")
    with pytest.raises(ValueError, match="40 hex digits"):
        checksum_address("0x1234")


def test_an_online_backup_from_another_connection_is_consistent_while_inserts_go_on(
    tmp_path: Path,
) -> None:
    """The journal mode leaves room for issue 12's backup: the SQLite backup API, from
    another connection (another process locks the same way), while the relay writes."""
    store = SqliteStorage(tmp_path / "accounts.db")
    stop = threading.Event()
    inserted: list[str] = []
    failures: list[Exception] = []

    def insert_until_stopped() -> None:
        while not stop.is_set():
            stored = record()
            try:
                store.insert(stored)
            except Exception as exc:  # the test reports any failure
                failures.append(exc)
                return
            inserted.append(stored.account_id)

    writer = threading.Thread(target=insert_until_stopped)
    writer.start()
    try:
        counts = []
        for round_ in range(5):
            with (
                closing(sqlite3.connect(tmp_path / "accounts.db")) as source,
                closing(sqlite3.connect(tmp_path / f"backup-{round_}.db")) as target,
            ):
                source.backup(target)
                assert target.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                counts.append(target.execute("SELECT count(*) FROM accounts").fetchone()[0])
    finally:
        stop.set()
        writer.join(30)
    assert failures == []
    assert counts == sorted(counts)
    assert counts[-1] <= len(inserted)
    restored = SqliteStorage(tmp_path / "backup-4.db")
    assert all(restored.get(account_id) is not None for account_id in inserted[: counts[-1]])


def test_a_version_1_wal_database_moves_to_version_2_and_a_rollback_journal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "accounts.db"
    old = record()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # what v1 made
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(
            "CREATE TABLE accounts (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "account_id TEXT NOT NULL UNIQUE, address TEXT NOT NULL, "
            "address_lower TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL, "
            "encrypted_private_key BLOB NOT NULL, encrypted_data_key BLOB NOT NULL, "
            "created_at TEXT NOT NULL);"
            "CREATE INDEX accounts_by_creation ON accounts (created_at, account_id);"
            "PRAGMA user_version=1;"
        )
        conn.execute(
            "INSERT INTO accounts (account_id, address, address_lower, key_id, "
            "encrypted_private_key, encrypted_data_key, created_at) VALUES (?,?,?,?,?,?,?)",
            (
                old.account_id,
                old.address,
                old.address.lower(),
                old.key_id,
                old.encrypted_private_key,
                old.encrypted_data_key,
                "2030-01-02T03:04:05.678901Z",
            ),
        )
    store = SqliteStorage(path)
    assert store.get(old.account_id) == old
    store.ping()
    assert not (tmp_path / "accounts.db-wal").exists()
    assert not (tmp_path / "accounts.db-shm").exists()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not WAL


def test_a_wal_database_held_open_elsewhere_is_refused_not_run_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    SqliteStorage(path).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("PRAGMA journal_mode=WAL")
        other.execute("SELECT count(*) FROM accounts").fetchone()
        with pytest.raises(StorageError, match="database is locked"):
            SqliteStorage(path)
