"""Validators for the fields of enclave requests. The enclave trusts nothing the
parent sends: every op reads its params only through these functions."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from enclave_app.account_metadata import AccountMetadata, parse_metadata
from enclave_app.accounts import SealedAccount
from enclave_app.errors import invalid
from enclave_app.kms import AwsCredentials

_ACCESS_KEY_RE = re.compile(r"^[A-Z0-9]{16,128}$")
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9:/_\-.]{1,2048}$")
MAX_SECRET_CHARS = 256
MAX_SESSION_TOKEN_CHARS = 4096
MAX_CIPHERTEXT_BYTES = 8192


def check_params(
    params: Mapping[str, Any], required: AbstractSet[str], optional: AbstractSet[str]
) -> None:
    missing = required - params.keys()
    if missing:
        raise invalid(f"missing field(s): {', '.join(sorted(missing))}")
    unknown = params.keys() - required - optional
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")


def object_field(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    return value


def account_id(value: object, name: str = "account_id") -> str:
    if not isinstance(value, str):
        raise invalid(f"{name} must be a UUID string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise invalid(f"{name} must be a UUID string") from None
    if str(parsed) != value:
        raise invalid(f"{name} must be a lowercase hyphenated UUID")
    return value


def key_id(value: object) -> str:
    if not isinstance(value, str) or not _KEY_ID_RE.match(value):
        raise invalid("key_id must be a KMS key id or ARN")
    return value


def address(value: object, name: str = "address") -> str:
    if not isinstance(value, str) or not _ADDRESS_RE.match(value):
        raise invalid(f"{name} must be a 0x-prefixed 20-byte hex address")
    return value


def base64_bytes(value: object, name: str, max_bytes: int, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, str) or len(value) > (max_bytes * 4) // 3 + 4:
        raise invalid(f"{name} must be a base64 string of at most {max_bytes} bytes")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{name} is not valid base64") from None
    if len(decoded) > max_bytes or (not decoded and not allow_empty):
        raise invalid(f"{name} must hold 1 to {max_bytes} bytes")
    return decoded


CREDENTIAL_FIELDS = ("access_key_id", "secret_access_key", "session_token")
RECORD_FIELDS = (
    "account_id",
    "address",
    "key_id",
    "encrypted_private_key",
    "encrypted_data_key",
)
#: Optional record fields sealed with the key (envelope version 2).
METADATA_FIELDS = ("labels", "stamp_keys", "created_by")
_RECORD_NAMES = frozenset(RECORD_FIELDS)
_METADATA_NAMES = frozenset(METADATA_FIELDS)
#: ``json.dumps(..., sort_keys=True, separators=(",", ":"))``, its encoder built once.
_COMPACT_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def credential_fields(value: object) -> tuple[object, object, object]:
    """The credentials object's values in CREDENTIAL_FIELDS order (shape checked)."""
    if not isinstance(value, dict):
        raise invalid("credentials must be an object")
    check_params(value, {"access_key_id", "secret_access_key"}, {"session_token"})
    return value["access_key_id"], value["secret_access_key"], value.get("session_token")


def credentials_from_fields(access: object, secret: object, token: object) -> AwsCredentials:
    if not isinstance(access, str) or not _ACCESS_KEY_RE.match(access):
        raise invalid("credentials.access_key_id is malformed")
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_SECRET_CHARS:
        raise invalid("credentials.secret_access_key is malformed")
    if token is not None and (
        not isinstance(token, str) or not 0 < len(token) <= MAX_SESSION_TOKEN_CHARS
    ):
        raise invalid("credentials.session_token is malformed")
    return AwsCredentials(access, secret, token)


def credentials(value: object) -> AwsCredentials:
    return credentials_from_fields(*credential_fields(value))


def record_fields(value: object, name: str = "account") -> tuple[object, ...]:
    """A stored record's values in RECORD_FIELDS order (shape checked), then its metadata
    fields as one compact JSON text ("" when it has none), so the tuple stays hashable."""
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    check_params(value, _RECORD_NAMES, _METADATA_NAMES)
    metadata = {field: value[field] for field in METADATA_FIELDS if field in value}
    text = _COMPACT_SORTED.encode(metadata) if metadata else ""
    return (*(value[field] for field in RECORD_FIELDS), text)


def sealed_account_from_fields(
    account_id_value: object,
    address_value: object,
    key_id_value: object,
    encrypted_private_key: object,
    encrypted_data_key: object,
    metadata_text: object = "",
) -> SealedAccount:
    if not isinstance(metadata_text, str):
        raise invalid("account metadata is malformed")
    metadata = parse_metadata(json.loads(metadata_text)) if metadata_text else AccountMetadata()
    return SealedAccount(
        account_id=account_id(account_id_value, "account.account_id"),
        address=address(address_value, "account.address"),
        key_id=key_id(key_id_value),
        encrypted_private_key=base64_bytes(
            encrypted_private_key, "account.encrypted_private_key", MAX_CIPHERTEXT_BYTES
        ),
        encrypted_data_key=base64_bytes(
            encrypted_data_key, "account.encrypted_data_key", MAX_CIPHERTEXT_BYTES
        ),
        metadata=metadata,
    )


def sealed_account(value: object) -> SealedAccount:
    return sealed_account_from_fields(*record_fields(value))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
