"""The DynamoDB storage backend against a real local DynamoDB-compatible HTTP server.

The server is moto's DynamoDB (``moto[server]``) on a free loopback port; every call
is a real boto3 request over HTTP, signed with the relay's credential source. moto's
``TransactWriteItems`` is not thread-safe (it snapshots and, on cancellation, restores
the whole table), so the server runs each request under one lock, as DynamoDB itself
is atomic per transaction; requests still arrive concurrently over the network.
"""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from enclave_app.signing.keys import to_checksum_address
from parent_app.config import ConfigError, RelayConfig
from parent_app.credentials import Credentials, StaticCredentialSource
from parent_app.errors import AccountExists, StorageError
from parent_app.storage import AccountRecord, InvalidCursorError, SqliteStorage
from parent_app.storage_dynamodb import LIST_INDEX, DynamoDbStorage
from tests.fake_enclave import (
    KEY_ID,
    FakeEnclave,
    FakeImds,
    HttpAnswer,
    RelayHarness,
    fake_address,
    fake_data_key_ciphertext,
    fake_private_key_ciphertext,
    http_call,
    relay_config,
    remove_tree,
    short_tempdir,
)
from tests.moto_server import MotoServer

REGION = "us-east-1"
SECRET = "dynamo-test-secret-" + secrets.token_hex(8)
TEST_CREDENTIALS = Credentials("AKIADYNAMOTEST000001", SECRET, "dynamo-test-token")


LocalDynamoDb = MotoServer


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[LocalDynamoDb]:
    server = LocalDynamoDb()
    yield server
    server.stop()


def _table_name() -> str:
    return f"nw-accounts-{uuid.uuid4().hex[:12]}"


def _storage(server: LocalDynamoDb, table: str, source: Any = None) -> DynamoDbStorage:
    return DynamoDbStorage(
        table,
        REGION,
        server.endpoint,
        credentials_source=source or StaticCredentialSource(TEST_CREDENTIALS),
    )


@pytest.fixture
def store(dynamodb: LocalDynamoDb) -> Iterator[DynamoDbStorage]:
    storage = _storage(dynamodb, _table_name())
    storage.create_table_if_missing()
    yield storage
    storage.close()


def _raw_client(server: LocalDynamoDb) -> Any:
    return boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=server.endpoint,
        aws_access_key_id="AKIARAWCLIENT0000001",
        aws_secret_access_key="raw",
    )


def _record(
    account_id: str | None = None,
    *,
    address: str | None = None,
    created_at: datetime | None = None,
    blob_size: int = 61,
) -> AccountRecord:
    return AccountRecord(
        account_id=account_id or str(uuid.uuid4()),
        address=address or to_checksum_address(secrets.token_bytes(20)),
        key_id=KEY_ID,
        # every byte value, NULs and 0xff included: binary attributes, not strings
        encrypted_private_key=bytes(range(256))[:blob_size] + secrets.token_bytes(3),
        encrypted_data_key=b"\x00\xff" + secrets.token_bytes(blob_size),
        created_at=created_at or datetime.now(UTC),
    )


def _same(left: AccountRecord | None, right: AccountRecord) -> None:
    assert left is not None
    assert (
        left.account_id,
        left.address,
        left.key_id,
        left.encrypted_private_key,
        left.encrypted_data_key,
        left.created_at,
    ) == (
        right.account_id,
        right.address,
        right.key_id,
        right.encrypted_private_key,
        right.encrypted_data_key,
        right.created_at,
    )


# -- records ------------------------------------------------------------------------


def test_insert_then_get_and_get_by_address_round_trip(
    store: DynamoDbStorage, dynamodb: LocalDynamoDb
) -> None:
    record = _record(blob_size=16 * 1024 - 3)  # the largest ciphertext a record may hold
    store.insert(record)
    _same(store.get(record.account_id), record)
    _same(store.get_by_address(record.address), record)
    _same(store.get_by_address(record.address.lower()), record)
    _same(store.get_by_address("0x" + record.address[2:].upper()), record)
    assert store.get(str(uuid.uuid4())) is None
    assert store.get("not-a-uuid") is None
    assert store.get_by_address(to_checksum_address(secrets.token_bytes(20))) is None
    assert store.get_by_address("0x1234") is None

    raw = _raw_client(dynamodb).get_item(
        TableName=store.table_name, Key={"pk": {"S": f"account#{record.account_id}"}}
    )["Item"]
    assert raw["encrypted_private_key"] == {"B": record.encrypted_private_key}
    assert raw["encrypted_data_key"] == {"B": record.encrypted_data_key}
    guard = _raw_client(dynamodb).get_item(
        TableName=store.table_name, Key={"pk": {"S": f"address#{record.address.lower()}"}}
    )["Item"]
    assert guard["account_id"] == {"S": record.account_id}


