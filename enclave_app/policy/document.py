"""The policy document: canonical JSON in, a validated :class:`Policy` out.

The enclave reads ``/app/policy.json`` (built into the image, so PCR0 covers it) and
refuses to start on any problem. This validator is hand-written on purpose: the enclave's
dependency set is its trusted computing base, and a YAML parser or a JSON Schema engine
(with its regex dialect, format checkers and reference resolution) is a large body of
code to trust for what fits in this module. Operators write YAML checked against the
published schema (docs/policy.schema.json) by ``nitro-wallet policy compile``, which
also runs this validator, so a file that compiles is a file the enclave loads.

What this module checks beyond the schema (the schema cannot say it): names unique
across rules and limits, and none reserved; ids unique per list; every id a rule,
limit or approval names is declared; approvals only on allow rules and a threshold no
larger than the approver list; ``min <= max`` in ranges; every public key is a valid
P-256 or Ed25519 key in canonical form; address checksums (EIP-55, mixed case only);
and that the bytes are canonical (see :func:`canonical_bytes`), so one policy has one
hash.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from enclave_app import strict_json
from enclave_app.errors import EnclaveError
from enclave_app.policy import erc20, syntax
from enclave_app.policy.conditions import (
    AddressList,
    AuthorizationCondition,
    Condition,
    Erc20Condition,
    Range,
    TransactionCondition,
    TypedDataCondition,
)
from enclave_app.policy.keys import KeyFormatError, PublicKey, parse_public_key
from enclave_app.policy.model import (
    EVERY_PRINCIPAL,
    RESERVED_NAMES,
    AccountScope,
    Approvals,
    ApproverKey,
    Effect,
    Limit,
    Op,
    Policy,
    PrincipalSelector,
    Rule,
    Scope,
    StampKey,
)
from enclave_app.signing import fields

_T = TypeVar("_T")

VERSION = 1
MAX_POLICY_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 16
MAX_RULES = 1000
MAX_LIMITS = 256
MAX_PRINCIPALS = 1000
MAX_LIST = 10_000
MAX_DESCRIPTION = 1024
MAX_STRING = 256
UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1
MAX_WINDOW_SECONDS = 366 * 86_400
MAX_BLOBS = 4096
ANY = "any"
ALL = "all"
_SELECTOR_RE = re.compile(r"0x[0-9a-fA-F]{8}")


class PolicyDocumentError(ValueError):
    """The policy is unusable; the message names the JSON path and the rule broken."""


def canonical_bytes(document: object) -> bytes:
    """The one byte string of a policy: sorted keys, no whitespace, ASCII only."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def load_policy(path: Path) -> Policy:
    """Read, check and parse the policy file the enclave image carries."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyDocumentError(f"cannot read the policy {path}: {exc.strerror}") from exc
    return parse_policy_bytes(data)


def parse_policy_bytes(data: bytes) -> Policy:
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyDocumentError(f"the policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = strict_json.loads(data, max_depth=MAX_DEPTH)
    except strict_json.StrictJsonError as exc:
        raise PolicyDocumentError(f"the policy is not strict JSON: {exc}") from exc
    if canonical_bytes(document) != data:
        raise PolicyDocumentError(
            "the policy is not in canonical form: build it with `nitro-wallet policy compile`"
        )
    return parse_policy(document, sha256=hashlib.sha256(data).hexdigest())


def parse_policy(document: object, *, sha256: str = "") -> Policy:
    """Validate a decoded document (see the module docstring) into a :class:`Policy`."""
    top = _object(
        "policy",
        document,
        required={"version", "principals", "rules"},
        optional={"limits", "description"},
    )
    if type(top["version"]) is not int or top["version"] != VERSION:
        raise PolicyDocumentError(f"version must be {VERSION}")
    registry = _Registry.parse(top["principals"])
    names: set[str] = set()
    rules = tuple(
        _rule(f"rules[{i}]", value, registry, names)
        for i, value in enumerate(_list("rules", top["rules"], MAX_RULES, min_items=0))
    )
    limits = tuple(
        _limit(f"limits[{i}]", value, registry, names)
        for i, value in enumerate(_list("limits", top.get("limits", []), MAX_LIMITS, min_items=0))
    )
    return Policy(
        stamp_keys=registry.stamp_keys,
        relay_identities=registry.relay_identities,
        approvers=registry.approvers,
        rules=rules,
        limits=limits,
        sha256=sha256,
        description=_description("description", top.get("description", "")),
    )


# ----------------------------------------------------------------------- principals
class _Registry:
    def __init__(
        self,
        stamp_keys: dict[str, StampKey],
        relay_identities: dict[str, frozenset[Scope]],
        approvers: dict[str, ApproverKey],
    ) -> None:
        self.stamp_keys = stamp_keys
        self.relay_identities = relay_identities
        self.approvers = approvers

    @classmethod
    def parse(cls, value: object) -> _Registry:
        obj = _object("principals", value, optional={"stamp_keys", "relay_identities", "approvers"})
        stamp_keys: dict[str, StampKey] = {}
        for path, entry in _entries("principals.stamp_keys", obj.get("stamp_keys", [])):
            item = _object(path, entry, required={"id", "public_key", "scopes"})
            key_id = _new_id(f"{path}.id", item["id"], stamp_keys)
            public_key, der = _public_key(f"{path}.public_key", item["public_key"])
            stamp_keys[key_id] = StampKey(key_id, public_key, der, _scopes(path, item["scopes"]))
        relay: dict[str, frozenset[Scope]] = {}
        for path, entry in _entries("principals.relay_identities", obj.get("relay_identities", [])):
            item = _object(path, entry, required={"id", "scopes"})
            relay[_new_id(f"{path}.id", item["id"], relay)] = _scopes(path, item["scopes"])
        approvers: dict[str, ApproverKey] = {}
        for path, entry in _entries("principals.approvers", obj.get("approvers", [])):
            item = _object(path, entry, required={"id", "public_key"})
            approver_id = _new_id(f"{path}.id", item["id"], approvers)
            public_key, der = _public_key(f"{path}.public_key", item["public_key"])
            approvers[approver_id] = ApproverKey(approver_id, public_key, der)
        return cls(stamp_keys, relay, approvers)

    def selector(self, path: str, value: object) -> PrincipalSelector:
        obj = _object(path, value, optional={"stamp_keys", "relay_identities"})
        if not obj:
            raise PolicyDocumentError(f"{path} must name stamp_keys, relay_identities or both")
        stamp_keys, any_stamp_key = None, False
        if "stamp_keys" in obj:
            if obj["stamp_keys"] == ANY:
                any_stamp_key = True
            else:
                stamp_keys = _declared(f"{path}.stamp_keys", obj["stamp_keys"], self.stamp_keys)
        relay, any_relay = None, False
        if "relay_identities" in obj:
            if obj["relay_identities"] == ANY:
                any_relay = True
            else:
                relay = _declared(
                    f"{path}.relay_identities", obj["relay_identities"], self.relay_identities
                )
        return PrincipalSelector(
            stamp_keys=None if stamp_keys is None else frozenset(stamp_keys),
            relay_identities=None if relay is None else frozenset(relay),
            any_stamp_key=any_stamp_key,
            any_relay_identity=any_relay,
        )


def _declared(path: str, value: object, declared: Mapping[str, object]) -> list[str]:
    """A non-empty list of distinct ids, each declared in ``principals``."""
    ids = _id_list(path, value)
    for i, item in enumerate(ids):
        if item not in declared:
            raise PolicyDocumentError(f"{path}[{i}]: {item!r} is not declared in principals")
    return ids


def _scopes(path: str, value: object) -> frozenset[Scope]:
    names = _choices(f"{path}.scopes", value, [scope.value for scope in Scope])
    return frozenset(Scope(name) for name in names)


def _public_key(path: str, value: object) -> tuple[PublicKey, bytes]:
    try:
        return parse_public_key(path, value)
    except KeyFormatError as exc:
        raise PolicyDocumentError(str(exc)) from None


# ---------------------------------------------------------------------------- rules
def _rule(path: str, value: object, registry: _Registry, names: set[str]) -> Rule:
    obj = _object(
        path,
        value,
        required={"name", "effect", "principals", "accounts", "condition"},
        optional={"approvals", "description"},
    )
    name = _name(f"{path}.name", obj["name"], names)
    effect = obj["effect"]
    if effect not in ("allow", "deny"):
        raise PolicyDocumentError(f"{path}.effect must be allow or deny")
    approvals = None
    if "approvals" in obj:
        if effect != "allow":
            raise PolicyDocumentError(f"{path}.approvals: only allow rules can require approvals")
        approvals = _approvals(f"{path}.approvals", obj["approvals"], registry)
    return Rule(
        name=name,
        effect=Effect(effect),
        principals=registry.selector(f"{path}.principals", obj["principals"]),
        accounts=_accounts(f"{path}.accounts", obj["accounts"]),
        condition=_condition(f"{path}.condition", obj["condition"]),
        approvals=approvals,
        description=_description(f"{path}.description", obj.get("description", "")),
    )


def _approvals(path: str, value: object, registry: _Registry) -> Approvals:
    obj = _object(path, value, required={"threshold", "approvers"})
    approvers = _declared(f"{path}.approvers", obj["approvers"], registry.approvers)
    threshold = _int(f"{path}.threshold", obj["threshold"], 1, len(approvers))
    return Approvals(threshold, tuple(approvers))


def _accounts(path: str, value: object) -> AccountScope:
    if value == ALL:
        return AccountScope()
    if isinstance(value, Mapping) and "labels" in value:
        obj = _object(path, value, required={"labels"})
        items = _unique(f"{path}.labels", _list(f"{path}.labels", obj["labels"], MAX_LIST))
        labels = set()
        for i, label in enumerate(items):
            if not syntax.is_label(label):
                raise PolicyDocumentError(f"{path}.labels[{i}] must match {syntax.LABEL_PATTERN}")
            labels.add(label)
        return AccountScope(labels=frozenset(labels))
    if isinstance(value, Mapping) and "account_id" in value:
        obj = _object(path, value, required={"account_id"})
        return AccountScope(account_id=_uuid(f"{path}.account_id", obj["account_id"]))
    raise PolicyDocumentError(
        f'{path} must be "all", {{"labels": [...]}} or {{"account_id": "<uuid>"}}'
    )


def _condition(path: str, value: object) -> Condition:
    obj = _object(path, value, optional={"transaction", "message", "typed_data", "authorization"})
    if not obj:
        raise PolicyDocumentError(
            f"{path} must have at least one of transaction, message, typed_data, authorization"
        )
    if "message" in obj:
        _object(f"{path}.message", obj["message"])
    return Condition(
        transaction=_optional(obj, "transaction", path, _transaction),
        message="message" in obj,
        typed_data=_optional(obj, "typed_data", path, _typed_data),
        authorization=_optional(obj, "authorization", path, _authorization),
    )


_RANGES = (
    "value",
    "gas",
    "gas_price",
    "max_fee_per_gas",
    "max_priority_fee_per_gas",
    "max_fee_per_blob_gas",
)


def _transaction(path: str, value: object) -> TransactionCondition:
    obj = _object(
        path,
        value,
        optional={
            "type",
            "chain_id",
            "to",
            "contract_creation",
            *_RANGES,
            "blob_count",
            "data_empty",
            "calls",
            "erc20",
            "delegation",
        },
    )
    ranges = {
        key: _optional(obj, key, path, lambda p, v: _range(p, v, UINT256_MAX)) for key in _RANGES
    }
    return TransactionCondition(
        types=_optional(obj, "type", path, lambda p, v: _int_set(p, v, 0, 4)),
        chain_ids=_optional(obj, "chain_id", path, lambda p, v: _int_set(p, v, 1, UINT64_MAX)),
        to=_optional(obj, "to", path, _address_list),
        contract_creation=_optional(obj, "contract_creation", path, _bool),
        blob_count=_optional(obj, "blob_count", path, lambda p, v: _range(p, v, MAX_BLOBS)),
        data_empty=_optional(obj, "data_empty", path, _bool),
        calls=_optional(obj, "calls", path, _calls),
        erc20=_optional(obj, "erc20", path, _erc20),
        delegation=_optional(obj, "delegation", path, _authorization),
        **ranges,
    )


def _calls(path: str, value: object) -> dict[bytes, frozenset[bytes]]:
    calls: dict[bytes, frozenset[bytes]] = {}
    for item_path, entry in _entries(path, value, MAX_LIST, min_items=1):
        item = _object(item_path, entry, required={"contract", "selectors"})
        contract = _address(f"{item_path}.contract", item["contract"])
        if contract in calls:
            raise PolicyDocumentError(f"{item_path}.contract is listed twice")
        selectors = _unique(
            f"{item_path}.selectors", _list(f"{item_path}.selectors", item["selectors"], MAX_LIST)
        )
        calls[contract] = frozenset(
            _selector(f"{item_path}.selectors[{i}]", s) for i, s in enumerate(selectors)
        )
    return calls


def _erc20(path: str, value: object) -> Erc20Condition:
    obj = _object(path, value, required={"tokens", "functions"}, optional={"recipients", "amount"})
    functions = _choices(
        f"{path}.functions", obj["functions"], [function.value for function in erc20.Function]
    )
    return Erc20Condition(
        tokens=_address_set(f"{path}.tokens", obj["tokens"]),
        functions=frozenset(erc20.Function(name) for name in functions),
        recipients=_optional(obj, "recipients", path, _address_list),
        amount=_optional(obj, "amount", path, lambda p, v: _range(p, v, UINT256_MAX)),
    )


def _authorization(path: str, value: object) -> AuthorizationCondition:
    obj = _object(path, value, optional={"targets", "chain_id"})
    return AuthorizationCondition(
        targets=_optional(obj, "targets", path, _address_list),
        chain_ids=_optional(obj, "chain_id", path, lambda p, v: _int_set(p, v, 0, UINT256_MAX)),
    )


def _typed_data(path: str, value: object) -> TypedDataCondition:
    obj = _object(path, value, optional={"domain", "primary_type"})
    domain = _object(
        f"{path}.domain",
        obj.get("domain", {}),
        optional={"name", "version", "chain_id", "verifying_contract"},
    )
    where = f"{path}.domain"
    return TypedDataCondition(
        primary_types=_optional(obj, "primary_type", path, _string_set),
        names=_optional(domain, "name", where, _string_set),
        versions=_optional(domain, "version", where, _string_set),
        chain_ids=_optional(domain, "chain_id", where, lambda p, v: _int_set(p, v, 0, UINT256_MAX)),
        verifying_contracts=_optional(domain, "verifying_contract", where, _address_set),
    )


# --------------------------------------------------------------------------- limits
def _limit(path: str, value: object, registry: _Registry, names: set[str]) -> Limit:
    obj = _object(
        path,
        value,
        required={"name", "accounts", "window_seconds"},
        optional={"principals", "operations", "max_value", "max_count", "description"},
    )
    if "max_value" not in obj and "max_count" not in obj:
        raise PolicyDocumentError(f"{path} must set max_value, max_count or both")
    operations = frozenset(Op)
    if "operations" in obj:
        ops = _choices(f"{path}.operations", obj["operations"], [op.value for op in Op])
        operations = frozenset(Op(op) for op in ops)
    return Limit(
        name=_name(f"{path}.name", obj["name"], names),
        accounts=_accounts(f"{path}.accounts", obj["accounts"]),
        principals=(
            registry.selector(f"{path}.principals", obj["principals"])
            if "principals" in obj
            else EVERY_PRINCIPAL
        ),
        operations=operations,
        window_seconds=_int(f"{path}.window_seconds", obj["window_seconds"], 1, MAX_WINDOW_SECONDS),
        max_value=_optional(obj, "max_value", path, lambda p, v: _int(p, v, 0, UINT256_MAX)),
        max_count=_optional(obj, "max_count", path, lambda p, v: _int(p, v, 0, UINT64_MAX)),
        description=_description(f"{path}.description", obj.get("description", "")),
    )


# -------------------------------------------------------------------------- values
def _object(
    path: str,
    value: object,
    *,
    required: set[str] | frozenset[str] = frozenset(),
    optional: set[str] | frozenset[str] = frozenset(),
) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise PolicyDocumentError(f"{path} must be an object")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise PolicyDocumentError(f"{path} has unknown field(s): {', '.join(unknown)}")
    missing = sorted(set(required) - set(value))
    if missing:
        raise PolicyDocumentError(f"{path} is missing field(s): {', '.join(missing)}")
    return value


def _optional(
    obj: Mapping[str, object], key: str, path: str, parse: Callable[[str, object], _T]
) -> _T | None:
    return parse(f"{path}.{key}", obj[key]) if key in obj else None


def _list(path: str, value: object, max_items: int, *, min_items: int = 1) -> list[object]:
    if not isinstance(value, list):
        raise PolicyDocumentError(f"{path} must be a list")
    if not min_items <= len(value) <= max_items:
        raise PolicyDocumentError(f"{path} must have {min_items} to {max_items} entries")
    return value


def _entries(
    path: str, value: object, max_items: int = MAX_PRINCIPALS, *, min_items: int = 0
) -> list[tuple[str, object]]:
    items = _list(path, value, max_items, min_items=min_items)
    return [(f"{path}[{i}]", item) for i, item in enumerate(items)]


def _unique(path: str, items: Sequence[object]) -> list[object]:
    """Refuse repeated entries, with JSON's equality (``1`` and ``true`` differ)."""
    seen: set[str] = set()
    for i, item in enumerate(items):
        key = canonical_bytes(item).decode("ascii")
        if key in seen:
            raise PolicyDocumentError(f"{path}[{i}] repeats an earlier entry")
        seen.add(key)
    return list(items)


