"""SqliteStorage: write-once records, durable inserts, ordered pages, strict schema."""

from __future__ import annotations

import sqlite3
import threading
import uuid
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
    with sqlite3.connect(path) as conn:  # another connection sees it: it is committed
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
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
