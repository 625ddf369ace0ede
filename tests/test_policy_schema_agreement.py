"""The published schema and the enclave's hand-written validator agree.

Hypothesis builds consistent policies (every reference declared, names unique, bounds
ordered), then mutates them at random paths. For every document:
- whatever the enclave accepts, the schema accepts;
- a consistent document is accepted by both;
- when the schema accepts and the enclave refuses, the refusal is one of the checks a
  schema cannot express (docs/policy.md, "Beyond the schema").
And the schema shipped in the package is the one published in docs/.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_app.policy import PolicyDocumentError, parse_policy
from nitro_wallet.policy import schema, schema_problems
from tests.policy_helpers import public_pem

ROOT = Path(__file__).resolve().parent.parent
SEMANTIC_REFUSALS = (
    "names another rule or limit",
    "declared twice",
    "is not declared in principals",
    "threshold must be an integer in",
    "min is larger than max",
    "invalid EIP-55 checksum",
    "listed twice",
    "not a valid SubjectPublicKeyInfo",
    "not in canonical form",
    "only P-256 and Ed25519",
    "the PEM body is not valid base64",
)

KEYS = [public_pem("p256", 10), public_pem("ed25519", 11), public_pem("p256", 12)]
ids = st.sampled_from(["a", "b", "ops-1", "Bot_2", "-x"])
labels = st.sampled_from(["hot", "cold", "eu-1", "t.2"])
addresses = st.sampled_from(
    [
        "0x" + "11" * 20,
        "0x" + "AB" * 20,
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x" + "00" * 20,
    ]
)
uint = st.integers(min_value=0, max_value=2**256 - 1)


def unique_lists(
    elements: st.SearchStrategy[Any], max_size: int = 3
) -> st.SearchStrategy[list[Any]]:
    return st.lists(elements, min_size=1, max_size=max_size, unique=True)


@st.composite
def ranges(draw: st.DrawFn, ceiling: int = 2**256 - 1) -> dict[str, int]:
    low, high = sorted(draw(st.lists(st.integers(0, ceiling), min_size=2, max_size=2)))
    keys = draw(st.sampled_from([("min",), ("max",), ("min", "max")]))
    return {key: {"min": low, "max": high}[key] for key in keys}


def address_list() -> st.SearchStrategy[dict[str, list[str]]]:
    return st.fixed_dictionaries(
        {}, optional={"in": unique_lists(addresses), "not_in": unique_lists(addresses)}
    ).filter(bool)


authorization = st.fixed_dictionaries(
    {}, optional={"targets": address_list(), "chain_id": unique_lists(uint)}
)
transaction = st.fixed_dictionaries(
    {},
    optional={
        "type": unique_lists(st.integers(0, 4)),
        "chain_id": unique_lists(st.integers(1, 2**64 - 1)),
        "to": address_list(),
        "contract_creation": st.booleans(),
        "value": ranges(),
        "gas": ranges(),
        "gas_price": ranges(),
        "max_fee_per_gas": ranges(),
        "max_priority_fee_per_gas": ranges(),
        "max_fee_per_blob_gas": ranges(),
        "blob_count": ranges(4096),
        "data_empty": st.booleans(),
        "calls": st.lists(
            st.fixed_dictionaries(
                {
                    "contract": addresses,
                    "selectors": unique_lists(st.sampled_from(["0xa9059cbb", "0x095EA7B3"])),
                }
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda c: str(c["contract"]).lower(),
        ),
        "erc20": st.fixed_dictionaries(
            {
                "tokens": unique_lists(addresses),
                "functions": unique_lists(st.sampled_from(["transfer", "approve", "transferFrom"])),
            },
            optional={"recipients": address_list(), "amount": ranges()},
        ),
        "delegation": authorization,
    },
)
typed = st.fixed_dictionaries(
    {},
    optional={
        "primary_type": unique_lists(st.text(max_size=8)),
        "domain": st.fixed_dictionaries(
            {},
            optional={
                "name": unique_lists(st.text(max_size=8)),
                "version": unique_lists(st.sampled_from(["1", "2"])),
                "chain_id": unique_lists(uint),
                "verifying_contract": unique_lists(addresses),
            },
        ),
    },
)
condition = st.fixed_dictionaries(
    {},
    optional={
        "transaction": transaction,
        "message": st.just({}),
        "typed_data": typed,
        "authorization": authorization,
    },
).filter(bool)
accounts = st.one_of(
    st.just("all"),
    st.fixed_dictionaries({"labels": unique_lists(labels)}),
    st.just({"account_id": "6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a"}),
)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    stamp_ids = draw(st.lists(ids, max_size=3, unique=True))
    relay_ids = draw(st.lists(ids, max_size=3, unique=True))
    approver_ids = draw(st.lists(ids, max_size=3, unique=True))
    scopes = unique_lists(st.sampled_from(["create", "sign", "read"]))

    def selector() -> dict[str, Any]:
        options: dict[str, Any] = {}
        for kind, declared in (("stamp_keys", stamp_ids), ("relay_identities", relay_ids)):
            choices: list[st.SearchStrategy[Any]] = [st.just("any")]
            if declared:
                choices.append(unique_lists(st.sampled_from(declared)))
            if draw(st.booleans()):
                options[kind] = draw(st.one_of(*choices))
        return options or {"stamp_keys": "any"}

    names = draw(st.lists(st.sampled_from(["r1", "r2", "r3", "l1", "l2"]), max_size=5, unique=True))
    rules, limits = [], []
    for name in names:
        if name.startswith("r"):
            item: dict[str, Any] = {
                "name": name,
                "effect": draw(st.sampled_from(["allow", "deny"])),
                "principals": selector(),
                "accounts": draw(accounts),
                "condition": draw(condition),
            }
            if item["effect"] == "allow" and approver_ids and draw(st.booleans()):
                chosen = draw(unique_lists(st.sampled_from(approver_ids)))
                item["approvals"] = {
                    "threshold": draw(st.integers(1, len(chosen))),
                    "approvers": chosen,
                }
            rules.append(item)
        else:
            limit: dict[str, Any] = {
                "name": name,
                "accounts": draw(accounts),
                "window_seconds": draw(st.integers(1, 366 * 86400)),
            }
            bounds = draw(
                st.sampled_from([("max_value",), ("max_count",), ("max_value", "max_count")])
            )
            limit.update({b: draw(st.integers(0, 2**64 - 1)) for b in bounds})
            if draw(st.booleans()):
                limit["principals"] = selector()
            if draw(st.booleans()):
                limit["operations"] = draw(
                    unique_lists(
                        st.sampled_from(
                            [
                                "sign_transaction",
                                "sign_message",
                                "sign_typed_data",
                                "sign_authorization",
                            ]
                        )
                    )
                )
            limits.append(limit)
    doc: dict[str, Any] = {
        "version": 1,
        "principals": {
            "stamp_keys": [
                {"id": i, "public_key": KEYS[n], "scopes": draw(scopes)}
                for n, i in enumerate(stamp_ids)
            ],
            "relay_identities": [{"id": i, "scopes": draw(scopes)} for i in relay_ids],
            "approvers": [{"id": i, "public_key": KEYS[n]} for n, i in enumerate(approver_ids)],
        },
        "rules": rules,
    }
    empty_limits_listed: bool = draw(st.booleans())
    if limits or empty_limits_listed:
        doc["limits"] = limits
    return doc


MUTANTS: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    5,
    2**64,
    2**256,
    "",
    "any",
    "all",
    "allow",
    "deny",
    "sign",
    "hot",
    "Hot",
    "a b",
    "0x",
    "0x" + "11" * 20,
    "0xa9059cbb",
    [],
    [1],
    ["any"],
    [[]],
    {},
    {"x": 1},
    {"min": 1},
    {"in": []},
]


def _near(value: object) -> list[object]:
    """Values next to a leaf: across the bounds of every integer field, one character off
    for strings."""
    if isinstance(value, bool):
        return [not value, int(value)]
    if isinstance(value, int):
        edges = [4, 5, 4096, 4097, 1000, 1001, 366 * 86400, 366 * 86400 + 1, 2**64 - 1]
        return [value + 1, value - 1, 2**256 - 1, *edges]
    if isinstance(value, str):
        return [value + "\n", value.upper(), value[:-1], value + "x", " " + value]
    return []


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(policies()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            continue
        *parents, last = path
        target: Any = doc
        for part in parents:
            target = target[part]
        mutant = copy.deepcopy(draw(st.sampled_from(MUTANTS + _near(target[last]))))
        if action == "delete" and isinstance(target, dict):
            del target[last]
        elif action == "add" and isinstance(target[last], dict):
            key = draw(st.sampled_from(["extra", "min", "in", "name", "labels"]))
            target[last][key] = mutant
        elif action == "add" and isinstance(target[last], list):
            target[last].append(mutant)
        else:
            target[last] = mutant
    return doc


def enclave_verdict(doc: object) -> str | None:
    try:
        parse_policy(doc)
    except PolicyDocumentError as exc:
        return str(exc)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=policies())
def test_a_consistent_policy_is_accepted_by_both(doc: dict[str, Any]) -> None:
    assert schema_problems(doc) == []
    assert enclave_verdict(doc) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated())
def test_the_schema_and_the_enclave_agree_on_mutated_policies(doc: dict[str, Any]) -> None:
    schema_ok = not schema_problems(doc)
    refusal = enclave_verdict(doc)
    if refusal is None:
        assert schema_ok, "the enclave accepted what the schema refuses"
    elif schema_ok:
        assert any(reason in refusal for reason in SEMANTIC_REFUSALS), refusal


def _full_policy() -> dict[str, Any]:
    """One consistent policy that uses every field the schema defines."""
    every_range = {"min": 1, "max": 2}
    return {
        "version": 1,
        "description": "every field",
        "principals": {
            "stamp_keys": [
                {"id": "ops", "public_key": KEYS[0], "scopes": ["create", "sign", "read"]}
            ],
            "relay_identities": [{"id": "bot", "scopes": ["sign"]}],
            "approvers": [
                {"id": "alice", "public_key": KEYS[1]},
                {"id": "bob", "public_key": KEYS[2]},
            ],
        },
        "rules": [
            {
                "name": "r1",
                "effect": "allow",
                "description": "d",
                "principals": {"stamp_keys": ["ops"], "relay_identities": ["bot"]},
                "accounts": {"labels": ["hot"]},
                "approvals": {"threshold": 1, "approvers": ["alice", "bob"]},
                "condition": {
                    "transaction": {
                        "type": [2],
                        "chain_id": [1],
                        "to": {"in": ["0x" + "11" * 20], "not_in": ["0x" + "22" * 20]},
                        "contract_creation": False,
                        "value": every_range,
                        "gas": every_range,
                        "gas_price": every_range,
                        "max_fee_per_gas": every_range,
                        "max_priority_fee_per_gas": every_range,
                        "max_fee_per_blob_gas": every_range,
                        "blob_count": every_range,
                        "data_empty": False,
                        "calls": [{"contract": "0x" + "33" * 20, "selectors": ["0xa9059cbb"]}],
                        "erc20": {
                            "tokens": ["0x" + "44" * 20],
                            "functions": ["transfer"],
                            "recipients": {"in": ["0x" + "55" * 20]},
                            "amount": every_range,
                        },
                        "delegation": {"targets": {"in": ["0x" + "66" * 20]}, "chain_id": [0]},
                    },
                    "message": {},
                    "typed_data": {
                        "primary_type": ["Permit"],
                        "domain": {
                            "name": ["n"],
                            "version": ["1"],
                            "chain_id": [1],
                            "verifying_contract": ["0x" + "77" * 20],
                        },
                    },
                    "authorization": {"targets": {"not_in": ["0x" + "88" * 20]}, "chain_id": [1]},
                },
            },
            {
                "name": "r2",
                "effect": "deny",
                "principals": {"stamp_keys": "any", "relay_identities": "any"},
                "accounts": {"account_id": "6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a"},
                "condition": {"message": {}},
            },
        ],
        "limits": [
            {
                "name": "l1",
                "description": "d",
                "accounts": "all",
                "principals": {"relay_identities": ["bot"]},
                "operations": ["sign_transaction"],
                "window_seconds": 60,
                "max_value": 1,
                "max_count": 1,
            }
        ],
    }


def _sweep() -> list[dict[str, Any]]:
    """FULL with each leaf (and each container) replaced by each nearby or odd value."""
    full = _full_policy()
    documents = []
    for path in paths(full)[1:]:
        *parents, last = path
        target: Any = full
        for part in parents:
            target = target[part]
        for mutant in [*MUTANTS, *_near(target[last]), "DELETE"]:
            doc = copy.deepcopy(full)
            holder: Any = doc
            for part in parents:
                holder = holder[part]
            if mutant == "DELETE":
                if not isinstance(holder, dict):
                    continue
                del holder[last]
            else:
                holder[last] = copy.deepcopy(mutant)
            documents.append(doc)
    return documents


@pytest.mark.slow
def test_every_field_of_a_full_policy_mutated_every_way_gets_one_verdict_from_both() -> None:
    full = _full_policy()
    assert schema_problems(full) == []
    assert enclave_verdict(full) is None
    documents = _sweep()
    assert len(documents) > 3000
    disagreements: list[tuple[str, object]] = []
    for doc in documents:
        schema_ok = not schema_problems(doc)
        refusal = enclave_verdict(doc)
        if refusal is None and not schema_ok:
            disagreements.append(("enclave accepts, schema refuses", schema_problems(doc)))
        if refusal is not None and schema_ok and not any(r in refusal for r in SEMANTIC_REFUSALS):
            disagreements.append(("schema accepts, enclave refuses", refusal))
    assert disagreements == []


def test_the_package_ships_the_published_schema() -> None:
    import json

    assert json.loads((ROOT / "docs" / "policy.schema.json").read_text()) == schema()
    assert (ROOT / "docs" / "policy.schema.json").read_bytes() == (
        ROOT / "nitro_wallet" / "policy.schema.json"
    ).read_bytes()