def test_duplicate_account_id_is_refused_and_the_first_record_kept(
    store: DynamoDbStorage,
) -> None:
    first = _record()
    store.insert(first)
    with pytest.raises(AccountExists) as caught:
        store.insert(_record(first.account_id))  # same id, another address
    assert caught.value.code == "account_exists"
    _same(store.get(first.account_id), first)
    page = store.list(10, None)
    assert [r.account_id for r in page.records] == [first.account_id]


def test_duplicate_address_is_refused_and_the_first_record_kept(
    store: DynamoDbStorage,
) -> None:
    first = _record()
    store.insert(first)
    intruder = _record(address=first.address)  # another id, the same address
    with pytest.raises(AccountExists):
        store.insert(intruder)
    assert store.get(intruder.account_id) is None  # the transaction wrote neither item
    _same(store.get_by_address(first.address), first)
    assert [r.account_id for r in store.list(10, None).records] == [first.account_id]


def _race(store: DynamoDbStorage, records: list[AccountRecord]) -> tuple[list[str], int]:
    winners: list[str] = []
    refused = 0
    lock = threading.Lock()
    barrier = threading.Barrier(len(records))

    def insert(record: AccountRecord) -> None:
        nonlocal refused
        barrier.wait()
        try:
            store.insert(record)
        except AccountExists:
            with lock:
                refused += 1
            return
        with lock:
            winners.append(record.address)

    threads = [threading.Thread(target=insert, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return winners, refused


def test_concurrent_inserts_of_one_id_exactly_one_wins(store: DynamoDbStorage) -> None:
    account_id = str(uuid.uuid4())
    contenders = [_record(account_id) for _ in range(8)]
    winners, refused = _race(store, contenders)
    assert len(winners) == 1
    assert refused == 7
    stored = store.get(account_id)
    assert stored is not None
    assert stored.address == winners[0]
    for loser in (r for r in contenders if r.address != winners[0]):
        assert store.get_by_address(loser.address) is None  # no orphan guard items
    assert [r.account_id for r in store.list(50, None).records] == [account_id]


def test_concurrent_inserts_of_one_address_exactly_one_wins(store: DynamoDbStorage) -> None:
    address = to_checksum_address(secrets.token_bytes(20))
    contenders = [_record(address=address) for _ in range(6)]
    winners, refused = _race(store, contenders)
    assert (len(winners), refused) == (1, 5)
    listed = store.list(50, None).records
    assert len(listed) == 1
    assert store.get_by_address(address) == listed[0]


# -- listing ------------------------------------------------------------------------


def _walk(store: Any, limit: int) -> tuple[list[str], list[int]]:
    seen: list[str] = []
    sizes: list[int] = []
    cursor = None
    while True:
        page = store.list(limit, cursor)
        seen.extend(r.account_id for r in page.records)
        sizes.append(len(page.records))
        cursor = page.next_cursor
        if cursor is None:
            return seen, sizes


def test_pagination_returns_every_record_once_in_creation_order(
    store: DynamoDbStorage, tmp_path: Path
) -> None:
    base = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    # 25 records over 10 instants: ties on created_at are ordered by account id
    records = [_record(created_at=base + timedelta(seconds=i % 10)) for i in range(25)]
    for record in records:
        store.insert(record)
    expected = [r.account_id for r in sorted(records, key=lambda r: (r.created_at, r.account_id))]
    seen, sizes = _walk(store, 7)
    assert seen == expected
    assert sizes == [7, 7, 7, 4]
    assert _walk(store, 25) == (expected, [25])
    assert _walk(store, 500) == (expected, [25])

    sqlite = SqliteStorage(tmp_path / "accounts.db")  # the same contract, the same order
    try:
        for record in records:
            sqlite.insert(record)
        assert _walk(sqlite, 7) == (seen, sizes)
        # cursors are interchangeable: both backends encode (created_at, account_id)
        assert store.list(7, None).next_cursor == sqlite.list(7, None).next_cursor
    finally:
        sqlite.close()


def test_list_of_an_empty_table_and_records_past_the_last_cursor(store: DynamoDbStorage) -> None:
    empty = store.list(5, None)
    assert (empty.records, empty.next_cursor) == ([], None)
    early = _record(created_at=datetime(2030, 1, 1, tzinfo=UTC))
    store.insert(early)
    store.insert(_record(created_at=datetime(2030, 1, 2, tzinfo=UTC)))
    first = store.list(1, None)
    assert [r.account_id for r in first.records] == [early.account_id]
    assert first.next_cursor is not None
    late = _record(created_at=datetime(2030, 1, 3, tzinfo=UTC))
    store.insert(late)  # created after the first page was served: the walk still sees it
    rest = store.list(10, first.next_cursor)
    assert len(rest.records) == 2
    assert rest.records[-1].account_id == late.account_id
    assert rest.next_cursor is None


@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        "",
        "A" * 600,
        base64.urlsafe_b64encode(b'["2030-01-01T00:00:00.000000Z","not-a-uuid"]').decode(),
        base64.urlsafe_b64encode(b'["yesterday","00000000-0000-0000-0000-000000000000"]').decode(),
    ],
)
def test_invalid_cursor_is_refused(store: DynamoDbStorage, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        store.list(5, cursor)


def test_list_limit_must_be_positive(store: DynamoDbStorage) -> None:
    with pytest.raises(ValueError, match="positive"):
        store.list(0, None)


# -- health and failures ------------------------------------------------------------


def test_ping_fails_clearly_when_the_table_is_missing(dynamodb: LocalDynamoDb) -> None:
    storage = _storage(dynamodb, _table_name())
    try:
        with pytest.raises(StorageError, match=r"table nw-accounts-\w+ does not exist") as caught:
            storage.ping()
        assert caught.value.code == "storage_error"
        record = _record()
        with pytest.raises(StorageError, match="does not exist") as on_insert:
            storage.insert(record)
        message = str(on_insert.value)
        assert SECRET not in message
        assert TEST_CREDENTIALS.access_key_id not in message
        assert record.encrypted_data_key.hex() not in message
        storage.create_table_if_missing()
        storage.create_table_if_missing()  # idempotent
        storage.ping()
    finally:
        storage.close()


def test_a_created_table_has_point_in_time_recovery_and_deletion_protection(
    dynamodb: LocalDynamoDb,
) -> None:
    table = _table_name()
    storage = _storage(dynamodb, table)
    try:
        storage.create_table_if_missing()
        raw = _raw_client(dynamodb)
        backups = raw.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        recovery = backups["PointInTimeRecoveryDescription"]
        assert recovery["PointInTimeRecoveryStatus"] == "ENABLED"
        assert raw.describe_table(TableName=table)["Table"]["DeletionProtectionEnabled"] is True
    finally:
        storage.close()


def test_ping_fails_when_the_listing_index_is_missing(dynamodb: LocalDynamoDb) -> None:
    table = _table_name()
    _raw_client(dynamodb).create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    )
    storage = _storage(dynamodb, table)
    try:
        with pytest.raises(StorageError, match=f"no index {LIST_INDEX}"):
            storage.ping()
    finally:
        storage.close()


