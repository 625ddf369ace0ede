"""Backup, restore and verify-backup on real SQLite files, through the CLI.

The records here have the shapes the enclave produces (envelope version byte, nonce,
key, tag; a KMS blob) but random bytes: these tests are about the store, not about
KMS. tests/test_backup_stack.py takes backups of a running appliance and signs with
the restored accounts.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families

from nitro_wallet.backup_check import SEALED_KEY_BYTES
from nitro_wallet.cli import main
from parent_app.storage import AccountRecord, SqliteStorage, format_time
from tests.moto_server import MotoServer

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef"


def make_record(created: datetime | None = None) -> AccountRecord:
    return AccountRecord(
        account_id=str(uuid.uuid4()),
        address=Account.create().address,
        key_id=KEY_ARN,
        encrypted_private_key=b"\x01" + secrets.token_bytes(SEALED_KEY_BYTES - 1),
        encrypted_data_key=secrets.token_bytes(184),
        created_at=created or datetime.now(UTC),
    )


def fill(path: Path, count: int) -> list[AccountRecord]:
    storage = SqliteStorage(path)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [make_record(start + timedelta(seconds=i)) for i in range(count)]
    try:
        for record in records:
            storage.insert(record)
    finally:
        storage.close()
    return records


Row = tuple[str, str, str, bytes, bytes, str]


def row(record: AccountRecord) -> Row:
    return (
        record.account_id,
        record.address,
        record.key_id,
        record.encrypted_private_key,
        record.encrypted_data_key,
        format_time(record.created_at),
    )


def stored(path: Path) -> list[Row]:
    """The records of a database in insertion order, read-only (opening it with the
    relay's storage would switch a backup file to WAL mode)."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return db.execute(
            "SELECT account_id, address, key_id, encrypted_private_key, encrypted_data_key, "
            "created_at FROM accounts ORDER BY seq"
        ).fetchall()


def relay_toml(directory: Path, store: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "relay.toml"
    config.write_text(
        f'[kms]\nkey_id = "{KEY_ARN}"\n[storage]\nbackend = "sqlite"\nsqlite_path = "{store}"\n'
    )
    return config


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "state" / "accounts.db"


@pytest.fixture
def config(tmp_path: Path, store: Path) -> Path:
    return relay_toml(tmp_path, store)


# ------------------------------------------------------------------ backup


def test_backup_writes_a_private_checked_copy_and_its_manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    records = fill(store, 25)
    out = tmp_path / "backups" / "b.db"
    code, summary, err = cli(capsys, "backup", "--config", str(config), "--out", str(out))
    assert code == 0, err
    assert summary["accounts"] == 25
    assert out.stat().st_mode & 0o777 == 0o600
    manifest = json.loads(out.with_name("b.db.manifest.json").read_text())
    assert manifest["accounts"] == 25
    assert manifest["sha256"] == summary["sha256"]
    assert manifest["bytes"] == out.stat().st_size
    assert manifest["source"]["path"] == str(store)
    assert manifest["key_ids"] == {KEY_ARN: 25}
    assert stored(out) == [row(r) for r in records]
    # A self-contained file: no WAL mode, no side files next to it.
    with closing(sqlite3.connect(out)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.db", "b.db.manifest.json"]


def test_backup_never_creates_a_missing_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    code, _, err = cli(capsys, "backup", "--config", str(config), "--out", str(tmp_path / "b.db"))
    assert code == 1
    assert "io_error" in err
    assert "does not exist" in err
    assert not store.exists()
    assert not (tmp_path / "b.db").exists()


def test_backup_refuses_a_dynamodb_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[kms]\nkey_id = "{KEY_ARN}"\n[storage]\nbackend = "dynamodb"\ntable_name = "accounts"\n'
    )
    code, _, err = cli(capsys, "backup", "--config", str(config), "--out", str(tmp_path / "b"))
    assert code == 1
    assert "unsupported_backend" in err
    assert "point-in-time recovery" in err


def test_backup_of_a_store_held_exclusively_gives_up_after_its_timeout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 3)
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        out = tmp_path / "b.db"
        code, _, err = cli(
            capsys, "backup", "--config", str(config), "--out", str(out), "--timeout", "1"
        )
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1
    assert "store_busy" in err
    assert elapsed < 10
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_backup_refuses_to_run_as_another_user_than_the_stores_owner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 1)
    os.chown(store, os.geteuid() + 4242, -1)
    code, _, err = cli(capsys, "backup", "--config", str(config), "--out", str(tmp_path / "b.db"))
    assert code == 1
    assert "wrong_user" in err
    assert "run as the relay's user" in err


