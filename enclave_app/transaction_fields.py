"""The transaction field tables: which eth_signTransaction fields each transaction type
may carry and must carry, and what kind of value each field holds.

One table, two readers: the enclave's parser (:mod:`enclave_app.signing.transactions`)
refuses unknown, type-forbidden and missing fields by it, and the relay's OpenAPI
document (:mod:`parent_app.openapi`) describes each type's request schema from it. Pure
data that imports nothing, so the relay may import it (a protocol module in the
import-linter contract, like :mod:`enclave_app.wire`).
"""

from __future__ import annotations

from enum import StrEnum

LEGACY, ACCESS_LIST, DYNAMIC_FEE, BLOB, SET_CODE = 0, 1, 2, 3, 4

#: Per type: its name in the OpenAPI document and the EIP that defines it.
TYPE_NAMES: dict[int, tuple[str, str]] = {
    LEGACY: ("LegacyTransaction", "legacy, EIP-155 replay-protected"),
    ACCESS_LIST: ("AccessListTransaction", "EIP-2930 (type 1)"),
    DYNAMIC_FEE: ("DynamicFeeTransaction", "EIP-1559 (type 2)"),
    BLOB: ("BlobTransaction", "EIP-4844 (type 3), signed without the blob sidecar"),
    SET_CODE: ("SetCodeTransaction", "EIP-7702 (type 4)"),
}

#: The fields a type adds to the common ones.
TYPE_FIELDS: dict[int, frozenset[str]] = {
    LEGACY: frozenset({"gasPrice"}),
    ACCESS_LIST: frozenset({"gasPrice", "accessList"}),
    DYNAMIC_FEE: frozenset({"maxFeePerGas", "maxPriorityFeePerGas", "accessList"}),
    BLOB: frozenset(
        {
            "maxFeePerGas",
            "maxPriorityFeePerGas",
            "accessList",
            "maxFeePerBlobGas",
            "blobVersionedHashes",
        }
    ),
    SET_CODE: frozenset(
        {"maxFeePerGas", "maxPriorityFeePerGas", "accessList", "authorizationList"}
    ),
}
COMMON_FIELDS = frozenset(
    {"type", "chainId", "nonce", "to", "value", "gas", "gasLimit", "data", "input", "from"}
)
ALL_FIELDS = COMMON_FIELDS.union(*TYPE_FIELDS.values())
#: Per type: every field it may carry.
PERMITTED_FIELDS = {t: COMMON_FIELDS | fields for t, fields in TYPE_FIELDS.items()}
#: Per type: the fields it must carry, besides ``gas`` or its alias ``gasLimit``.
REQUIRED_FIELDS = {
    t: (fields - {"accessList"}) | {"nonce"} | (frozenset() if t == LEGACY else {"chainId"})
    for t, fields in TYPE_FIELDS.items()
}
#: Alias -> field: either name may be given (both only with equal values).
ALIASES = {"gasLimit": "gas", "input": "data"}
#: Types that cannot create a contract: ``to`` is required.
NO_CONTRACT_CREATION = frozenset({BLOB, SET_CODE})

#: An EIP-7702 authorization: the signed tuple in ``authorizationList``, and the
#: unsigned one the sign_authorization op takes.
AUTHORIZATION_FIELDS = frozenset({"chainId", "address", "nonce", "yParity", "r", "s"})
UNSIGNED_AUTHORIZATION_FIELDS = frozenset({"chainId", "address", "nonce"})

#: Blobs per transaction (Osaka / EIP-7594 ``MAX_BLOBS_PER_TX``).
MAX_BLOBS_PER_TX = 6
UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1
#: EIP-2681: a nonce of 2^64-1 or above is invalid.
MAX_NONCE = 2**64 - 2


class FieldKind(StrEnum):
    """What a field's value is; the parser applies the matching check."""

    TYPE = "type"  # 0..4, integer or 0x-hex
    CHAIN_ID = "chain_id"  # 1..2^64-1
    NONCE = "nonce"  # 0..2^64-2
    UINT64 = "uint64"  # gas
    UINT256 = "uint256"  # value and fees
    ADDRESS = "address"  # 20 bytes; mixed case carries a valid EIP-55 checksum
    OPTIONAL_ADDRESS = "optional_address"  # an address or null (to: null creates a contract)
    DATA = "data"  # 0x-hex bytes, even length
    ACCESS_LIST = "access_list"  # [{address, storageKeys: [32-byte words]}]
    BLOB_HASHES = "blob_hashes"  # 1..6 32-byte words, each starting with 0x01
    AUTHORIZATION_LIST = "authorization_list"  # 1.. signed authorization tuples


FIELD_KINDS: dict[str, FieldKind] = {
    "type": FieldKind.TYPE,
    "chainId": FieldKind.CHAIN_ID,
    "nonce": FieldKind.NONCE,
    "to": FieldKind.OPTIONAL_ADDRESS,
    "from": FieldKind.OPTIONAL_ADDRESS,
    "value": FieldKind.UINT256,
    "gas": FieldKind.UINT64,
    "gasLimit": FieldKind.UINT64,
    "gasPrice": FieldKind.UINT256,
    "maxFeePerGas": FieldKind.UINT256,
    "maxPriorityFeePerGas": FieldKind.UINT256,
    "maxFeePerBlobGas": FieldKind.UINT256,
    "data": FieldKind.DATA,
    "input": FieldKind.DATA,
    "accessList": FieldKind.ACCESS_LIST,
    "blobVersionedHashes": FieldKind.BLOB_HASHES,
    "authorizationList": FieldKind.AUTHORIZATION_LIST,
}
if FIELD_KINDS.keys() != ALL_FIELDS:  # pragma: no cover - an edit that forgot one table
    raise ImportError("transaction_fields: FIELD_KINDS must name exactly ALL_FIELDS")
