"""EIP-712 typed structured data, as signed by ``eth_signTypedData_v4``.

Input: the v4 JSON object ``{types, primaryType, domain, message}`` (already decoded;
the relay turns the RPC's JSON string into an object with its float-refusing parser).
Digest: keccak256(0x19 0x01 || hashStruct(EIP712Domain, domain) || hashStruct(primaryType,
message)); v4 semantics: arrays (dynamic ``T[]`` and fixed ``T[n]``, nested, of structs
too) are hashed as keccak256 of the concatenated element encodings.

Validation is strict (fail closed), stricter than most wallets:
- type and field names are identifiers; a struct name may not shadow an atomic type;
  field names are unique within a struct; every referenced type is defined;
- atomic types are ``bool``, ``address``, ``string``, ``bytes``, ``bytes1``..``bytes32``,
  ``uint8``..``uint256`` and ``int8``..``int256`` in steps of 8 (no ``uint``/``int``
  aliases);
- the domain has only the standard fields (name, version, chainId, verifyingContract,
  salt); when ``types.EIP712Domain`` is given it must list exactly the domain's fields,
  in that standard order, with their standard types; when absent it is derived so;
- ``primaryType`` must be a defined struct other than EIP712Domain;
- every struct value has exactly its type's fields (missing and extra both refused);
- integers are JSON integers, decimal strings (``"-5"`` for intN) or 0x-hex strings
  (non-negative), range-checked for their width; ``bool`` only true/false; ``bytesN``
  exactly N bytes of 0x-hex; ``address`` 0x + 40 hex (EIP-55 checked if mixed case);
  fixed-size arrays must have exactly n elements;
- nesting of structs and arrays in the message is bounded by :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from enclave_app.errors import invalid
from enclave_app.signing import fields
from enclave_app.signing.keccak import keccak256
from enclave_app.signing.keys import SigningKey
from enclave_app.signing.messages import SignedMessage, sign_digest_65

MAX_DEPTH = 32
MAX_TYPES = 128
MAX_FIELDS = 256
MAX_FIXED_ARRAY = 4096

DOMAIN = "EIP712Domain"
_DOMAIN_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
)
_IDENT_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_TYPE_RE = re.compile(r"([A-Za-z_$][A-Za-z0-9_$]*)((?:\[(?:[1-9][0-9]{0,5})?\])*)")
_DEC_RE = re.compile(r"-?(0|[1-9][0-9]{0,79})")
_HEX_INT_RE = re.compile(r"0x[0-9a-fA-F]{1,64}")

_ATOMIC: frozenset[str] = frozenset(
    {"bool", "address", "string", "bytes"}
    | {f"bytes{n}" for n in range(1, 33)}
    | {f"uint{n}" for n in range(8, 257, 8)}
    | {f"int{n}" for n in range(8, 257, 8)}
)

Types = dict[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class TypedDataHash:
    domain_separator: bytes
    message_hash: bytes
    digest: bytes


def _base_type(type_str: str) -> str:
    return type_str.split("[", 1)[0]


def _parse_struct(name: str, value: object) -> tuple[tuple[str, str], ...]:
    members = fields.json_list(f"types.{name}", value)
    if len(members) > MAX_FIELDS:
        raise invalid(f"types.{name} has more than {MAX_FIELDS} fields")
    seen: set[str] = set()
    result = []
    for i, member in enumerate(members):
        where = f"types.{name}[{i}]"
        obj = fields.json_object(where, member, required=frozenset({"name", "type"}))
        field_name, field_type = obj["name"], obj["type"]
        if not isinstance(field_name, str) or _IDENT_RE.fullmatch(field_name) is None:
            raise invalid(f"{where}.name must be an identifier")
        if field_name in seen:
            raise invalid(f"{where}.name duplicates field {field_name!r}")
        if not isinstance(field_type, str) or _TYPE_RE.fullmatch(field_type) is None:
            raise invalid(f"{where}.type is not a valid EIP-712 type")
        seen.add(field_name)
        result.append((field_name, field_type))
    return tuple(result)


def _parse_types(value: object) -> Types:
    if not isinstance(value, Mapping):
        raise invalid("types must be an object")
    if len(value) > MAX_TYPES:
        raise invalid(f"types defines more than {MAX_TYPES} types")
    types: Types = {}
    for name, members in value.items():
        if not isinstance(name, str) or _IDENT_RE.fullmatch(name) is None:
            raise invalid("types has a type name that is not an identifier")
        if name in _ATOMIC or name in ("uint", "int"):
            raise invalid(f"types.{name} shadows an atomic type")
        types[name] = _parse_struct(name, members)
    for name, members in types.items():
        for field_name, field_type in members:
            base = _base_type(field_type)
            if base == DOMAIN or (base not in _ATOMIC and base not in types):
                raise invalid(f"types.{name}.{field_name} has undefined type {base!r}")
    return types


def _check_domain(types: Types, domain: object) -> Mapping[str, object]:
    standard = [name for name, _ in _DOMAIN_FIELDS]
    obj = fields.json_object("domain", domain, required=frozenset(), optional=frozenset(standard))
    expected = tuple(pair for pair in _DOMAIN_FIELDS if pair[0] in obj)
    if DOMAIN in types and types[DOMAIN] != expected:
        raise invalid(
            "types.EIP712Domain must list exactly the domain's fields in the order "
            "name, version, chainId, verifyingContract, salt with their standard types"
        )
    types[DOMAIN] = expected
    return obj


class _Encoder:
    def __init__(self, types: Types) -> None:
        self.types = types
        self._type_hashes: dict[str, bytes] = {}

    def _dependencies(self, primary: str) -> list[str]:
        found: set[str] = set()
        stack = [primary]
        while stack:
            for _, field_type in self.types[stack.pop()]:
                base = _base_type(field_type)
                if base in self.types and base not in found and base != primary:
                    found.add(base)
                    stack.append(base)
        return sorted(found)

    def encode_type(self, primary: str) -> str:
        return "".join(
            name + "(" + ",".join(f"{t} {n}" for n, t in self.types[name]) + ")"
            for name in [primary, *self._dependencies(primary)]
        )

    def type_hash(self, name: str) -> bytes:
        if name not in self._type_hashes:
            self._type_hashes[name] = keccak256(self.encode_type(name).encode("ascii"))
        return self._type_hashes[name]

    def hash_struct(self, name: str, value: object, path: str, depth: int) -> bytes:
        if depth > MAX_DEPTH:
            raise invalid(f"{path}: nesting deeper than {MAX_DEPTH}")
        members = self.types[name]
        obj = fields.json_object(path, value, required=frozenset(n for n, _ in members))
        parts = [self.type_hash(name)]
        parts += [self.encode_value(t, obj[n], f"{path}.{n}", depth + 1) for n, t in members]
        return keccak256(b"".join(parts))

    def encode_value(self, type_str: str, value: object, path: str, depth: int) -> bytes:
        if depth > MAX_DEPTH:
            raise invalid(f"{path}: nesting deeper than {MAX_DEPTH}")
        if type_str.endswith("]"):
            inner, _, size = type_str[:-1].rpartition("[")
            items = fields.json_list(path, value)
            if size and len(items) != int(size):
                raise invalid(f"{path} must have exactly {size} elements")
            return keccak256(
                b"".join(
                    self.encode_value(inner, item, f"{path}[{i}]", depth + 1)
                    for i, item in enumerate(items)
                )
            )
        if type_str in self.types:
            return self.hash_struct(type_str, value, path, depth)
        return _encode_atomic(type_str, value, path)


def _integer(type_str: str, value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DEC_RE.fullmatch(value):
        number = int(value, 10)
    elif isinstance(value, str) and _HEX_INT_RE.fullmatch(value):
        number = int(value, 16)
    else:
        raise invalid(f"{path} ({type_str}) must be an integer, decimal string or 0x-hex")
    unsigned = type_str.startswith("uint")
    bits = int(type_str[4:] if unsigned else type_str[3:])
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if not low <= number <= high:
        raise invalid(f"{path} is out of range for {type_str}")
    return number % 2**256


def uint256(path: str, value: object) -> int:
    """A ``uint256`` value as typed data spells it (JSON integer, decimal or 0x-hex)."""
    return _integer("uint256", value, path)


def _encode_atomic(type_str: str, value: object, path: str) -> bytes:
    if type_str == "string":
        if not isinstance(value, str):
            raise invalid(f"{path} must be a string")
        try:
            return keccak256(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise invalid(f"{path} is not valid Unicode") from exc
    if type_str == "bytes":
        return keccak256(fields.hex_bytes(path, value))
    if type_str == "bool":
        if not isinstance(value, bool):
            raise invalid(f"{path} must be true or false")
        return int(value).to_bytes(32, "big")
    if type_str == "address":
        return fields.address(path, value).rjust(32, b"\0")
    if type_str.startswith("bytes"):
        size = int(type_str[5:])
        raw = fields.hex_bytes(path, value)
        if len(raw) != size:
            raise invalid(f"{path} must be exactly {size} bytes for {type_str}")
        return raw.ljust(32, b"\0")
    return _integer(type_str, value, path).to_bytes(32, "big")


def hash_typed_data(data: object) -> TypedDataHash:
    """Validate an eth_signTypedData_v4 object and compute its EIP-712 digest."""
    obj = fields.json_object(
        "typed data", data, required=frozenset({"types", "primaryType", "domain", "message"})
    )
    types = _parse_types(obj["types"])
    primary = obj["primaryType"]
    if not isinstance(primary, str) or primary not in types or primary == DOMAIN:
        raise invalid("primaryType must name a struct defined in types (not EIP712Domain)")
    domain = _check_domain(types, obj["domain"])
    encoder = _Encoder(types)
    domain_separator = encoder.hash_struct(DOMAIN, domain, "domain", 0)
    message_hash = encoder.hash_struct(primary, obj["message"], "message", 0)
    digest = keccak256(b"\x19\x01" + domain_separator + message_hash)
    return TypedDataHash(domain_separator, message_hash, digest)


def sign_typed_data(private_key: bytes | SigningKey, data: object) -> SignedMessage:
    """eth_signTypedData_v4: 65-byte r||s||v signature over the EIP-712 digest."""
    return sign_digest_65(private_key, hash_typed_data(data).digest)