def test_out_dir_keeps_the_newest_backups_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 2)
    directory = tmp_path / "backups"
    directory.mkdir()
    old = [directory / f"accounts-2026010{i}T000000Z.db" for i in range(1, 4)]
    for path in old:
        path.write_bytes(b"old")
        path.with_name(path.name + ".manifest.json").write_text("{}")
    unrelated = directory / "notes.txt"
    unrelated.write_text("kept")
    code, summary, err = cli(
        capsys, "backup", "--config", str(config), "--out-dir", str(directory), "--keep", "2"
    )
    assert code == 0, err
    assert summary["pruned"] == [str(old[0]), str(old[1])]
    left = sorted(p.name for p in directory.iterdir())
    assert left == sorted(
        [
            old[2].name,
            old[2].name + ".manifest.json",
            Path(summary["backup"]).name,
            Path(summary["backup"]).name + ".manifest.json",
            "notes.txt",
        ]
    )


def _metrics(path: Path) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def test_metrics_file_keeps_the_last_success_across_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 4)
    prom = tmp_path / "textfile" / "nitro_wallet_backup.prom"
    args = ["backup", "--config", str(config), "--metrics-file", str(prom)]
    before = time.time()
    code, summary, err = cli(capsys, *args, "--out", str(tmp_path / "b.db"))
    assert code == 0, err
    first = _metrics(prom)
    assert first["nitro_wallet_backup_accounts"] == 4
    assert first["nitro_wallet_backup_size_bytes"] == summary["bytes"]
    assert first["nitro_wallet_backup_last_attempt_success"] == 1
    assert before - 1 <= first["nitro_wallet_backup_last_success_timestamp_seconds"] <= time.time()
    store.unlink()  # the next run fails
    code, _, _ = cli(capsys, *args, "--out", str(tmp_path / "c.db"))
    assert code == 1
    second = _metrics(prom)
    assert second["nitro_wallet_backup_last_attempt_success"] == 0
    for kept in ("last_success_timestamp_seconds", "accounts", "size_bytes"):
        name = f"nitro_wallet_backup_{kept}"
        assert second[name] == first[name]
    assert (
        second["nitro_wallet_backup_last_attempt_timestamp_seconds"]
        >= first["nitro_wallet_backup_last_attempt_timestamp_seconds"]
    )


def test_backup_is_consistent_while_another_process_keeps_inserting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    """The relay's own storage code writes from a thread while backups are taken: each
    backup is a prefix of the insertion order (one snapshot), never a torn mix."""
    fill(store, 50)
    writer = SqliteStorage(store)
    stop = threading.Event()
    inserted: list[AccountRecord] = []

    def insert() -> None:
        while not stop.is_set():
            record = make_record()
            writer.insert(record)
            inserted.append(record)

    thread = threading.Thread(target=insert)
    thread.start()
    try:
        counts = []
        for i in range(5):
            out = tmp_path / f"b{i}.db"
            code, summary, err = cli(capsys, "backup", "--config", str(config), "--out", str(out))
            assert code == 0, err
            counts.append(summary["accounts"])
    finally:
        stop.set()
        thread.join(10)
        writer.close()
    assert counts == sorted(counts)
    assert counts[-1] > 50
    everything = stored(store)
    assert everything[50:] == [row(r) for r in inserted]
    for i, count in enumerate(counts):
        assert stored(tmp_path / f"b{i}.db") == everything[:count]


# ------------------------------------------------------------------ verify


