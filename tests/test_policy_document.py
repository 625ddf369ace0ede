"""The policy document: hostile documents are refused by the published schema and by the
enclave's own validator alike; the checks only the validator can make; the canonical
bytes; the key parser."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_app.policy import (
    KeyFormatError,
    PolicyDocumentError,
    canonical_bytes,
    load_policy,
    parse_policy,
    parse_policy_bytes,
    parse_public_key,
)
from enclave_app.policy.document import MAX_POLICY_BYTES
from enclave_app.policy.keys import public_key_pem
from nitro_wallet.policy import schema_problems
from tests.policy_helpers import OTHER, RECIPIENT, document, public_pem, rule

ANY_TX: dict[str, Any] = {"transaction": {}}
BASE = document(rule("base", ANY_TX))


def edited(path: str, value: object) -> dict[str, Any]:
    """BASE with ``path`` (dotted, list indices as numbers) set to ``value``;
    the value ``DELETE`` removes the key."""
    doc = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()

# Each is refused by the schema AND by the enclave's validator.
HOSTILE: dict[str, dict[str, Any]] = {
    "not an object": [],  # type: ignore[dict-item]
    "no version": edited("version", DELETE),
    "version 2": edited("version", 2),
    "version true": edited("version", True),
    "unknown top-level field": edited("extra", 1),
    "no rules": edited("rules", DELETE),
    "rules not a list": edited("rules", {}),
    "no principals": edited("principals", DELETE),
    "unknown principal kind": edited("principals.admins", []),
    "stamp key without scopes": edited("principals.stamp_keys.0.scopes", DELETE),
    "unknown scope": edited("principals.stamp_keys.0.scopes", ["sign", "admin"]),
    "empty scopes": edited("principals.relay_identities.0.scopes", []),
    "repeated scope": edited("principals.relay_identities.0.scopes", ["sign", "sign"]),
    "id with a space": edited("principals.relay_identities.0.id", "my bot"),
    "id with a dot (the stamp header's separator)": edited(
        "principals.relay_identities.0.id", "my.bot"
    ),
    "id with a trailing newline": edited("principals.relay_identities.0.id", "bot\n"),
    "id too long": edited("principals.relay_identities.0.id", "b" * 65),
    "key not PEM": edited("principals.stamp_keys.0.public_key", "MFkwEwYHKoZIzj0CAQYI"),
    "key too long": edited("principals.stamp_keys.0.public_key", "-" * 1025),
    "rule without a name": edited("rules.0.name", DELETE),
    "reserved rule name": edited("rules.0.name", "default-deny"),
    "rule named principal-scopes": edited("rules.0.name", "principal-scopes"),
    "rule named account-creation": edited("rules.0.name", "account-creation"),
    "effect maybe": edited("rules.0.effect", "maybe"),
    "no principals in a rule": edited("rules.0.principals", {}),
    "principals all": edited("rules.0.principals", {"stamp_keys": "all"}),
    "empty principal list": edited("rules.0.principals", {"stamp_keys": []}),
    "principals as a string": edited("rules.0.principals", "any"),
    "accounts missing": edited("rules.0.accounts", DELETE),
    "accounts any": edited("rules.0.accounts", "any"),
    "accounts with labels and id": edited(
        "rules.0.accounts",
        {"labels": ["hot"], "account_id": "6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a"},
    ),
    "uppercase label": edited("rules.0.accounts", {"labels": ["Hot"]}),
    "no labels": edited("rules.0.accounts", {"labels": []}),
    "uppercase uuid": edited(
        "rules.0.accounts", {"account_id": "6F1C2B1E-8D0A-4C5E-9B7A-1F2E3D4C5B6A"}
    ),
    "uuid without hyphens": edited(
        "rules.0.accounts", {"account_id": "6f1c2b1e8d0a4c5e9b7a1f2e3d4c5b6a"}
    ),
    "empty condition": edited("rules.0.condition", {}),
    "unknown section": edited("rules.0.condition", {"contract": {}}),
    "message with options": edited("rules.0.condition", {"message": {"max_bytes": 10}}),
    "unknown transaction check": edited("rules.0.condition.transaction", {"nonce": {"max": 1}}),
    "type 5": edited("rules.0.condition.transaction", {"type": [5]}),
    "type as a string": edited("rules.0.condition.transaction", {"type": ["2"]}),
    "chain id 0 for a transaction": edited("rules.0.condition.transaction", {"chain_id": [0]}),
    "chain id beyond uint64": edited("rules.0.condition.transaction", {"chain_id": [2**64]}),
    "empty chain id list": edited("rules.0.condition.transaction", {"chain_id": []}),
    "repeated chain id": edited("rules.0.condition.transaction", {"chain_id": [1, 1]}),
    "to without lists": edited("rules.0.condition.transaction", {"to": {}}),
    "to with a bare list": edited("rules.0.condition.transaction", {"to": [RECIPIENT]}),
    "short address": edited("rules.0.condition.transaction", {"to": {"in": ["0x1234"]}}),
    "address without 0x": edited("rules.0.condition.transaction", {"to": {"in": ["11" * 20]}}),
    "address with a newline": edited(
        "rules.0.condition.transaction", {"to": {"in": [RECIPIENT + "\n"]}}
    ),
    "repeated address": edited("rules.0.condition.transaction", {"to": {"in": [OTHER, OTHER]}}),
    "contract_creation as 1": edited("rules.0.condition.transaction", {"contract_creation": 1}),
    "negative value": edited("rules.0.condition.transaction", {"value": {"max": -1}}),
    "value beyond uint256": edited("rules.0.condition.transaction", {"value": {"max": 2**256}}),
    "value as a string": edited("rules.0.condition.transaction", {"value": {"max": "10"}}),
    "value as a bool": edited("rules.0.condition.transaction", {"value": {"max": True}}),
    "empty range": edited("rules.0.condition.transaction", {"gas": {}}),
    "range with a typo": edited("rules.0.condition.transaction", {"gas": {"maximum": 1}}),
    "too many blobs": edited("rules.0.condition.transaction", {"blob_count": {"max": 4097}}),
    "calls without selectors": edited(
        "rules.0.condition.transaction", {"calls": [{"contract": RECIPIENT}]}
    ),
    "empty calls": edited("rules.0.condition.transaction", {"calls": []}),
    "selector of 3 bytes": edited(
        "rules.0.condition.transaction",
        {"calls": [{"contract": RECIPIENT, "selectors": ["0xa9059c"]}]},
    ),
    "selector not hex": edited(
        "rules.0.condition.transaction",
        {"calls": [{"contract": RECIPIENT, "selectors": ["0xa9059cbz"]}]},
    ),
    "erc20 without tokens": edited(
        "rules.0.condition.transaction", {"erc20": {"functions": ["transfer"]}}
    ),
    "erc20 unknown function": edited(
        "rules.0.condition.transaction", {"erc20": {"tokens": [OTHER], "functions": ["mint"]}}
    ),
    "delegation with a typo": edited(
        "rules.0.condition.transaction", {"delegation": {"target": {}}}
    ),
    "authorization chain id negative": edited(
        "rules.0.condition", {"authorization": {"chain_id": [-1]}}
    ),
    "typed data domain salt": edited(
        "rules.0.condition", {"typed_data": {"domain": {"salt": ["0x"]}}}
    ),
    "typed data name not a string": edited(
        "rules.0.condition", {"typed_data": {"domain": {"name": [1]}}}
    ),
    "typed data name too long": edited(
        "rules.0.condition", {"typed_data": {"primary_type": ["P" * 257]}}
    ),
    "approvals on a deny rule": {
        **BASE,
        "rules": [
            rule("d", ANY_TX, effect="deny", approvals={"threshold": 1, "approvers": ["alice"]})
        ],
    },
    "approvals threshold 0": edited("rules.0.approvals", {"threshold": 0, "approvers": ["alice"]}),
    "approvals without approvers": edited("rules.0.approvals", {"threshold": 1, "approvers": []}),
    "description too long": edited("rules.0.description", "d" * 1025),
    "limit without bounds": edited(
        "limits", [{"name": "l", "accounts": "all", "window_seconds": 60}]
    ),
    "limit window 0": edited(
        "limits", [{"name": "l", "accounts": "all", "window_seconds": 0, "max_count": 1}]
    ),
    "limit window over a year": edited(
        "limits",
        [{"name": "l", "accounts": "all", "window_seconds": 366 * 86400 + 1, "max_count": 1}],
    ),
    "limit unknown operation": edited(
        "limits",
        [
            {
                "name": "l",
                "accounts": "all",
                "window_seconds": 1,
                "max_count": 1,
                "operations": ["attest"],
            }
        ],
    ),
    "limit negative count": edited(
        "limits", [{"name": "l", "accounts": "all", "window_seconds": 1, "max_count": -1}]
    ),
}


@pytest.mark.parametrize("doc", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_document_is_refused_by_the_schema_and_the_enclave(doc: object) -> None:
    assert schema_problems(doc), "the schema accepted it"
    with pytest.raises(PolicyDocumentError):
        parse_policy(doc)


# Accepted by the schema, refused by the enclave's validator: what a schema cannot say.
SEMANTIC: dict[str, tuple[dict[str, Any], str]] = {
    "two rules with one name": (
        document(rule("same", ANY_TX), rule("same", {"message": {}})),
        "names another rule or limit",
    ),
    "a limit named like a rule": (
        document(
            rule("same", ANY_TX),
            limits=[{"name": "same", "accounts": "all", "window_seconds": 1, "max_count": 1}],
        ),
        "names another rule or limit",
    ),
    "a key id declared twice": (
        edited("principals.relay_identities.1.id", "bot"),
        "declared twice",
    ),
    "an undeclared stamp key": (
        edited("rules.0.principals", {"stamp_keys": ["nobody"]}),
        "is not declared in principals",
    ),
    "an undeclared relay identity": (
        edited("rules.0.principals", {"relay_identities": ["nobody"]}),
        "is not declared in principals",
    ),
    "an undeclared approver": (
        edited("rules.0.approvals", {"threshold": 1, "approvers": ["mallory"]}),
        "is not declared in principals",
    ),
    "a threshold above the approver count": (
        edited("rules.0.approvals", {"threshold": 3, "approvers": ["alice", "bob"]}),
        r"threshold must be an integer in \[1, 2\]",
    ),
    "min above max": (
        edited("rules.0.condition.transaction", {"value": {"min": 2, "max": 1}}),
        "min is larger than max",
    ),
    "a bad EIP-55 checksum": (
        edited(
            "rules.0.condition.transaction",
            {"to": {"in": ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"]}},
        ),
        "invalid EIP-55 checksum",
    ),
    "one contract twice in calls (two spellings)": (
        edited(
            "rules.0.condition.transaction",
            {
                "calls": [
                    {"contract": "0x" + "ab" * 20, "selectors": ["0xa9059cbb"]},
                    {"contract": "0x" + "AB" * 20, "selectors": ["0x095ea7b3"]},
                ]
            },
        ),
        "listed twice",
    ),
    "a PEM block that is not a key": (
        edited(
            "principals.stamp_keys.0.public_key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ),
        "not a valid SubjectPublicKeyInfo",
    ),
}


@pytest.mark.parametrize(("doc", "reason"), SEMANTIC.values(), ids=SEMANTIC.keys())
def test_what_the_schema_cannot_say_the_enclave_refuses(doc: dict[str, Any], reason: str) -> None:
    assert schema_problems(doc) == []
    with pytest.raises(PolicyDocumentError, match=reason):
        parse_policy(doc)


def test_errors_name_the_path_of_the_problem() -> None:
    doc = edited("rules.0.condition.transaction", {"to": {"in": [RECIPIENT, "0x12"]}})
    with pytest.raises(
        PolicyDocumentError, match=r"^rules\[0\]\.condition\.transaction\.to\.in\[1\]"
    ):
        parse_policy(doc)


# -- canonical bytes ----------------------------------------------------------------------
def test_only_the_canonical_bytes_load_and_their_hash_is_the_policy_hash(tmp_path: Path) -> None:
    canonical = canonical_bytes(BASE)
    policy = parse_policy_bytes(canonical)
    assert policy.sha256 == hashlib.sha256(canonical).hexdigest()
    assert [r.name for r in policy.rules] == ["base"]
    for spelling in (
        json.dumps(BASE).encode(),
        json.dumps(BASE, sort_keys=True, indent=1).encode(),
        canonical + b"\n",
        b" " + canonical,
        json.dumps(BASE, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        .replace("base", "bas\\u0065")
        .encode(),
    ):
        with pytest.raises(PolicyDocumentError, match="not in canonical form"):
            parse_policy_bytes(spelling)
    path = tmp_path / "policy.json"
    path.write_bytes(canonical)
    assert load_policy(path).sha256 == policy.sha256


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"version":1.0}', "not strict JSON"),
        (b'{"version":1,"version":1}', "not strict JSON"),
        (b"\xff", "not strict JSON"),
        (b"[" * 17 + b"]" * 17, "not strict JSON"),
        (b"{}", "missing field"),
        (b" " * (MAX_POLICY_BYTES + 1), "larger than"),
    ],
)
def test_bytes_that_are_not_a_policy_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(PolicyDocumentError, match=reason):
        parse_policy_bytes(data)


def test_a_missing_policy_file_refuses_to_load(tmp_path: Path) -> None:
    with pytest.raises(PolicyDocumentError, match="cannot read the policy"):
        load_policy(tmp_path / "absent.json")


# -- keys ---------------------------------------------------------------------------------
def _pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _compressed_p256_pem() -> str:
    """A valid SPKI for P-256 whose point is compressed: a second spelling of one key."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    der = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + point
    serialization.load_der_public_key(der)  # it is a key...
    return public_key_pem(der)


def test_p256_and_ed25519_keys_parse_to_their_canonical_der() -> None:
    for kind in ("p256", "ed25519"):
        pem = public_pem(kind, 99)
        key, der = parse_public_key("k", pem)
        assert public_key_pem(der) == pem
        assert der == key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert parse_public_key("k", pem.replace("\n", "\r\n"))[1] == der


def test_hostile_keys_are_refused() -> None:
    hostile = {
        "rsa": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
        "p384": _pem(ec.generate_private_key(ec.SECP384R1()).public_key()),
        "secp256k1": _pem(ec.generate_private_key(ec.SECP256K1()).public_key()),
        "two blocks": public_pem("p256", 1) + public_pem("p256", 2),
        "text before": "note\n" + public_pem("p256", 1),
        "pkcs1 label": public_pem("p256", 1).replace("PUBLIC KEY", "RSA PUBLIC KEY"),
        "not a string": 42,
        "compressed point": _compressed_p256_pem(),
    }
    for name, pem in hostile.items():
        with pytest.raises(KeyFormatError, match=name):
            parse_public_key(name, pem)