def test_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = DynamoDbStorage(
        _table_name(),
        REGION,
        f"http://127.0.0.1:{port}",
        credentials_source=StaticCredentialSource(TEST_CREDENTIALS),
    )
    try:
        with pytest.raises(StorageError, match=r"DescribeTable failed \(EndpointConnectionError\)"):
            storage.ping()
        with pytest.raises(StorageError, match="GetItem failed"):
            storage.get(str(uuid.uuid4()))
    finally:
        storage.close()


@dataclass
class RotatingSource:
    """A credential source whose key changes when told to, like IMDS at rotation."""

    generation: int = 0

    def get(self) -> Credentials:
        return Credentials(
            f"AKIAROTATING{self.generation:08d}", f"secret-{self.generation}", "token"
        )


def test_every_request_is_signed_with_the_sources_current_credentials(
    dynamodb: LocalDynamoDb,
) -> None:
    source = RotatingSource()
    storage = _storage(dynamodb, _table_name(), source)
    used: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        authorization = request.headers.get("Authorization", b"")
        text = authorization.decode() if isinstance(authorization, bytes) else authorization
        used.append(text.split("Credential=")[1].split("/")[0])

    storage._client.meta.events.register("before-send.dynamodb", capture)
    try:
        storage.create_table_if_missing()
        storage.insert(_record())
        source.generation = 1
        assert storage.list(5, None).records
        assert used[0] == "AKIAROTATING00000000"
        assert used[-1] == "AKIAROTATING00000001"
        assert "AKIAROTATING00000000" in used[:-1]
    finally:
        storage.close()