def test_verify_backup_reports_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 7)
    out = tmp_path / "b.db"
    assert cli(capsys, "backup", "--config", str(config), "--out", str(out))[0] == 0
    code, report, err = cli(capsys, "verify-backup", str(out), "--require-manifest")
    assert code == 0, err
    assert report["accounts"] == 7
    assert report["manifest"] == "ok"
    assert report["key_ids"] == {KEY_ARN: 7}
    assert report["envelope_versions"] == {"1": 7}
    assert report["first_created_at"] == "2026-01-01T00:00:00.000000Z"
    assert report["last_created_at"] == "2026-01-01T00:00:06.000000Z"


def _corrupt(path: Path, statement: str, *args: Any) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(statement, args)
        db.commit()


BAD_RECORDS = [
    ("UPDATE accounts SET account_id = 'not-a-uuid' WHERE seq = 3", (), "canonical lowercase UUID"),
    (
        "UPDATE accounts SET address = lower(address), address_lower = lower(address) "
        "WHERE seq = 3",
        (),
        "EIP-55",
    ),
    ("UPDATE accounts SET address_lower = '0x00' WHERE seq = 3", (), "address_lower"),
    ("UPDATE accounts SET key_id = 'my key' WHERE seq = 3", (), "not a KMS key id"),
    (
        "UPDATE accounts SET encrypted_private_key = ? WHERE seq = 3",
        (b"\x07" + bytes(SEALED_KEY_BYTES - 1),),
        "unknown envelope version 7",
    ),
    (
        "UPDATE accounts SET encrypted_private_key = ? WHERE seq = 3",
        (b"\x01" + bytes(SEALED_KEY_BYTES),),
        f"is {SEALED_KEY_BYTES + 1} bytes",
    ),
    ("UPDATE accounts SET encrypted_data_key = ? WHERE seq = 3", (bytes(40),), "CiphertextBlob"),
    (
        "UPDATE accounts SET encrypted_data_key = ? WHERE seq = 3",
        (bytes(6145),),
        "CiphertextBlob",
    ),
    ("UPDATE accounts SET encrypted_data_key = 'text' WHERE seq = 3", (), "stored as str"),
    ("UPDATE accounts SET created_at = 'yesterday' WHERE seq = 3", (), "does not match format"),
]


@pytest.mark.parametrize(("statement", "args", "reason"), BAD_RECORDS)
def test_verify_backup_names_the_first_bad_record(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    statement: str,
    args: tuple[Any, ...],
    reason: str,
) -> None:
    path = tmp_path / "copy.db"
    records = fill(path, 5)
    _corrupt(path, statement, *args)
    code, _, err = cli(capsys, "verify-backup", str(path))
    assert code == 1
    assert "bad_record" in err
    assert "record seq=3" in err
    assert reason in err
    if "account_id" not in statement:
        assert records[2].account_id in err


