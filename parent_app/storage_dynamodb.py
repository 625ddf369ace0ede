"""Account storage in DynamoDB: the fleet backend, shared by every relay of an ASG.

Same contract as ``SqliteStorage`` (see ``parent_app.storage.Storage``): an insert is
durable before it returns, never overwrites, and fails with ``AccountExists`` when the
account id or the address is taken. The relay signs with the instance role it reads
from IMDSv2; those credentials are asked for again before every request, so rotation
is followed without rebuilding the client.

Table schema (created by infrastructure code; ``create_table_if_missing`` exists for
tests and the simulator only)::

    TableName:            <storage.table_name>
    BillingMode:          PAY_PER_REQUEST (or provisioned, the relay does not care)
    KeySchema:            pk (S, HASH)
    AttributeDefinitions: pk S, list_pk S, list_sk S
    GlobalSecondaryIndex: "accounts_by_creation"
                          KeySchema  list_pk (S, HASH), list_sk (S, RANGE)
                          Projection ALL
    Required:             point-in-time recovery (the accounts' only copy besides backups),
                          DeletionProtectionEnabled
    Recommended:          SSE with KMS; on-demand backups (docs/operations.md)

Items (every account is two items written in one ``TransactWriteItems``, each with
``attribute_not_exists(pk)``, so neither the id nor the address can ever be reused):

    pk = "account#<account_id>"        kind = "account", account_id, address (EIP-55),
                                       key_id, encrypted_private_key (B),
                                       encrypted_data_key (B), created_at,
                                       metadata (S, only when the account has any),
                                       list_pk = "accounts",
                                       list_sk = "<created_at>#<account_id>"
    pk = "address#<lowercase address>" kind = "address", account_id, address

Design choices:

* Lookup by address goes through the guard item (strongly consistent GetItem, then the
  account item), not a GSI on the address: a GSI is eventually consistent and cannot
  enforce uniqueness, and the guard item has to exist anyway to make the address unique.
* Listing is a Query on the sparse GSI ``accounts_by_creation`` whose partition is the
  fixed value ``"accounts"`` and whose sort key is ``created_at#account_id``: the order is
  the one ``SqliteStorage`` gives and the cursor (``created_at``, ``account_id``) is
  shared with it, so pages never skip or repeat records. The trade-offs: one GSI
  partition takes every account (fine: account creation is rare, each costs a KMS call,
  far below a partition's ~1000 writes/s), and a GSI is eventually consistent, so an
  account may show up in a listing a moment after its creation was answered (``get``
  and ``get_by_address`` are strongly consistent and see it at once). A Scan would need
  no index but returns items in hash order: no creation order, and a cursor would be a
  raw ``LastEvaluatedKey``; listing is an operator tool, so order won.
* ``TransactionConflict`` cancellations (two transactions touching one item at once) are
  retried a few times: the retry then sees the winner's items and fails with
  ``AccountExists``. Each attempt carries a ClientRequestToken, so botocore's own retry
  of a request whose answer was lost cannot turn our own success into a 409.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    ReadOnlyCredentials,
)
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import BotoCoreError, ClientError

from parent_app.credentials import CredentialSource
from parent_app.errors import AccountExists, StorageError
from parent_app.storage import (
    AccountPage,
    AccountRecord,
    decode_cursor,
    encode_cursor,
    format_time,
    is_uuid,
    parse_time,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

log = logging.getLogger(__name__)

LIST_INDEX = "accounts_by_creation"
LIST_PARTITION = "accounts"
CONFLICT_ATTEMPTS = 4
CONFLICT_BACKOFF_SECONDS = 0.05
_CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)

Item = dict[str, Any]


class _SourceCredentials(BotocoreCredentials):
    """botocore credentials read from the relay's source at every signature.

    The signer calls ``get_frozen_credentials`` once per request; the source caches and
    refreshes (``ImdsCredentialSource``), so a rotated role key is picked up on the next
    request. ``CredentialsUnavailable`` from the source propagates unchanged (503).
    """

    def __init__(self, source: CredentialSource) -> None:  # no super(): nothing is fixed
        self._source = source
        self.method = "nitro-wallet-relay"
        self.account_id = None

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        current = self._source.get()
        return ReadOnlyCredentials(
            current.access_key_id, current.secret_access_key, current.session_token, None
        )

    @property
    def access_key(self) -> str:
        return self._source.get().access_key_id

    @access_key.setter
    def access_key(self, value: str) -> None:
        raise AttributeError("credentials come from the credential source")

    @property
    def secret_key(self) -> str:
        return self._source.get().secret_access_key

    @secret_key.setter
    def secret_key(self, value: str) -> None:
        raise AttributeError("credentials come from the credential source")

    @property
    def token(self) -> str | None:
        return self._source.get().session_token

    @token.setter
    def token(self, value: str | None) -> None:
        raise AttributeError("credentials come from the credential source")

    def __repr__(self) -> str:
        return "_SourceCredentials(***)"


class _SourceProvider(CredentialProvider):
    METHOD = "nitro-wallet-relay"
    CANONICAL_NAME = "nitro-wallet-relay"

    def __init__(self, credentials: _SourceCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> _SourceCredentials:
        return self._credentials


def _client(region: str, endpoint_url: str | None, credentials: CredentialSource) -> DynamoDBClient:
    core = botocore.session.Session()
    # Only the relay's source: never environment variables, profiles or files on the host.
    core.register_component(
        "credential_provider",
        CredentialResolver(providers=[_SourceProvider(_SourceCredentials(credentials))]),
    )
    session = boto3.session.Session(botocore_session=core, region_name=region)
    return session.client("dynamodb", endpoint_url=endpoint_url, config=_CLIENT_CONFIG)


def _error_code(exc: ClientError) -> str:
    code = exc.response.get("Error", {}).get("Code")
    return str(code) if code else "Unknown"


class DynamoDbStorage:
    """``Storage`` on one DynamoDB table (schema in the module docstring)."""

    def __init__(
        self,
        table_name: str,
        region: str,
        endpoint_url: str | None = None,
        *,
        credentials_source: CredentialSource,
    ) -> None:
        self.table_name = table_name
        try:
            self._client = _client(region, endpoint_url, credentials_source)
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(
                f"cannot set up the DynamoDB client ({type(exc).__name__})"
            ) from None

    # -- writes ----------------------------------------------------------------

    def insert(self, record: AccountRecord) -> None:
        items = _transaction(self.table_name, record)
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                self._client.transact_write_items(
                    TransactItems=items, ClientRequestToken=str(uuid.uuid4())
                )
                return
            except ClientError as exc:
                reasons = _cancellation_codes(exc)
                if "ConditionalCheckFailed" in reasons:
                    raise AccountExists(
                        f"account {record.account_id} or address {record.address} already exists"
                    ) from None
                if "TransactionConflict" in reasons and attempt + 1 < CONFLICT_ATTEMPTS:
                    time.sleep(CONFLICT_BACKOFF_SECONDS * 2**attempt)
                    continue
                raise self._failure("TransactWriteItems", exc) from None
            except BotoCoreError as exc:
                raise self._failure("TransactWriteItems", exc) from None
        raise StorageError("DynamoDB TransactWriteItems kept conflicting")  # pragma: no cover

    # -- reads -----------------------------------------------------------------

    def get(self, account_id: str) -> AccountRecord | None:
        if not is_uuid(account_id):
            return None
        item = self._get_item(f"account#{account_id}")
        if item is None:
            return None
        record = _record(item)
        if record.account_id != account_id:
            raise StorageError("a stored account record is malformed")
        return record

    def get_by_address(self, address: str) -> AccountRecord | None:
        lower = address.lower()
        if len(lower) != 42 or not lower.startswith("0x"):
            return None
        guard = self._get_item(f"address#{lower}")
        if guard is None:
            return None
        account_id = _string(guard, "account_id")
        record = self.get(account_id)
        if record is None or record.address.lower() != lower:
            raise StorageError("address index and account record disagree")
        return record

    def list(self, limit: int, after: str | None) -> AccountPage:
        if limit < 1:
            raise ValueError("limit must be positive")
        condition = "list_pk = :partition"
        values: dict[str, Any] = {":partition": {"S": LIST_PARTITION}}
        if after is not None:
            created, account_id = decode_cursor(after)
            condition += " AND list_sk > :after"
            values[":after"] = {"S": f"{created}#{account_id}"}
        collected: list[Item] = []
        start_key: Mapping[str, Any] | None = None
        while len(collected) <= limit:
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "IndexName": LIST_INDEX,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": True,
                "Limit": limit + 1 - len(collected),
            }
            if start_key is not None:
                request["ExclusiveStartKey"] = start_key
            try:
                answer = self._client.query(**request)
            except (ClientError, BotoCoreError) as exc:
                raise self._failure("Query", exc) from None
            collected.extend(answer.get("Items", []))
            start_key = answer.get("LastEvaluatedKey")
            if not start_key:
                break
        records = [_record(item) for item in collected[:limit]]
        more = len(collected) > limit
        cursor = encode_cursor(records[-1].created_at, records[-1].account_id) if more else None
        return AccountPage(records=records, next_cursor=cursor)

    def ping(self) -> None:
        """The table and its listing index exist and are ACTIVE."""
        try:
            table = self._client.describe_table(TableName=self.table_name)["Table"]
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("DescribeTable", exc) from None
        if table.get("TableStatus") != "ACTIVE":
            raise StorageError(
                f"DynamoDB table {self.table_name} is {table.get('TableStatus')}, not ACTIVE"
            )
        indexes = {i.get("IndexName"): i for i in table.get("GlobalSecondaryIndexes", [])}
        index = indexes.get(LIST_INDEX)
        if index is None:
            raise StorageError(f"DynamoDB table {self.table_name} has no index {LIST_INDEX}")
        if index.get("IndexStatus") != "ACTIVE":
            raise StorageError(f"DynamoDB index {LIST_INDEX} is not ACTIVE")

    def close(self) -> None:
        self._client.close()

    # -- tests and the simulator -----------------------------------------------

    def create_table_if_missing(self) -> None:
        """Create the table of the module docstring, with point-in-time recovery and
        deletion protection on (production tables come from IaC, with the same settings)."""
        try:
            self._client.create_table(
                TableName=self.table_name,
                BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "list_pk", "AttributeType": "S"},
                    {"AttributeName": "list_sk", "AttributeType": "S"},
                ],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": LIST_INDEX,
                        "KeySchema": [
                            {"AttributeName": "list_pk", "KeyType": "HASH"},
                            {"AttributeName": "list_sk", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
                DeletionProtectionEnabled=True,
            )
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise self._failure("CreateTable", exc) from None
        except BotoCoreError as exc:
            raise self._failure("CreateTable", exc) from None
        try:
            self._client.get_waiter("table_exists").wait(
                TableName=self.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("DescribeTable", exc) from None
        try:
            self._client.update_continuous_backups(
                TableName=self.table_name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("UpdateContinuousBackups", exc) from None

    # -- helpers ---------------------------------------------------------------

    def _get_item(self, pk: str) -> Item | None:
        try:
            answer = self._client.get_item(
                TableName=self.table_name, Key={"pk": {"S": pk}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("GetItem", exc) from None
        item: Item | None = answer.get("Item")
        return item

    def _failure(self, operation: str, exc: Exception) -> StorageError:
        """A StorageError naming the operation and the error code only.

        Service messages can echo request values, and botocore errors can carry
        request details: neither goes into the message.
        """
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                return StorageError(f"DynamoDB table {self.table_name} does not exist")
            detail = code
        else:
            detail = type(exc).__name__
        log.warning("DynamoDB %s on %s failed: %s", operation, self.table_name, detail)
        return StorageError(f"DynamoDB {operation} failed ({detail})")


def _transaction(table_name: str, record: AccountRecord) -> list[Any]:
    created = format_time(record.created_at)
    account: Item = {
        "pk": {"S": f"account#{record.account_id}"},
        "kind": {"S": "account"},
        "account_id": {"S": record.account_id},
        "address": {"S": record.address},
        "key_id": {"S": record.key_id},
        "encrypted_private_key": {"B": record.encrypted_private_key},
        "encrypted_data_key": {"B": record.encrypted_data_key},
        "created_at": {"S": created},
        "list_pk": {"S": LIST_PARTITION},
        "list_sk": {"S": f"{created}#{record.account_id}"},
    }
    if record.metadata:  # DynamoDB refuses empty strings in some places: leave it out
        account["metadata"] = {"S": record.metadata}
    guard: Item = {
        "pk": {"S": f"address#{record.address.lower()}"},
        "kind": {"S": "address"},
        "account_id": {"S": record.account_id},
        "address": {"S": record.address},
    }
    return [
        {
            "Put": {
                "TableName": table_name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        for item in (account, guard)
    ]


def _cancellation_codes(exc: ClientError) -> set[str]:
    if _error_code(exc) != "TransactionCanceledException":
        return set()
    reasons = exc.response.get("CancellationReasons") or []
    return {str(r.get("Code")) for r in reasons if isinstance(r, dict)}


def _string(item: Item, name: str) -> str:
    value = item.get(name)
    if not isinstance(value, dict) or not isinstance(value.get("S"), str):
        raise StorageError("a stored account record is malformed")
    text: str = value["S"]
    return text


def _binary(item: Item, name: str) -> bytes:
    value = item.get(name)
    if not isinstance(value, dict) or not isinstance(value.get("B"), bytes):
        raise StorageError("a stored account record is malformed")
    blob: bytes = value["B"]
    return blob


def _record(item: Item) -> AccountRecord:
    try:
        return AccountRecord(
            account_id=_string(item, "account_id"),
            address=_string(item, "address"),
            key_id=_string(item, "key_id"),
            encrypted_private_key=_binary(item, "encrypted_private_key"),
            encrypted_data_key=_binary(item, "encrypted_data_key"),
            created_at=parse_time(_string(item, "created_at")),
            metadata=_string(item, "metadata") if "metadata" in item else "",
        )
    except (TypeError, ValueError) as exc:
        raise StorageError("a stored account record is malformed") from exc
