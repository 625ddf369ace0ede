"""The relay's in-memory account records (parent_app.record_cache) in front of SQLite."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from parent_app.errors import StorageError
from parent_app.record_cache import CachedStorage
from parent_app.storage import SqliteStorage, metadata_text
from tests.test_relay_storage import record


class CountingStorage(SqliteStorage):
    """SQLite that counts the reads reaching it, and can be made to fail them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.failing = False

    def get(self, account_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        if self.failing:
            raise StorageError("disk on fire")
        return super().get(account_id)


@pytest.fixture
def inner(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "accounts.db")


def test_a_record_is_read_from_storage_once(inner: CountingStorage) -> None:
    cached = CachedStorage(inner)
    stored = record()
    cached.insert(stored)
    assert inner.reads == 0  # an insert does not fill the cache
    for _ in range(3):
        assert cached.get(stored.account_id) == stored
    assert inner.reads == 1
    assert cached.cached == 1
    inner.failing = True  # a remembered record no longer needs the store
    assert cached.get(stored.account_id) == stored


def test_an_unknown_id_is_asked_again_every_time(inner: CountingStorage) -> None:
    """Another relay of the fleet may create it at any moment: misses are not kept."""
    cached = CachedStorage(inner)
    account_id = str(uuid.uuid4())
    assert cached.get(account_id) is None
    assert cached.get(account_id) is None
    assert inner.reads == 2
    created = record(account_id)
    inner.insert(created)  # as another relay would
    assert cached.get(account_id) == created


def test_storage_failures_reach_the_caller_and_are_not_kept(inner: CountingStorage) -> None:
    cached = CachedStorage(inner)
    stored = record()
    inner.insert(stored)
    inner.failing = True
    with pytest.raises(StorageError):
        cached.get(stored.account_id)
    inner.failing = False
    assert cached.get(stored.account_id) == stored


def test_the_cache_is_bounded(inner: CountingStorage) -> None:
    cached = CachedStorage(inner, entries=2)
    records = [record() for _ in range(3)]
    for each in records:
        inner.insert(each)
        cached.get(each.account_id)
    assert cached.cached == 2
    cached.get(records[0].account_id)  # the oldest went first: read again
    assert inner.reads == 4


def test_everything_else_goes_to_the_store(inner: CountingStorage) -> None:
    cached = CachedStorage(inner)
    stored = record()
    cached.insert(stored)
    assert cached.get_by_address(stored.address.lower()) == stored
    assert cached.list(10, None).records == [stored]
    cached.ping()
    cached.close()
    with pytest.raises(StorageError):
        inner.list(10, None)


def test_a_remembered_record_parses_its_metadata_once(inner: CountingStorage) -> None:
    """Every op on an account sends its metadata back (service.account_params): a warm
    record does not parse the stored JSON again per request."""
    cached = CachedStorage(inner)
    labels = {"labels": ["eu", "hot"]}
    stored = replace(record(), metadata=metadata_text(labels))
    cached.insert(stored)
    first = cached.get(stored.account_id)
    assert first is not None
    assert first.metadata_fields == labels
    again = cached.get(stored.account_id)
    assert again is not None
    assert again.metadata_fields is first.metadata_fields
    assert record().metadata_fields == {}
