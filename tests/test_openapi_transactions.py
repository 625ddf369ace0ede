"""The OpenAPI document describes each transaction type from the enclave's own field
tables, and what it describes is what the enclave's parser accepts."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from enclave_app import transaction_fields as tables
from enclave_app.errors import EnclaveError
from enclave_app.signing.transactions import parse_transaction
from parent_app.openapi import build_openapi
from tests.stack_helpers import CHAIN_ID

TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
HASH = "0x01" + "ab" * 31
AUTHORIZATION = {
    "chainId": hex(CHAIN_ID),
    "address": TO,
    "nonce": "0x0",
    "yParity": "0x1",
    "r": "0x" + "11" * 32,
    "s": "0x" + "22" * 16,
}
#: One well-formed transaction of each type, fields as clients send them.
EXAMPLES: dict[int, dict[str, Any]] = {
    tables.LEGACY: {"chainId": 1, "nonce": 0, "to": TO, "gas": 21000, "gasPrice": 10**9},
    tables.ACCESS_LIST: {
        "type": "0x1",
        "chainId": 1,
        "nonce": "0x5",
        "to": None,
        "gasLimit": "0x5208",
        "gasPrice": "0x3b9aca00",
        "accessList": [{"address": TO, "storageKeys": ["0x" + "00" * 32]}],
        "data": "0x6000",
    },
    tables.DYNAMIC_FEE: {
        "type": 2,
        "chainId": CHAIN_ID,
        "nonce": 1,
        "to": TO,
        "value": "0xde0b6b3a7640000",
        "gas": 21000,
        "maxFeePerGas": "0x77359400",
        "maxPriorityFeePerGas": "0x3b9aca00",
    },
    tables.BLOB: {
        "type": "0x3",
        "chainId": CHAIN_ID,
        "nonce": 2,
        "to": TO,
        "gas": 21000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "maxFeePerBlobGas": 10**9,
        "blobVersionedHashes": [HASH],
    },
    tables.SET_CODE: {
        "chainId": CHAIN_ID,
        "nonce": 3,
        "to": TO,
        "gas": 60000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "authorizationList": [AUTHORIZATION],
    },
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    built = build_openapi()
    validate(built)
    return built


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(schema)


@pytest.mark.parametrize("tx_type", sorted(tables.TYPE_NAMES))
def test_each_type_is_described_from_the_parser_tables(
    document: dict[str, Any], tx_type: int
) -> None:
    name = tables.TYPE_NAMES[tx_type][0]
    schema = document["components"]["schemas"][name]
    assert set(schema["properties"]) == tables.PERMITTED_FIELDS[tx_type]
    assert set(schema["required"]) >= tables.REQUIRED_FIELDS[tx_type]
    assert schema["additionalProperties"] is False
    transaction = document["components"]["schemas"]["Transaction"]
    assert {"$ref": f"#/components/schemas/{name}"} in transaction["anyOf"]


@pytest.mark.parametrize("tx_type", sorted(EXAMPLES))
def test_a_transaction_the_parser_signs_is_valid_against_its_type(
    document: dict[str, Any], tx_type: int
) -> None:
    tx = EXAMPLES[tx_type]
    assert parse_transaction(tx).tx_type == tx_type
    name = tables.TYPE_NAMES[tx_type][0]
    assert not list(_validator(document, name).iter_errors(tx))
    assert not list(_validator(document, "Transaction").iter_errors(tx))


@pytest.mark.parametrize(
    ("tx_type", "change"),
    [
        (tables.DYNAMIC_FEE, {"gasPrice": 1}),  # a field of another type
        (tables.DYNAMIC_FEE, {"sender": TO}),  # an unknown field
        (tables.BLOB, {"to": None}),  # no contract creation
        (tables.SET_CODE, {"authorizationList": []}),
        (tables.LEGACY, {"nonce": 2**64 - 1}),  # EIP-2681
        (tables.DYNAMIC_FEE, {"chainId": "0x0"}),
        (tables.ACCESS_LIST, {"gasLimit": "0x05208"}),  # leading zero
    ],
)
def test_what_the_parser_refuses_the_document_refuses(
    document: dict[str, Any], tx_type: int, change: dict[str, Any]
) -> None:
    tx = {**EXAMPLES[tx_type], **change}
    with pytest.raises(EnclaveError, match="invalid_params"):
        parse_transaction(tx)
    name = tables.TYPE_NAMES[tx_type][0]
    assert list(_validator(document, name).iter_errors(tx))
