"""Storage faults never kill the relay (issue 9: "storage file made immutable just after
a write: the relay died with SIGBUS, nothing logged; /readyz said ready while writes
failed").

Real faults, made by root in-process (tests/fs_faults.py): an immutable database file,
an immutable directory and files, a full file system (a small tmpfs), a read-only file
system at start. Each run checks: a write answers a typed 503 ``storage_unavailable``
with Retry-After, never a 500 or a dead process; /readyz says storage is not writable;
every account answered 201 is still there after the fault, and after a SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parent_app import storage
from parent_app.errors import StorageUnavailable
from parent_app.storage import PROBE_TTL_SECONDS, AccountRecord, SqliteStorage
from tests.fake_enclave import (
    KEY_ID,
    FakeEnclave,
    FakeImds,
    HttpAnswer,
    fake_address,
    http_call,
)
from tests.fs_faults import (
    ReadOnlyView,
    fill,
    require_immutable_support,
    set_immutable,
    small_tmpfs,
)
from tests.relay_process import RelayProcess, fake_edges, write_config
from tests.stack_helpers import wait_for

if os.geteuid() != 0:
    pytest.skip("file-system faults need root (chattr, mount)", allow_module_level=True)


def record() -> AccountRecord:
    account_id = str(uuid.uuid4())
    return AccountRecord(
        account_id=account_id,
        address=fake_address(account_id),
        key_id=KEY_ID,
        encrypted_private_key=b"\x01" * 60,
        encrypted_data_key=b"\x02" * 180,
        created_at=datetime.now(UTC),
    )


class Fault:
    """One fault on a database directory: ``apply()`` then ``clear()``."""

    name = ""
    reads_survive = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def apply(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class ImmutableFile(Fault):
    """chattr +i on the database file right after a write (the SIGBUS of the issue).

    The commit's journal is written, the database page is not: reads must roll that
    journal back, which the immutable file forbids, so reads fail too (503) until the
    fault is cleared (docs/reliability.md)."""

    name = "immutable-file"
    reads_survive = False

    def apply(self) -> None:
        set_immutable(self.directory / "accounts.db", True)

    def clear(self) -> None:
        set_immutable(self.directory / "accounts.db", False)


class ImmutableEverything(Fault):
    """chattr +i on the directory and every file in it."""

    name = "immutable-all"

    def paths(self) -> list[Path]:
        return [*sorted(self.directory.glob("accounts.db*")), self.directory]

    def apply(self) -> None:
        for path in self.paths():
            set_immutable(path, True)

    def clear(self) -> None:
        for path in self.paths():
            set_immutable(path, False)


class FullDisk(Fault):
    """The file system holding the database fills up (a tmpfs of 512 KiB)."""

    name = "full-disk"
    filler: Path | None = None

    def apply(self) -> None:
        self.filler = fill(self.directory)

    def clear(self) -> None:
        assert self.filler is not None
        self.filler.unlink()


FAULTS: dict[str, type[Fault]] = {f.name: f for f in (ImmutableFile, ImmutableEverything, FullDisk)}


@pytest.fixture(params=sorted(FAULTS))
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    kind = FAULTS[request.param]
    if kind is FullDisk:
        with small_tmpfs(tmp_path / "db") as directory:
            full = FullDisk(directory)
            yield full
            if full.filler is not None and full.filler.exists():
                full.clear()
        return
    directory = tmp_path / "db"
    directory.mkdir()
    require_immutable_support(directory)
    made = kind(directory)
    try:
        yield made
    finally:
        for path in [*directory.iterdir(), directory]:
            set_immutable(path, False)


# --------------------------------------------------------------- the store itself


@pytest.fixture
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> float:
    """A probe verdict that expires in 0.1 s, so the store-level tests need not wait 2 s."""
    monkeypatch.setattr(storage, "PROBE_TTL_SECONDS", 0.1)
    return 0.1


def test_the_store_answers_503_under_a_fault_and_loses_nothing(
    fault: Fault, quick_probe: float
) -> None:
    store = SqliteStorage(fault.directory / "accounts.db")
    kept = [record() for _ in range(3)]
    for stored in kept:
        store.insert(stored)
    store.ping()

    fault.apply()
    lost = record()
    with pytest.raises(StorageUnavailable) as refused:
        store.insert(lost)
    assert refused.value.status == 503
    assert refused.value.code == "storage_unavailable"
    assert refused.value.headers["Retry-After"] == "5"
    with pytest.raises(StorageUnavailable):
        store.ping()
    try:
        assert store.get(kept[0].account_id) == kept[0]
    except StorageUnavailable:
        assert not fault.reads_survive

    fault.clear()
    time.sleep(quick_probe)  # the probe's verdict expires
    store.ping()
    assert [store.get(r.account_id) for r in kept] == kept
    assert store.get(lost.account_id) is None  # refused, so never half-stored
    store.insert(lost)
    store.close()
    reopened = SqliteStorage(fault.directory / "accounts.db")
    assert [reopened.get(r.account_id) for r in [*kept, lost]] == [*kept, lost]


def test_a_store_that_is_read_only_at_start_serves_reads_and_heals(
    tmp_path: Path, quick_probe: float
) -> None:
    source = tmp_path / "source"
    store = SqliteStorage(source / "accounts.db")
    kept = record()
    store.insert(kept)
    store.close()
    view = ReadOnlyView(source, tmp_path / "view")
    try:
        view.read_only(True)
        read_only = SqliteStorage(view.view / "accounts.db")
        assert read_only.read_only
        assert read_only.get(kept.account_id) == kept
        with pytest.raises(StorageUnavailable, match="read-only"):
            read_only.ping()
        with pytest.raises(StorageUnavailable):
            read_only.insert(record())
        view.read_only(False)
        time.sleep(quick_probe)
        read_only.ping()  # reopened for writing
        read_only.insert(record())
        read_only.close()
    finally:
        view.close()


# ------------------------------------------------------------- the relay process


@pytest.fixture
def edges() -> Iterator[tuple[FakeEnclave, FakeImds]]:
    with fake_edges() as running:
        yield running


def create(relay: RelayProcess) -> HttpAnswer:
    return http_call(relay.port, "POST", "/v1/accounts", {})


def readiness(relay: RelayProcess) -> tuple[int, str]:
    answer = http_call(relay.port, "GET", "/readyz")
    return answer.status, str(answer.json()["checks"]["storage"])


def sign(relay: RelayProcess, account_id: str) -> HttpAnswer:
    return http_call(
        relay.port,
        "POST",
        f"/v1/accounts/{account_id}/sign/transaction",
        {"transaction": {"nonce": 1}},
    )


def assert_all_there(relay: RelayProcess, answered: dict[str, str]) -> None:
    for account_id, address in answered.items():
        got = http_call(relay.port, "GET", f"/v1/accounts/{account_id}")
        assert got.status == 200, got.body
        assert got.json()["address"] == address


@pytest.mark.process
def test_the_relay_survives_a_storage_fault_and_loses_no_answered_account(
    fault: Fault, tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]
) -> None:
    config = write_config(tmp_path, *edges, db_dir=fault.directory)
    relay = RelayProcess(config)
    answered: dict[str, str] = {}
    try:
        for _ in range(3):
            created = create(relay)
            assert created.status == 201, created.body
            answered[created.json()["account_id"]] = created.json()["address"]
        assert readiness(relay) == (200, "ok")

        fault.apply()  # just after a write, as in the issue
        for _ in range(3):
            refused = create(relay)
            assert refused.status == 503, refused.body
            assert refused.error_code == "storage_unavailable"
            assert refused.headers["Retry-After"] == "5"
        assert readiness(relay) == (503, "storage_unavailable")
        signed = sign(relay, next(iter(answered)))
        if fault.reads_survive:
            assert signed.status == 200, signed.body
        else:
            assert (signed.status, signed.error_code) == (503, "storage_unavailable")
        assert relay.process.poll() is None, relay.log

        fault.clear()
        assert wait_for(lambda: readiness(relay) == (200, "ok"), PROBE_TTL_SECONDS + 10)
        created = create(relay)
        assert created.status == 201, created.body
        answered[created.json()["account_id"]] = created.json()["address"]
        assert_all_there(relay, answered)
        assert sign(relay, next(iter(answered))).status == 200
    finally:
        relay.process.send_signal(signal.SIGKILL)
        relay.wait(10)
    assert f"account storage {fault.directory / 'accounts.db'} is not writable" in relay.log
    assert "is writable again" in relay.log
    again = RelayProcess(config)  # after a crash: every answered account is durable
    try:
        assert_all_there(again, answered)
    finally:
        again.process.send_signal(signal.SIGTERM)
        assert again.wait(10) == 0


@pytest.mark.process
def test_the_relay_starts_on_a_read_only_store_and_signs(
    tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]
) -> None:
    source = tmp_path / "source"
    first = RelayProcess(write_config(tmp_path, *edges, db_dir=source))
    try:
        created = create(first)
        assert created.status == 201
    finally:
        first.process.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
    account_id = created.json()["account_id"]
    view = ReadOnlyView(source, tmp_path / "view")
    try:
        view.read_only(True)
        relay = RelayProcess(write_config(tmp_path, *edges, db_dir=view.view))
        try:
            assert sign(relay, account_id).status == 200
            refused = create(relay)
            assert (refused.status, refused.error_code) == (503, "storage_unavailable")
            assert readiness(relay) == (503, "storage_unavailable")
            assert "serving reads only" in relay.log
            view.read_only(False)
            healed: Callable[[], bool] = lambda: readiness(relay) == (200, "ok")  # noqa: E731
            assert wait_for(healed, PROBE_TTL_SECONDS + 10)
            assert create(relay).status == 201
        finally:
            relay.process.send_signal(signal.SIGTERM)
            assert relay.wait(10) == 0
    finally:
        view.close()