def _choices(path: str, value: object, allowed: Sequence[str]) -> list[str]:
    """A non-empty list of distinct names taken from ``allowed``."""
    items = _unique(path, _list(path, value, len(allowed)))
    names = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or item not in allowed:
            raise PolicyDocumentError(f"{path}[{i}] must be one of {', '.join(allowed)}")
        names.append(item)
    return names


def _int(path: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise PolicyDocumentError(f"{path} must be an integer in [{low}, {high}]")
    return value


def _int_set(path: str, value: object, low: int, high: int) -> frozenset[int]:
    items = _unique(path, _list(path, value, MAX_LIST))
    return frozenset(_int(f"{path}[{i}]", item, low, high) for i, item in enumerate(items))


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyDocumentError(f"{path} must be true or false")
    return value


def _range(path: str, value: object, ceiling: int) -> Range:
    obj = _object(path, value, optional={"min", "max"})
    if not obj:
        raise PolicyDocumentError(f"{path} must set min, max or both")
    low = _optional(obj, "min", path, lambda p, v: _int(p, v, 0, ceiling))
    high = _optional(obj, "max", path, lambda p, v: _int(p, v, 0, ceiling))
    bounds = Range(minimum=low, maximum=high)
    if low is not None and high is not None and low > high:
        raise PolicyDocumentError(f"{path}: min is larger than max")
    return bounds


def _address(path: str, value: object) -> bytes:
    try:
        return fields.address(path, value)
    except EnclaveError as exc:
        raise PolicyDocumentError(exc.message) from None


def _address_set(path: str, value: object) -> frozenset[bytes]:
    items = _unique(path, _list(path, value, MAX_LIST))
    return frozenset(_address(f"{path}[{i}]", item) for i, item in enumerate(items))


def _address_list(path: str, value: object) -> AddressList:
    obj = _object(path, value, optional={"in", "not_in"})
    if not obj:
        raise PolicyDocumentError(f"{path} must set in, not_in or both")
    return AddressList(
        within=_optional(obj, "in", path, _address_set),
        outside=_optional(obj, "not_in", path, _address_set),
    )


def _selector(path: str, value: object) -> bytes:
    if not isinstance(value, str) or _SELECTOR_RE.fullmatch(value) is None:
        raise PolicyDocumentError(f"{path} must be a 4-byte selector: 0x + 8 hex digits")
    return bytes.fromhex(value[2:])


def _string_set(path: str, value: object) -> frozenset[str]:
    items = _unique(path, _list(path, value, MAX_LIST))
    strings = set()
    for i, item in enumerate(items):
        if not isinstance(item, str) or len(item) > MAX_STRING:
            raise PolicyDocumentError(f"{path}[{i}] must be a string of at most {MAX_STRING} chars")
        strings.add(item)
    return frozenset(strings)


def _id_list(path: str, value: object) -> list[str]:
    items = _unique(path, _list(path, value, MAX_PRINCIPALS))
    ids = []
    for i, item in enumerate(items):
        if not syntax.is_id(item):
            raise PolicyDocumentError(f"{path}[{i}] must match {syntax.ID_PATTERN}")
        ids.append(item)
    return ids


def _new_id(path: str, value: object, taken: Mapping[str, object]) -> str:
    if not syntax.is_id(value):
        raise PolicyDocumentError(f"{path} must match {syntax.ID_PATTERN}")
    if value in taken:
        raise PolicyDocumentError(f"{path}: {value!r} is declared twice")
    return value


def _name(path: str, value: object, taken: set[str]) -> str:
    if not syntax.is_id(value):
        raise PolicyDocumentError(f"{path} must match {syntax.ID_PATTERN}")
    if value in RESERVED_NAMES:
        raise PolicyDocumentError(f"{path}: {value!r} is reserved for the engine's own decisions")
    if value in taken:
        raise PolicyDocumentError(f"{path}: {value!r} names another rule or limit")
    taken.add(value)
    return value


def _uuid(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise PolicyDocumentError(f"{path} must be a lowercase hyphenated UUID")
    try:
        canonical: str | None = str(uuid.UUID(value))
    except ValueError:
        canonical = None
    if canonical != value:
        raise PolicyDocumentError(f"{path} must be a lowercase hyphenated UUID")
    return value


def _description(path: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise PolicyDocumentError(f"{path} must be a string of at most {MAX_DESCRIPTION} chars")
    return value