def test_verify_backup_refuses_files_that_are_not_account_stores(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = tmp_path / "text.db"
    text.write_text("hello")
    assert "not_a_store" in cli(capsys, "verify-backup", str(text))[2]
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("PRAGMA user_version=7")
    assert "schema_mismatch" in cli(capsys, "verify-backup", str(other))[2]
    torn = tmp_path / "torn.db"
    fill(torn, 200)
    with closing(sqlite3.connect(torn)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    data = bytearray(torn.read_bytes())
    data[4096 * 2 : 4096 * 3] = bytes(4096)  # a b-tree page zeroed
    torn.write_bytes(bytes(data))
    code, _, err = cli(capsys, "verify-backup", str(torn))
    assert code == 1
    assert "not_a_store" in err or "bad_record" in err


def test_verify_backup_detects_a_file_changed_after_its_manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store: Path, config: Path
) -> None:
    fill(store, 3)
    out = tmp_path / "b.db"
    assert cli(capsys, "backup", "--config", str(config), "--out", str(out))[0] == 0
    storage = SqliteStorage(out)  # a valid record added behind the manifest's back
    storage.insert(make_record())
    storage.close()
    code, _, err = cli(capsys, "verify-backup", str(out))
    assert code == 1
    assert "manifest_mismatch" in err


# ----------------------------------------------------------------- restore


@pytest.fixture
def backup_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    source = tmp_path / "source" / "accounts.db"
    fill(source, 12)
    out = tmp_path / "b.db"
    code, _, err = cli(
        capsys, "backup", "--config", str(relay_toml(source.parent, source)), "--out", str(out)
    )
    assert code == 0, err
    return out


def test_restore_onto_a_fresh_host_creates_the_store_as_the_relay_would(
    capsys: pytest.CaptureFixture[str], backup_file: Path, store: Path, config: Path
) -> None:
    code, summary, err = cli(capsys, "restore", "--config", str(config), "--from", str(backup_file))
    assert code == 0, err
    assert summary["restored"] == 12
    assert summary["replaced"] == 0
    assert summary["warnings"] == []
    assert store.stat().st_mode & 0o777 == 0o600
    assert store.parent.stat().st_mode & 0o777 == 0o700
    assert stored(store) == stored(backup_file)
    with closing(sqlite3.connect(store)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # The relay's storage keeps working on it: insert-only, ids and addresses unique.
    storage = SqliteStorage(store)
    try:
        storage.insert(make_record())
        assert len(storage.list(100, None).records) == 13
    finally:
        storage.close()


def test_restore_refuses_a_store_that_holds_accounts(
    capsys: pytest.CaptureFixture[str], backup_file: Path, store: Path, config: Path
) -> None:
    existing = fill(store, 2)
    code, _, err = cli(capsys, "restore", "--config", str(config), "--from", str(backup_file))
    assert code == 1
    assert "store_not_empty" in err
    assert "2 account(s)" in err
    assert stored(store) == [row(r) for r in existing]


def test_restore_force_replaces_the_store_after_saving_it(
    capsys: pytest.CaptureFixture[str], backup_file: Path, store: Path, config: Path
) -> None:
    existing = fill(store, 2)
    code, summary, err = cli(
        capsys, "restore", "--config", str(config), "--from", str(backup_file), "--force"
    )
    assert code == 0, err
    assert summary["replaced"] == 2
    saved = Path(summary["saved_previous"])
    assert saved.parent == store.parent
    assert saved.stat().st_mode & 0o777 == 0o600
    assert stored(saved) == [row(r) for r in existing]
    assert stored(store) == stored(backup_file)
    # The saved store is itself restorable (it has no manifest).
    code, _, err = cli(
        capsys,
        "restore",
        "--config",
        str(config),
        "--from",
        str(saved),
        "--force",
    )
    assert code == 1
    assert "--no-manifest" in err
    code, _, err = cli(
        capsys,
        "restore",
        "--config",
        str(config),
        "--from",
        str(saved),
        "--force",
        "--no-manifest",
    )
    assert code == 0, err
    assert stored(store) == [row(r) for r in existing]


def test_restore_checks_the_backup_before_touching_the_store(
    capsys: pytest.CaptureFixture[str], backup_file: Path, store: Path, config: Path
) -> None:
    existing = fill(store, 1)
    data = bytearray(backup_file.read_bytes())
    data[-10] ^= 0xFF
    backup_file.write_bytes(bytes(data))
    code, _, err = cli(
        capsys, "restore", "--config", str(config), "--from", str(backup_file), "--force"
    )
    assert code == 1
    assert "manifest_mismatch" in err
    assert stored(store) == [row(r) for r in existing]
    assert [p for p in store.parent.iterdir() if "pre-restore" in p.name] == []


def test_restore_warns_when_records_use_another_key_than_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backup_file: Path, store: Path
) -> None:
    config = tmp_path / "other.toml"
    config.write_text(
        f'[kms]\nkey_id = "alias/other"\n[storage]\nbackend = "sqlite"\nsqlite_path = "{store}"\n'
    )
    code, summary, err = cli(capsys, "restore", "--config", str(config), "--from", str(backup_file))
    assert code == 0, err
    assert KEY_ARN in summary["warnings"][0]
    assert "allowed_key_ids" in summary["warnings"][0]


# ---------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A bucket, and boto3's default credential chain pointed at test keys."""
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAS3BACKUPTEST0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-backup-test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_server.endpoint)
    client.create_bucket(Bucket="nw-backups")
    return client


