"""When ``eth_signTypedData_v3`` and v4 sign the same digest, and why they differ otherwise.

MetaMask's eth-sig-util defines the two versions (geth has no v3); the enclave signs
v4 (EIP-712 as written). Its v3 encoder differs in exactly three places:

- a field whose value is missing is left out of the struct's encoding (v4 refuses a
  missing atomic value and hashes a missing struct as 32 zero bytes);
- a struct field whose value is null fails (v4 hashes it as 32 zero bytes);
- array types (``Person[]``, ``uint256[2]``) fail: "Arrays are unimplemented in
  encodeData; use V4 extension".

Everything else (type strings, dependency order, atomic and dynamic encodings, the
domain separator) is the same. So a v3 request is signed as v4 exactly when the
domain and the message use no array type and give every field of every struct they
reach a non-null value; anything else is refused with the reason, never signed with
a digest a v3 verifier would not reproduce.
"""

from __future__ import annotations

from typing import Any

DOMAIN_TYPE = "EIP712Domain"
#: Struct nesting checked before giving up (the enclave bounds it again).
MAX_DEPTH = 32


class V3MismatchError(ValueError):
    """v3 and v4 would sign different digests (or v3 could not sign) for this request."""


def check_v3_compatible(typed_data: dict[str, Any]) -> None:
    """Raise V3MismatchError naming the first field where v3 and v4 would part ways.

    Malformed typed data (unknown types, wrong shapes) is left to the enclave's own
    validation: this only looks for the v3/v4 differences.
    """
    types = typed_data.get("types")
    if not isinstance(types, dict):
        return
    domain = typed_data.get("domain")
    if isinstance(domain, dict) and isinstance(types.get(DOMAIN_TYPE), list):
        _check_struct(types, DOMAIN_TYPE, domain, "domain", 0)
    primary = typed_data.get("primaryType")
    message = typed_data.get("message")
    if primary != DOMAIN_TYPE and isinstance(primary, str) and isinstance(message, dict):
        _check_struct(types, primary, message, "message", 0)


def _check_struct(
    types: dict[str, Any], type_name: str, value: dict[str, Any], path: str, depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise V3MismatchError(f"{path} nests structs more than {MAX_DEPTH} levels deep")
    fields = types.get(type_name)
    if not isinstance(fields, list):
        return
    for field in fields:
        if not isinstance(field, dict):
            continue
        name, field_type = field.get("name"), field.get("type")
        if not isinstance(name, str) or not isinstance(field_type, str):
            continue
        where = f"{path}.{name}"
        if field_type.endswith("]"):
            raise V3MismatchError(
                f"eth_signTypedData_v3 has no arrays ({where} is {field_type}): "
                "use eth_signTypedData_v4"
            )
        if name not in value:
            raise V3MismatchError(
                f"{where} is missing: eth_signTypedData_v3 leaves a missing field out of the "
                "hash where v4 refuses it or hashes zeros; send every field or use "
                "eth_signTypedData_v4"
            )
        item = value[name]
        if field_type in types:
            if item is None:
                raise V3MismatchError(
                    f"{where} is null: eth_signTypedData_v3 cannot hash a null struct (v4 "
                    "hashes zeros); use eth_signTypedData_v4"
                )
            if isinstance(item, dict):
                _check_struct(types, field_type, item, where, depth + 1)
