"""Hypothesis strategies for the signing tests.

Every generated case carries two renderings of the same values: ``json`` (what the
relay sends the enclave: quantities as int or 0x-hex, addresses lowercase,
uppercase or EIP-55) and ``oracle`` (plain ints and checksummed addresses for
eth-account), so the differential tests compare encodings, not parsers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from hypothesis import strategies as st

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT64_MAX = 2**64 - 1
MAX_NONCE = 2**64 - 2  # EIP-2681
UINT256_MAX = 2**256 - 1

private_keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(
    lambda k: k.to_bytes(32, "big")
)


def _sized_ints(maximum: int) -> st.SearchStrategy[int]:
    """Integers up to ``maximum`` with extra weight on RLP length boundaries."""
    edges = [v for v in (0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**55, 2**56, maximum) if v <= maximum]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(min_value=0, max_value=min(maximum, 2**64)),
        st.integers(min_value=0, max_value=maximum),
    )


def quantity_json(value: int) -> st.SearchStrategy[object]:
    """The same quantity as a JSON int or as 0x-hex with lower/upper digits."""
    hex_digits = f"{value:x}"
    return st.sampled_from([value, "0x" + hex_digits, "0x" + hex_digits.upper()])


raw_addresses = st.binary(min_size=20, max_size=20)


def address_json(raw: bytes) -> st.SearchStrategy[str]:
    lower = raw.hex()
    return st.sampled_from(["0x" + lower, "0x" + lower.upper(), to_checksum_address(raw)])


def hex_json(raw: bytes) -> st.SearchStrategy[str]:
    return st.sampled_from(["0x" + raw.hex(), "0x" + raw.hex().upper()])


@dataclass
class Case:
    json: dict[str, Any]
    oracle: dict[str, Any]


@st.composite
def _quantity_field(
    draw: st.DrawFn, case: Case, name: str, strategy: st.SearchStrategy[int]
) -> int:
    value = draw(strategy)
    case.json[name] = draw(quantity_json(value))
    case.oracle[name] = value
    return value


@st.composite
def access_lists(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    entries = draw(
        st.lists(
            st.tuples(raw_addresses, st.lists(st.binary(min_size=32, max_size=32), max_size=3)),
            max_size=3,
        )
    )
    json_list = [
        {"address": draw(address_json(a)), "storageKeys": [draw(hex_json(k)) for k in keys]}
        for a, keys in entries
    ]
    oracle_list = [
        {"address": to_checksum_address(a), "storageKeys": ["0x" + k.hex() for k in keys]}
        for a, keys in entries
    ]
    return json_list, oracle_list


@st.composite
def signed_authorizations(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """An EIP-7702 tuple with arbitrary (well-formed, low-s) signature values."""
    values = {
        "chainId": draw(_sized_ints(UINT256_MAX)),
        "nonce": draw(_sized_ints(MAX_NONCE)),
        "yParity": draw(st.integers(0, 1)),
        "r": draw(st.integers(1, SECP256K1_N - 1)),
        "s": draw(st.integers(1, SECP256K1_N // 2)),
    }
    raw = draw(raw_addresses)
    json_obj: dict[str, Any] = {k: draw(quantity_json(v)) for k, v in values.items()}
    for key in ("r", "s"):  # viem's form: zero-padded 32-byte words
        if draw(st.booleans()):
            json_obj[key] = "0x" + values[key].to_bytes(32, "big").hex()
    json_obj["address"] = draw(address_json(raw))
    oracle = dict(values, address=to_checksum_address(raw))
    return json_obj, oracle


@st.composite
def transactions(draw: st.DrawFn, tx_type: int) -> Case:
    """A valid transaction of ``tx_type`` in both renderings."""
    case = Case(json={}, oracle={})
    if draw(st.booleans()):  # else inferred from the fee/blob/authorization fields
        case.json["type"] = draw(quantity_json(tx_type))
    case.oracle["type"] = tx_type
    draw(_quantity_field(case, "chainId", st.integers(1, UINT64_MAX)))
    draw(_quantity_field(case, "nonce", _sized_ints(MAX_NONCE)))
    gas = draw(_sized_ints(UINT64_MAX))
    gas_name = draw(st.sampled_from(["gas", "gasLimit"]))
    case.json[gas_name] = draw(quantity_json(gas))
    case.oracle["gas"] = gas
    if draw(st.booleans()) or tx_type != 0:
        draw(_quantity_field(case, "value", _sized_ints(UINT256_MAX)))
    else:
        case.oracle["value"] = 0
    data = draw(st.binary(max_size=draw(st.sampled_from([0, 1, 55, 56, 300]))))
    data_name = draw(st.sampled_from(["data", "input"]))
    case.json[data_name] = draw(hex_json(data))
    case.oracle["data"] = "0x" + data.hex()
    creation = tx_type in (0, 1, 2) and draw(st.integers(0, 4)) == 0
    if not creation:
        to = draw(raw_addresses)
        case.json["to"] = draw(address_json(to))
        case.oracle["to"] = to_checksum_address(to)
    if tx_type in (0, 1):
        draw(_quantity_field(case, "gasPrice", _sized_ints(UINT256_MAX)))
    else:
        max_fee = draw(_sized_ints(UINT256_MAX))
        case.json["maxFeePerGas"] = draw(quantity_json(max_fee))
        case.oracle["maxFeePerGas"] = max_fee
        priority = draw(st.integers(0, max_fee))
        case.json["maxPriorityFeePerGas"] = draw(quantity_json(priority))
        case.oracle["maxPriorityFeePerGas"] = priority
    if tx_type != 0 and (tx_type == 1 or draw(st.booleans())):
        json_list, oracle_list = draw(access_lists())
        case.json["accessList"] = json_list
        case.oracle["accessList"] = oracle_list
    elif tx_type != 0:
        case.oracle["accessList"] = []
    if tx_type == 3:
        draw(_quantity_field(case, "maxFeePerBlobGas", _sized_ints(UINT256_MAX)))
        hashes = draw(
            st.lists(st.binary(min_size=31, max_size=31), min_size=1, max_size=6).map(
                lambda hs: [b"\x01" + h for h in hs]
            )
        )
        case.json["blobVersionedHashes"] = [draw(hex_json(h)) for h in hashes]
        case.oracle["blobVersionedHashes"] = ["0x" + h.hex() for h in hashes]
    if tx_type == 4:
        auths = draw(st.lists(signed_authorizations(), min_size=1, max_size=3))
        case.json["authorizationList"] = [j for j, _ in auths]
        case.oracle["authorizationList"] = [o for _, o in auths]
    return case


# ---------------------------------------------------------------- messages

text_messages = st.text(max_size=200).filter(lambda t: not t.startswith("0x"))
byte_messages = st.binary(max_size=300)

# ---------------------------------------------------------------- EIP-712

_IDENT_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$"
_IDENT_REST = _IDENT_FIRST + "0123456789"
identifiers = st.tuples(
    st.sampled_from(_IDENT_FIRST), st.text(alphabet=_IDENT_REST, max_size=8)
).map("".join)
_ATOMIC_NAMES = (
    {"bool", "address", "string", "bytes", "uint", "int", "EIP712Domain"}
    | {f"bytes{n}" for n in range(1, 33)}
    | {f"uint{n}" for n in range(8, 257, 8)}
    | {f"int{n}" for n in range(8, 257, 8)}
)
struct_names = identifiers.filter(lambda n: n not in _ATOMIC_NAMES)

atomic_types = st.one_of(
    st.sampled_from(["bool", "address", "string", "bytes"]),
    st.integers(1, 32).map(lambda n: f"bytes{n}"),
    st.integers(1, 32).map(lambda n: f"uint{8 * n}"),
    st.integers(1, 32).map(lambda n: f"int{8 * n}"),
)


@st.composite
def atomic_values(draw: st.DrawFn, type_str: str) -> Any:
    """A JSON value valid for an atomic EIP-712 type (eth-account accepts it too)."""
    if type_str == "bool":
        return draw(st.booleans())
    if type_str == "address":
        return draw(raw_addresses.flatmap(address_json))
    if type_str == "string":
        return draw(st.text(max_size=40))
    if type_str == "bytes":
        return "0x" + draw(st.binary(max_size=70)).hex()
    if type_str.startswith("bytes"):
        size = int(type_str[5:])
        return "0x" + draw(st.binary(min_size=size, max_size=size)).hex()
    return draw(integer_values(type_str))


@st.composite
def integer_values(draw: st.DrawFn, type_str: str) -> Any:
    """uintN/intN values, edges included, as JSON int, decimal string or 0x-hex."""
    if type_str.startswith("uint"):
        bits = int(type_str[4:])
        value = draw(st.one_of(st.sampled_from([0, 2**bits - 1]), st.integers(0, 2**bits - 1)))
        return draw(st.sampled_from([value, str(value), hex(value)]))
    bits = int(type_str[3:])
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    value = draw(st.one_of(st.sampled_from([low, -1, 0, high]), st.integers(low, high)))
    return draw(st.sampled_from([value, str(value)]))


@st.composite
def typed_data(draw: st.DrawFn) -> dict[str, Any]:
    """A full eth_signTypedData_v4 object: 1-4 structs in a DAG rooted at primaryType.

    Struct i may reference structs j > i (directly or as arrays, dynamic or fixed,
    nested up to two levels); struct i always references i+1, so the primary type is
    the unique root, as eth-account requires.
    """
    count = draw(st.integers(1, 4))
    names = draw(st.lists(struct_names, min_size=count, max_size=count, unique=True))
    types: dict[str, list[dict[str, str]]] = {}
    for i, name in enumerate(names):
        field_names = draw(st.lists(identifiers, min_size=1, max_size=5, unique=True))
        members = []
        for j, field_name in enumerate(field_names):
            if j == 0 and i + 1 < count:
                base = names[i + 1]
            elif i + 1 < count and draw(st.integers(0, 3)) == 0:
                base = draw(st.sampled_from(names[i + 1 :]))
            else:
                base = draw(atomic_types)
            suffix = draw(
                st.lists(
                    st.one_of(st.just("[]"), st.integers(1, 3).map(lambda n: f"[{n}]")),
                    max_size=2,
                ).map("".join)
            )
            members.append({"name": field_name, "type": base + suffix})
        types[name] = members

    def value_for(type_str: str, depth: int) -> st.SearchStrategy[Any]:
        if type_str.endswith("]"):
            inner, _, size = type_str[:-1].rpartition("[")
            if size:
                return st.lists(value_for(inner, depth), min_size=int(size), max_size=int(size))
            return st.lists(value_for(inner, depth), max_size=3 if depth < 3 else 1)
        if type_str in types:
            return st.fixed_dictionaries(
                {m["name"]: value_for(m["type"], depth + 1) for m in types[type_str]}
            )
        return atomic_values(type_str)

    domain_fields = [
        ("name", "string"),
        ("version", "string"),
        ("chainId", "uint256"),
        ("verifyingContract", "address"),
        ("salt", "bytes32"),
    ]
    chosen = [pair for pair in domain_fields if draw(st.booleans())]
    domain = {name: draw(atomic_values(t)) for name, t in chosen}
    full: dict[str, Any] = {
        "types": types,
        "primaryType": names[0],
        "domain": domain,
        "message": draw(value_for(names[0], 0)),
    }
    if draw(st.booleans()):
        full["types"] = {"EIP712Domain": [{"name": n, "type": t} for n, t in chosen], **types}
    return full
