"""Builders for the signing-policy tests: documents, principals, requests."""

from __future__ import annotations

import copy
import uuid
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from enclave_app.policy import (
    AccountFacts,
    Op,
    Policy,
    Principal,
    PrincipalKind,
    Request,
    Scope,
    parse_policy,
    typed_data_facts,
)
from enclave_app.signing import typed_data
from enclave_app.signing.transactions import parse_authorization, parse_transaction

ACCOUNT_ID = "6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a"
OTHER_ACCOUNT_ID = str(uuid.UUID(int=7))
ADDRESS = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
RECIPIENT = "0x" + "11" * 20
OTHER = "0x" + "22" * 20
TOKEN = "0x" + "a0" * 20
ALL_SCOPES = frozenset(Scope)


@cache
def public_pem(kind: str = "p256", seed: int = 0) -> str:
    """A fresh public key per (kind, seed), stable within a test run."""
    del seed  # only part of the cache key
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "p256"
        else (ed25519.Ed25519PrivateKey.generate())
    )
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def principals() -> dict[str, Any]:
    return {
        "stamp_keys": [
            {
                "id": "ops",
                "public_key": public_pem("p256", 1),
                "scopes": ["create", "sign", "read"],
            },
            {"id": "treasurer", "public_key": public_pem("ed25519", 2), "scopes": ["sign"]},
        ],
        "relay_identities": [
            {"id": "bot", "scopes": ["sign", "read"]},
            {"id": "reader", "scopes": ["read"]},
        ],
        "approvers": [
            {"id": "alice", "public_key": public_pem("ed25519", 3)},
            {"id": "bob", "public_key": public_pem("p256", 4)},
            {"id": "carol", "public_key": public_pem("ed25519", 5)},
        ],
    }


def rule(
    name: str,
    condition: dict[str, Any],
    *,
    effect: str = "allow",
    who: dict[str, Any] | None = None,
    accounts: object = "all",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "effect": effect,
        "principals": who or {"stamp_keys": "any", "relay_identities": "any"},
        "accounts": accounts,
        "condition": condition,
        **extra,
    }


def document(*rules: dict[str, Any], limits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "principals": principals(), "rules": list(rules)}
    if limits is not None:
        doc["limits"] = limits
    return copy.deepcopy(doc)


def policy(*rules: dict[str, Any], limits: list[dict[str, Any]] | None = None) -> Policy:
    return parse_policy(document(*rules, limits=limits))


def stamp(key_id: str = "ops", scopes: frozenset[Scope] = ALL_SCOPES) -> Principal:
    return Principal(PrincipalKind.STAMP, key_id, scopes)


def relay(name: str = "bot", scopes: frozenset[Scope] = ALL_SCOPES) -> Principal:
    return Principal(PrincipalKind.RELAY, name, scopes)


def account(labels: tuple[str, ...] = (), account_id: str = ACCOUNT_ID) -> AccountFacts:
    return AccountFacts(account_id, ADDRESS, frozenset(labels))


def tx(**fields: Any) -> dict[str, Any]:
    """An EIP-1559 transaction (JSON form) with overrides; None removes a field."""
    base: dict[str, Any] = {
        "type": 2,
        "chainId": 1,
        "nonce": 0,
        "to": RECIPIENT,
        "value": 10**17,
        "gas": 21000,
        "maxFeePerGas": 30 * 10**9,
        "maxPriorityFeePerGas": 10**9,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def tx_request(
    principal: Principal | None = None,
    on: AccountFacts | None = None,
    approvers: frozenset[str] = frozenset(),
    **fields: Any,
) -> Request:
    return Request(
        Op.SIGN_TRANSACTION,
        principal or stamp(),
        on or account(),
        parse_transaction(tx(**fields), allow_pre_eip155=True),
        approvers,
    )


def message_request(principal: Principal | None = None, on: AccountFacts | None = None) -> Request:
    return Request(Op.SIGN_MESSAGE, principal or stamp(), on or account(), b"hello")


TYPED: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ],
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
        ],
    },
    "primaryType": "Permit",
    "domain": {"name": "USD Coin", "version": "2", "chainId": 1, "verifyingContract": TOKEN},
    "message": {"owner": RECIPIENT, "spender": OTHER, "value": 5},
}


def typed_request(
    data: dict[str, Any] | None = None, principal: Principal | None = None
) -> Request:
    data = TYPED if data is None else data
    typed_data.hash_typed_data(data)  # validated first, as the enclave does
    return Request(Op.SIGN_TYPED_DATA, principal or stamp(), account(), typed_data_facts(data))


def authorization_request(chain_id: int = 1, address: str = RECIPIENT) -> Request:
    auth = parse_authorization(
        "authorization", {"chainId": chain_id, "address": address, "nonce": 0}
    )
    return Request(Op.SIGN_AUTHORIZATION, stamp(), account(), auth)


def signed_authorization(chain_id: int = 1, address: str = RECIPIENT) -> dict[str, Any]:
    return {"chainId": chain_id, "address": address, "nonce": 0, "yParity": 0, "r": 1, "s": 1}
