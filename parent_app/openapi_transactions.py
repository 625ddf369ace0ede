"""OpenAPI schemas of the transactions the enclave signs, one per type, generated from
the enclave's own field tables (:mod:`enclave_app.transaction_fields`): a field the
parser learns appears here, with no second copy to keep in step.
"""

from __future__ import annotations

from typing import Any

from enclave_app.transaction_fields import (
    ALIASES,
    AUTHORIZATION_FIELDS,
    FIELD_KINDS,
    MAX_BLOBS_PER_TX,
    MAX_NONCE,
    NO_CONTRACT_CREATION,
    PERMITTED_FIELDS,
    REQUIRED_FIELDS,
    TYPE_NAMES,
    UINT64_MAX,
    UINT256_MAX,
    UNSIGNED_AUTHORIZATION_FIELDS,
    FieldKind,
)

ADDRESS = {
    "type": "string",
    "pattern": "^0x[0-9a-fA-F]{40}$",
    "description": "20-byte address; mixed case must carry a valid EIP-55 checksum",
}
HEX = {"type": "string", "pattern": "^0x[0-9a-fA-F]*$"}
_DATA = {"type": "string", "pattern": "^0x([0-9a-fA-F]{2})*$", "description": "0x-hex bytes"}
_WORD = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}


def quantity(maximum: int, minimum: int = 0) -> dict[str, Any]:
    """An unsigned integer as a JSON integer or canonical 0x-hex (no leading zeros)."""
    more = len(f"{maximum:x}") - 1  # digits after the first
    nonzero = f"[1-9a-fA-F][0-9a-fA-F]{{0,{more}}}"
    pattern = f"^0x{nonzero}$" if minimum else f"^0x(0|{nonzero})$"
    return {
        "oneOf": [
            {"type": "integer", "minimum": minimum, "maximum": maximum},
            {"type": "string", "pattern": pattern},
        ],
        "description": f"integer or 0x-hex, {minimum}..{hex(maximum)}; never a float or a "
        "decimal string",
    }


_SIGNED_AUTHORIZATION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": sorted(AUTHORIZATION_FIELDS),
    "properties": {
        "chainId": quantity(UINT256_MAX),
        "address": ADDRESS,
        "nonce": quantity(MAX_NONCE),
        "yParity": quantity(1),
        "r": {"anyOf": [quantity(UINT256_MAX, 1), _WORD]},
        "s": {"anyOf": [quantity(UINT256_MAX, 1), _WORD], "description": "low s"},
    },
}

_KIND_SCHEMAS: dict[FieldKind, dict[str, Any]] = {
    FieldKind.CHAIN_ID: quantity(UINT64_MAX, 1),
    FieldKind.NONCE: quantity(MAX_NONCE),
    FieldKind.UINT64: quantity(UINT64_MAX),
    FieldKind.UINT256: quantity(UINT256_MAX),
    FieldKind.ADDRESS: ADDRESS,
    FieldKind.OPTIONAL_ADDRESS: {"anyOf": [ADDRESS, {"type": "null"}]},
    FieldKind.DATA: _DATA,
    FieldKind.ACCESS_LIST: {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["address", "storageKeys"],
            "properties": {"address": ADDRESS, "storageKeys": {"type": "array", "items": _WORD}},
        },
    },
    FieldKind.BLOB_HASHES: {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_BLOBS_PER_TX,
        "items": {"type": "string", "pattern": "^0x01[0-9a-fA-F]{62}$"},
        "description": "EIP-4844 versioned hashes (version byte 0x01)",
    },
    FieldKind.AUTHORIZATION_LIST: {
        "type": "array",
        "minItems": 1,
        "items": _SIGNED_AUTHORIZATION,
        "description": "signed EIP-7702 authorization tuples",
    },
}


def _field_schema(tx_type: int, name: str) -> dict[str, Any]:
    kind = FIELD_KINDS[name]
    if kind is FieldKind.TYPE:
        return {"enum": [tx_type, hex(tx_type)], "description": "inferred when absent"}
    if kind is FieldKind.OPTIONAL_ADDRESS and name == "to" and tx_type in NO_CONTRACT_CREATION:
        return ADDRESS
    schema = dict(_KIND_SCHEMAS[kind])
    if name in ALIASES:
        schema["description"] = f"alias of {ALIASES[name]} (both only with equal values)"
    return schema


def transaction_schema(tx_type: int) -> dict[str, Any]:
    """The request schema of one transaction type."""
    gas_names = [*sorted(name for name, field in ALIASES.items() if field == "gas"), "gas"]
    required = sorted(REQUIRED_FIELDS[tx_type])
    if tx_type in NO_CONTRACT_CREATION:
        required = sorted({*required, "to"})
    return {
        "type": "object",
        "description": TYPE_NAMES[tx_type][1],
        "additionalProperties": False,
        "required": required,
        "anyOf": [{"required": [name]} for name in gas_names],
        "properties": {
            name: _field_schema(tx_type, name) for name in sorted(PERMITTED_FIELDS[tx_type])
        },
    }


def transaction_schemas() -> dict[str, dict[str, Any]]:
    """Component schemas: one per type, and ``Transaction``, any one of them."""
    schemas = {TYPE_NAMES[t][0]: transaction_schema(t) for t in sorted(TYPE_NAMES)}
    schemas["Transaction"] = {
        "description": "eth_signTransaction fields of one of the supported types. A legacy "
        "transaction without chainId (pre-EIP-155) is refused by the signing policy (403).",
        "anyOf": [{"$ref": f"#/components/schemas/{name}"} for name in sorted(schemas)],
    }
    return schemas


# The sign_authorization op takes the unsigned tuple: the signed one minus its signature.
UNSIGNED_AUTHORIZATION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": sorted(UNSIGNED_AUTHORIZATION_FIELDS),
    "properties": {
        name: _SIGNED_AUTHORIZATION["properties"][name] for name in UNSIGNED_AUTHORIZATION_FIELDS
    },
    "description": "EIP-7702 authorization (chainId 0 = any chain).",
}