# -- configuration ------------------------------------------------------------------


def _config(storage: dict[str, Any], kms_region: str = "eu-west-1") -> RelayConfig:
    key_id = KEY_ID.replace(":us-east-1:", f":{kms_region}:")  # a key of the relay's region
    return RelayConfig.from_mapping(
        {"kms": {"key_id": key_id, "region": kms_region}, "storage": storage}
    )


def test_dynamodb_config_defaults_the_region_to_kms() -> None:
    settings = _config({"backend": "dynamodb", "table_name": "nitro-wallet-accounts"}).storage
    assert (settings.backend, settings.table_name) == ("dynamodb", "nitro-wallet-accounts")
    assert settings.region == "eu-west-1"
    assert settings.endpoint_url is None
    explicit = _config(
        {
            "backend": "dynamodb",
            "table_name": "t.a_b-c",
            "region": "us-west-2",
            "endpoint_url": "http://127.0.0.1:8000",
        }
    ).storage
    assert (explicit.region, explicit.endpoint_url) == ("us-west-2", "http://127.0.0.1:8000")
    vpce = "https://dynamodb.eu-west-1.amazonaws.com"
    assert _config({"backend": "dynamodb", "table_name": "t01", "endpoint_url": vpce}).storage
    assert _config({}).storage.backend == "sqlite"


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"backend": "dynamodb"}, "table_name is required"),
        ({"backend": "dynamodb", "table_name": "ab"}, "not a DynamoDB table name"),
        ({"backend": "dynamodb", "table_name": "a b c"}, "not a DynamoDB table name"),
        ({"backend": "dynamodb", "table_name": 7}, "table_name must be a non-empty string"),
        ({"backend": "dynamodb", "table_name": "tbl", "region": "mars"}, "not an AWS region"),
        (
            {"backend": "dynamodb", "table_name": "tbl", "endpoint_url": "http://10.0.0.5:8000"},
            "must be an https URL",
        ),
        (
            {"backend": "dynamodb", "table_name": "tbl", "endpoint_url": "https://h/x?y=1"},
            "must be an https URL",
        ),
        (
            {"backend": "dynamodb", "table_name": "tbl", "endpoint_url": "https://u:p@h"},
            "must be an https URL",
        ),
        (
            {"backend": "dynamodb", "table_name": "tbl", "sqlite_path": "/tmp/x.db"},
            r"unknown key\(s\) in \[storage\]: \['sqlite_path'\]",
        ),
        ({"backend": "dynamodb", "table_name": "tbl", "tabel": "x"}, "unknown key"),
        ({"backend": "sqlite", "table_name": "tbl"}, r"unknown key\(s\) in \[storage\]"),
        ({"backend": "cassandra"}, "backend must be one of"),
    ],
)
def test_invalid_dynamodb_configs_are_refused(storage: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(storage)


# -- the relay on DynamoDB ----------------------------------------------------------


@dataclass
class DynamoRelays:
    enclave: FakeEnclave
    imds: FakeImds
    relays: list[RelayHarness]
    vsock: Path
    table: str

    def call(self, index: int, method: str, path: str, body: Any = None) -> HttpAnswer:
        return http_call(self.relays[index].port, method, path, body)


@pytest.fixture
def fleet(dynamodb: LocalDynamoDb, tmp_path: Path) -> Iterator[Callable[[int, bool], DynamoRelays]]:
    started: list[DynamoRelays] = []

    def start(count: int, create_table: bool = True) -> DynamoRelays:
        vsock = short_tempdir()
        enclave = FakeEnclave(vsock).start()
        imds = FakeImds().start()
        table = _table_name()
        if create_table:
            admin = _storage(dynamodb, table)
            admin.create_table_if_missing()
            admin.close()
        relays = []
        for _ in range(count):
            config = relay_config(
                vsock_spec=enclave.transport_spec,
                imds_endpoint=imds.endpoint,
                sqlite_path=tmp_path / "unused.db",
            )
            config["storage"] = {
                "backend": "dynamodb",
                "table_name": table,
                "endpoint_url": dynamodb.endpoint,
            }
            relays.append(RelayHarness(config))
        fleet = DynamoRelays(enclave, imds, relays, vsock, table)
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        for relay in fleet.relays:
            relay.stop()
        fleet.imds.stop()
        fleet.enclave.stop()
        remove_tree(fleet.vsock)
    assert not (tmp_path / "unused.db").exists()  # the sqlite backend was never opened


def test_relay_serves_accounts_from_dynamodb(
    fleet: Callable[[int, bool], DynamoRelays], dynamodb: LocalDynamoDb
) -> None:
    stack = fleet(1, True)
    assert stack.call(0, "GET", "/readyz").status == 200
    account_id = str(uuid.uuid4())
    created = stack.call(0, "POST", "/v1/accounts", {"account_id": account_id})
    assert created.status == 201, created.body
    assert created.json() == {"account_id": account_id, "address": fake_address(account_id)}
    fetched = stack.call(0, "GET", f"/v1/accounts/{account_id}")
    assert fetched.status == 200
    assert fetched.json()["address"] == fake_address(account_id)
    assert fetched.json()["key_id"] == KEY_ID
    again = stack.call(0, "POST", "/v1/accounts", {"account_id": account_id})
    assert again.status == 409
    assert again.error_code == "account_exists"
    assert stack.call(0, "GET", f"/v1/accounts/{uuid.uuid4()}").status == 404

    item = _raw_client(dynamodb).get_item(
        TableName=stack.table, Key={"pk": {"S": f"account#{account_id}"}}
    )["Item"]
    assert item["encrypted_private_key"] == {
        "B": base64.b64decode(fake_private_key_ciphertext(account_id))
    }
    assert item["encrypted_data_key"] == {
        "B": base64.b64decode(fake_data_key_ciphertext(account_id, KEY_ID))
    }
    # the relay signed its DynamoDB calls with the IMDS role credentials
    assert stack.imds.state.secret_access_key not in str(item)


def test_two_relays_sharing_one_table_see_each_others_accounts(
    fleet: Callable[[int, bool], DynamoRelays],
) -> None:
    stack = fleet(2, True)
    from_a = stack.call(0, "POST", "/v1/accounts", {}).json()
    from_b = stack.call(1, "POST", "/v1/accounts", {}).json()
    for index in (0, 1):
        for account in (from_a, from_b):
            answer = stack.call(index, "GET", f"/v1/accounts/{account['account_id']}")
            assert answer.status == 200
            assert answer.json()["address"] == account["address"]
        listed = stack.call(index, "GET", "/v1/accounts").json()["accounts"]
        assert {a["account_id"] for a in listed} == {from_a["account_id"], from_b["account_id"]}
    # an id taken through one host is refused on the other
    taken = stack.call(1, "POST", "/v1/accounts", {"account_id": from_a["account_id"]})
    assert taken.status == 409
    # eth_accounts on either host lists the whole fleet's accounts
    rpc = stack.call(1, "POST", "/", {"jsonrpc": "2.0", "id": 1, "method": "eth_accounts"})
    assert set(rpc.json()["result"]) == {from_a["address"], from_b["address"]}


def test_relay_is_not_ready_while_the_table_is_missing(
    fleet: Callable[[int, bool], DynamoRelays],
) -> None:
    stack = fleet(1, False)
    answer = stack.call(0, "GET", "/readyz")
    assert answer.status == 503
    assert answer.json()["checks"]["storage"] == "storage_error"
    failed = stack.call(0, "POST", "/v1/accounts", {})
    assert failed.status == 500
    assert failed.error_code == "storage_error"
    assert stack.imds.state.secret_access_key not in failed.body.decode()