@pytest.mark.parametrize(
    ("sse", "extra"), [("aws:kms", ["--sse-kms-key-id", "alias/backups"]), ("AES256", [])]
)
def test_backup_uploads_to_s3_with_server_side_encryption_and_restores_from_it(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store: Path,
    config: Path,
    s3_server: MotoServer,
    s3: Any,
    sse: str,
    extra: list[str],
) -> None:
    records = fill(store, 6)
    out = tmp_path / "b.db"
    code, summary, err = cli(
        capsys,
        "backup",
        "--config",
        str(config),
        "--out",
        str(out),
        "--s3-uri",
        "s3://nw-backups/host-a/",
        "--sse",
        sse,
        *extra,
        "--s3-endpoint-url",
        s3_server.endpoint,
    )
    assert code == 0, err
    assert summary["s3"]["uri"] == "s3://nw-backups/host-a/b.db"
    assert summary["s3"]["sse"] == sse
    head = s3.head_object(Bucket="nw-backups", Key="host-a/b.db")
    assert head["ServerSideEncryption"] == sse
    if extra:
        assert "alias/backups" in head["SSEKMSKeyId"]
    manifest = s3.head_object(Bucket="nw-backups", Key="host-a/b.db.manifest.json")
    assert manifest["ServerSideEncryption"] == sse
    body = s3.get_object(Bucket="nw-backups", Key="host-a/b.db")["Body"].read()
    assert body == out.read_bytes()

    fresh = relay_toml(tmp_path / "fresh", tmp_path / "fresh" / "state" / "accounts.db")
    code, restored, err = cli(
        capsys,
        "restore",
        "--config",
        str(fresh),
        "--from",
        "s3://nw-backups/host-a/b.db",
        "--s3-endpoint-url",
        s3_server.endpoint,
    )
    assert code == 0, err
    assert restored["restored"] == 6
    assert stored(tmp_path / "fresh" / "state" / "accounts.db") == [row(r) for r in records]


def test_restore_from_s3_refuses_an_object_changed_behind_its_manifest(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store: Path,
    config: Path,
    s3_server: MotoServer,
    s3: Any,
) -> None:
    fill(store, 3)
    out = tmp_path / "b.db"
    args = ["--s3-endpoint-url", s3_server.endpoint]
    code, _, err = cli(
        capsys, "backup", "--config", str(config), "--out", str(out),
        "--s3-uri", "s3://nw-backups/h", "--sse", "AES256", *args,
    )  # fmt: skip
    assert code == 0, err
    tampered = bytearray(out.read_bytes())
    tampered[-1] ^= 1
    s3.put_object(Bucket="nw-backups", Key="h/b.db", Body=bytes(tampered))
    fresh = relay_toml(tmp_path / "fresh", tmp_path / "fresh" / "accounts.db")
    code, _, err = cli(
        capsys, "restore", "--config", str(fresh), "--from", "s3://nw-backups/h/b.db", *args
    )
    assert code == 1
    assert "manifest_mismatch" in err
    assert not (tmp_path / "fresh" / "accounts.db").exists()


def test_s3_failures_name_the_operation_and_code_only(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store: Path,
    config: Path,
    s3_server: MotoServer,
    s3: Any,
) -> None:
    fill(store, 1)
    code, _, err = cli(
        capsys, "backup", "--config", str(config), "--out", str(tmp_path / "b.db"),
        "--s3-uri", "s3://no-such-bucket/x", "--s3-endpoint-url", s3_server.endpoint,
    )  # fmt: skip
    assert code == 1
    assert "s3_error: S3 PutObject s3://no-such-bucket/x/b.db failed (NoSuchBucket)" in err
    assert "s3-backup-test-secret" not in err
