"""Ethereum transactions: parse eth_signTransaction fields, encode and sign them.

Supported: legacy (EIP-155, and pre-EIP-155 only when the caller allows it),
EIP-2930 (type 1), EIP-1559 (type 2), EIP-4844 (type 3) and EIP-7702 (type 4).

Input fields (JSON, web3 / eth_signTransaction names):
``type`` (0..4 as int or 0x-hex; when absent it is inferred as eth-account does:
authorizationList -> 4, maxFeePerBlobGas/blobVersionedHashes -> 3,
maxFeePerGas/maxPriorityFeePerGas -> 2, gasPrice with accessList -> 1,
gasPrice -> 0), ``chainId``, ``nonce``, ``to``, ``value``, ``gas`` (alias
``gasLimit``), ``gasPrice``, ``maxFeePerGas``, ``maxPriorityFeePerGas``, ``data``
(alias ``input``), ``accessList``, ``maxFeePerBlobGas``, ``blobVersionedHashes``,
``authorizationList`` (signed tuples ``{chainId, address, nonce, yParity, r, s}``;
``r``/``s`` may also be zero-padded 32-byte hex) and ``from`` (checked against the signer with
:func:`require_sender`). Anything else is refused.

``to`` absent or null means contract creation (an empty string is refused).
Bounds: nonce is below 2^64-1 (EIP-2681: nonce 2^64-1 is invalid), gas is uint64;
chainId is 1..2^64-1 (every real chain id fits in 64 bits, and EIP-155 ``v`` stays
small); value and fees are uint256.
``value`` defaults to 0 and ``data`` to empty; ``nonce``, ``gas`` and the fee
fields of the type are required, since the enclave cannot fill them in.

A type 3 transaction is signed over its blob versioned hashes; the raw result is the
canonical (non-network) form ``0x03 || rlp([..., blob_versioned_hashes, y, r, s])``
without blobs, commitments or proofs, exactly as eth-account produces it when given no
blobs. The sender attaches the sidecar when broadcasting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from enclave_app import transaction_fields
from enclave_app.errors import EnclaveError, ErrorCode, invalid
from enclave_app.signing import fields, rlp
from enclave_app.signing.keccak import keccak256
from enclave_app.signing.keys import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    SigningKey,
    sign_digest,
    signing_key,
    to_checksum_address,
)

_T = TypeVar("_T")

LEGACY, ACCESS_LIST, DYNAMIC_FEE, BLOB, SET_CODE = (
    transaction_fields.LEGACY,
    transaction_fields.ACCESS_LIST,
    transaction_fields.DYNAMIC_FEE,
    transaction_fields.BLOB,
    transaction_fields.SET_CODE,
)
#: Blobs per transaction (Osaka / EIP-7594 ``MAX_BLOBS_PER_TX``).
MAX_BLOBS_PER_TX = transaction_fields.MAX_BLOBS_PER_TX

#: Version byte of a KZG commitment's versioned hash (EIP-4844).
VERSIONED_HASH_VERSION_KZG = 0x01
#: Prefix of the EIP-7702 authorization digest.
AUTHORIZATION_MAGIC = b"\x05"

# The field tables are shared with the relay's OpenAPI document.
_TYPE_FIELDS = transaction_fields.TYPE_FIELDS
_ALL_FIELDS = transaction_fields.ALL_FIELDS
_PERMITTED_FIELDS = transaction_fields.PERMITTED_FIELDS
_REQUIRED_FIELDS = transaction_fields.REQUIRED_FIELDS
_TYPE_PREFIX = {tx_type: bytes([tx_type]) for tx_type in _TYPE_FIELDS}
_AUTH_FIELDS = transaction_fields.AUTHORIZATION_FIELDS
_UNSIGNED_AUTH_FIELDS = transaction_fields.UNSIGNED_AUTHORIZATION_FIELDS


@dataclass(frozen=True)
class AccessListEntry:
    address: bytes
    storage_keys: tuple[bytes, ...]

    def rlp_item(self) -> rlp.RlpItem:
        return [self.address, list(self.storage_keys)]


@dataclass(frozen=True)
class Authorization:
    """An EIP-7702 authorization tuple; signed when y_parity, r and s are set."""

    chain_id: int
    address: bytes
    nonce: int

    def digest(self) -> bytes:
        """keccak256(0x05 || rlp([chain_id, address, nonce]))."""
        payload = [rlp.uint(self.chain_id), self.address, rlp.uint(self.nonce)]
        return keccak256(AUTHORIZATION_MAGIC + rlp.encode(payload))


@dataclass(frozen=True)
class SignedAuthorization:
    authorization: Authorization
    y_parity: int
    r: int
    s: int

    def rlp_item(self) -> rlp.RlpItem:
        auth = self.authorization
        return [
            rlp.uint(auth.chain_id),
            auth.address,
            rlp.uint(auth.nonce),
            rlp.uint(self.y_parity),
            rlp.uint(self.r),
            rlp.uint(self.s),
        ]

    def to_json(self) -> dict[str, object]:
        """The tuple in the JSON shape accepted by ``authorizationList``."""
        auth = self.authorization
        return {
            "chainId": hex(auth.chain_id),
            "address": to_checksum_address(auth.address),
            "nonce": hex(auth.nonce),
            "yParity": hex(self.y_parity),
            "r": hex(self.r),
            "s": hex(self.s),
        }


@dataclass(frozen=True)
class Transaction:
    """A validated transaction. ``chain_id`` is None only for pre-EIP-155 legacy."""

    tx_type: int
    chain_id: int | None
    nonce: int
    to: bytes | None
    value: int
    gas: int
    data: bytes
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    access_list: tuple[AccessListEntry, ...] = ()
    max_fee_per_blob_gas: int | None = None
    blob_versioned_hashes: tuple[bytes, ...] = ()
    authorization_list: tuple[SignedAuthorization, ...] = ()
    sender: str | None = None
    """The ``from`` field as given (checksummed), for :func:`require_sender`."""

    def unsigned_payload(self) -> bytes:
        """RLP of the fields before the signature, in the order of the type's spec,
        without the list header (so the signed form can reuse it)."""
        encode_uint = rlp.encode_uint
        if self.tx_type in (LEGACY, ACCESS_LIST):
            fees = [encode_uint(_req(self.gas_price))]
        else:
            fees = [
                encode_uint(_req(self.max_priority_fee_per_gas)),
                encode_uint(_req(self.max_fee_per_gas)),
            ]
        items = [
            encode_uint(self.nonce),
            *fees,
            encode_uint(self.gas),
            rlp.encode_bytes(self.to if self.to is not None else b""),
            encode_uint(self.value),
            rlp.encode_bytes(self.data),
        ]
        if self.tx_type == LEGACY:
            return b"".join(items)
        items.insert(0, encode_uint(_req(self.chain_id)))
        items.append(rlp.encode([entry.rlp_item() for entry in self.access_list]))
        if self.tx_type == BLOB:
            items.append(encode_uint(_req(self.max_fee_per_blob_gas)))
            items.append(rlp.encode(list(self.blob_versioned_hashes)))
        elif self.tx_type == SET_CODE:
            items.append(rlp.encode([auth.rlp_item() for auth in self.authorization_list]))
        return b"".join(items)

    def signing_digest(self, payload: bytes | None = None) -> bytes:
        """The 32-byte digest the sender signs (``payload``: :meth:`unsigned_payload`)."""
        if payload is None:
            payload = self.unsigned_payload()
        if self.tx_type == LEGACY:
            if self.chain_id is not None:  # EIP-155
                payload += rlp.encode_uint(self.chain_id) + b"\x80\x80"
            return keccak256(rlp.wrap_list(payload))
        return keccak256(_TYPE_PREFIX[self.tx_type] + rlp.wrap_list(payload))

    def legacy_v(self, y_parity: int) -> int:
        """``v`` of a legacy signature: 27/28, or EIP-155's chain_id * 2 + 35/36."""
        return 27 + y_parity if self.chain_id is None else self.chain_id * 2 + 35 + y_parity

    def encode_signed(self, y_parity: int, r: int, s: int, payload: bytes | None = None) -> bytes:
        """The raw signed transaction (what eth_sendRawTransaction takes)."""
        if payload is None:
            payload = self.unsigned_payload()
        signature = rlp.encode_uint(r) + rlp.encode_uint(s)
        if self.tx_type == LEGACY:
            return rlp.wrap_list(payload + rlp.encode_uint(self.legacy_v(y_parity)) + signature)
        body = rlp.wrap_list(payload + rlp.encode_uint(y_parity) + signature)
        return _TYPE_PREFIX[self.tx_type] + body


@dataclass(frozen=True)
class SignedTransaction:
    raw: bytes
    hash: bytes
    """keccak256 of ``raw``: the transaction hash."""
    y_parity: int
    r: int
    s: int
    v: int
    """Legacy ``v`` (27/28 or EIP-155); equal to ``y_parity`` for typed transactions."""


def _req(value: int | None) -> int:
    if value is None:  # parse_transaction guarantees presence per type
        raise RuntimeError("transaction field missing for its type")
    return value


def _aliased(
    tx: Mapping[str, object], name: str, alias: str, parse: Callable[[str, object], _T]
) -> _T | None:
    """Parse a field that has an alias; both may be given only with equal values."""
    if alias not in tx:
        return parse(name, tx[name]) if name in tx else None
    values = [parse(key, tx[key]) for key in (name, alias) if key in tx]
    if len(values) == 2 and values[0] != values[1]:
        raise invalid(f"{name} and {alias} are both given and differ")
    return values[0] if values else None


def _infer_type(tx: Mapping[str, object]) -> int:
    if "type" in tx:
        return fields.quantity("type", tx["type"], maximum=SET_CODE)
    if "authorizationList" in tx:
        return SET_CODE
    if "maxFeePerBlobGas" in tx or "blobVersionedHashes" in tx:
        return BLOB
    if "maxFeePerGas" in tx or "maxPriorityFeePerGas" in tx:
        return DYNAMIC_FEE
    if "gasPrice" in tx:
        return ACCESS_LIST if "accessList" in tx else LEGACY
    raise invalid("transaction has no type and no fee fields (gasPrice or maxFeePerGas)")


def _access_list(value: object) -> tuple[AccessListEntry, ...]:
    entries = []
    for i, item in enumerate(fields.json_list("accessList", value)):
        name = f"accessList[{i}]"
        obj = fields.json_object(name, item, required=frozenset({"address", "storageKeys"}))
        keys = fields.json_list(f"{name}.storageKeys", obj["storageKeys"])
        entries.append(
            AccessListEntry(
                address=fields.address(f"{name}.address", obj["address"]),
                storage_keys=tuple(
                    fields.word(f"{name}.storageKeys[{j}]", key) for j, key in enumerate(keys)
                ),
            )
        )
    return tuple(entries)


def _blob_hashes(value: object) -> tuple[bytes, ...]:
    items = fields.json_list("blobVersionedHashes", value)
    if not items:
        raise invalid("blobVersionedHashes must not be empty")
    if len(items) > MAX_BLOBS_PER_TX:
        raise invalid(f"blobVersionedHashes has more than {MAX_BLOBS_PER_TX} entries")
    hashes = []
    for i, item in enumerate(items):
        h = fields.word(f"blobVersionedHashes[{i}]", item)
        if h[0] != VERSIONED_HASH_VERSION_KZG:
            raise invalid(f"blobVersionedHashes[{i}] must start with version byte 0x01")
        hashes.append(h)
    return tuple(hashes)


def parse_authorization(name: str, value: object) -> Authorization:
    """An unsigned EIP-7702 authorization ``{chainId, address, nonce}``.

    ``chainId`` 0 means "valid on every chain" (EIP-7702) and is accepted here;
    a signing policy may refuse it.
    """
    obj = fields.json_object(name, value, required=_UNSIGNED_AUTH_FIELDS)
    return Authorization(
        chain_id=fields.quantity(f"{name}.chainId", obj["chainId"]),
        address=fields.address(f"{name}.address", obj["address"]),
        nonce=fields.nonce(f"{name}.nonce", obj["nonce"]),
    )


def _signature_scalar(name: str, value: object, maximum: int) -> int:
    """r or s: a quantity, or a 32-byte word (viem sends them zero-padded)."""
    if isinstance(value, str) and len(value) == 66:
        number = int.from_bytes(fields.word(name, value), "big")
        return fields.quantity(name, number, minimum=1, maximum=maximum)
    return fields.quantity(name, value, minimum=1, maximum=maximum)


def _signed_authorization(name: str, value: object) -> SignedAuthorization:
    obj = fields.json_object(name, value, required=_AUTH_FIELDS)
    auth = parse_authorization(name, {k: obj[k] for k in _UNSIGNED_AUTH_FIELDS})
    return SignedAuthorization(
        authorization=auth,
        y_parity=fields.quantity(f"{name}.yParity", obj["yParity"], maximum=1),
        r=_signature_scalar(f"{name}.r", obj["r"], SECP256K1_N - 1),
        # EIP-7702 requires low s; a high-s tuple would be invalid on chain.
        s=_signature_scalar(f"{name}.s", obj["s"], SECP256K1_HALF_N),
    )


def _authorization_list(value: object) -> tuple[SignedAuthorization, ...]:
    items = fields.json_list("authorizationList", value)
    if not items:
        raise invalid("authorizationList must not be empty")
    return tuple(
        _signed_authorization(f"authorizationList[{i}]", item) for i, item in enumerate(items)
    )


def _uint64(name: str, value: object) -> int:
    return fields.quantity(name, value, maximum=fields.UINT64_MAX)


def _opt_quantity(tx: Mapping[str, object], name: str) -> int | None:
    return fields.quantity(name, tx[name]) if name in tx else None


def _check_field_set(tx: Mapping[str, object]) -> int:
    """Refuse unknown, type-forbidden and missing fields; return the type."""
    if type(tx) is not dict and not isinstance(tx, Mapping):
        raise invalid("transaction must be an object")
    keys = tx.keys()
    if not keys <= _ALL_FIELDS:  # every non-string key is outside it too
        if not all(isinstance(key, str) for key in keys):
            raise invalid("transaction has a non-string key")
        unknown = sorted(keys - _ALL_FIELDS)
        raise invalid(f"transaction has unknown field(s): {', '.join(unknown)}")
    tx_type = _infer_type(tx)
    if not keys <= _PERMITTED_FIELDS[tx_type]:
        forbidden = sorted(keys - _PERMITTED_FIELDS[tx_type])
        raise invalid(
            f"field(s) not allowed in a type {tx_type} transaction: {', '.join(forbidden)}"
        )
    if _REQUIRED_FIELDS[tx_type] <= keys and ("gas" in keys or "gasLimit" in keys):
        return tx_type
    missing = sorted((_TYPE_FIELDS[tx_type] - {"accessList"}) - keys)
    if "nonce" not in tx:
        missing.append("nonce")
    if "gas" not in tx and "gasLimit" not in tx:
        missing.append("gas")
    if "chainId" not in tx and tx_type != LEGACY:
        missing.append("chainId")
    raise invalid(f"type {tx_type} transaction is missing field(s): {', '.join(missing)}")


def _chain_id(tx: Mapping[str, object], tx_type: int, *, allow_pre_eip155: bool) -> int | None:
    if "chainId" in tx:
        return fields.quantity("chainId", tx["chainId"], minimum=1, maximum=fields.UINT64_MAX)
    if tx_type == LEGACY and not allow_pre_eip155:
        raise EnclaveError(
            ErrorCode.SIGNING_POLICY_VIOLATION,
            "legacy transaction without chainId (pre-EIP-155, replayable on any chain) "
            "is not allowed by the signing policy",
        )
    return None


def parse_transaction(tx: Mapping[str, object], *, allow_pre_eip155: bool = False) -> Transaction:
    """Validate eth_signTransaction fields into a :class:`Transaction`.

    Raises ``invalid_params`` for any malformed, missing, unknown or type-forbidden
    field, and ``signing_policy_violation`` for a legacy transaction without a
    chainId (replayable on every chain) unless ``allow_pre_eip155`` is set.
    """
    tx_type = _check_field_set(tx)
    chain_id = _chain_id(tx, tx_type, allow_pre_eip155=allow_pre_eip155)

    to_value = tx.get("to")
    to = None if to_value is None else fields.address("to", to_value)
    if to is None and tx_type in (BLOB, SET_CODE):
        raise invalid(f"type {tx_type} transaction requires 'to' (no contract creation)")

    data = _aliased(tx, "data", "input", fields.hex_bytes)
    gas = _aliased(tx, "gas", "gasLimit", _uint64)
    sender = None
    if tx.get("from") is not None:
        sender = to_checksum_address(fields.address("from", tx["from"]))

    max_fee = _opt_quantity(tx, "maxFeePerGas")
    priority_fee = _opt_quantity(tx, "maxPriorityFeePerGas")
    if max_fee is not None and priority_fee is not None and priority_fee > max_fee:
        raise invalid("maxPriorityFeePerGas must not exceed maxFeePerGas")

    return Transaction(
        tx_type=tx_type,
        chain_id=chain_id,
        nonce=fields.nonce("nonce", tx["nonce"]),
        to=to,
        value=fields.quantity("value", tx["value"]) if "value" in tx else 0,
        gas=_req(gas),
        data=b"" if data is None else data,
        gas_price=_opt_quantity(tx, "gasPrice"),
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority_fee,
        access_list=_access_list(tx["accessList"]) if "accessList" in tx else (),
        max_fee_per_blob_gas=_opt_quantity(tx, "maxFeePerBlobGas"),
        blob_versioned_hashes=(_blob_hashes(tx["blobVersionedHashes"]) if tx_type == BLOB else ()),
        authorization_list=(
            _authorization_list(tx["authorizationList"]) if tx_type == SET_CODE else ()
        ),
        sender=sender,
    )


def require_sender(tx: Transaction, signer_address: str) -> None:
    """Refuse a transaction whose ``from`` names another account than the signer."""
    if tx.sender is not None and tx.sender.lower() != signer_address.lower():
        raise invalid("from does not match the signing account's address")


def sign_transaction(private_key: bytes | SigningKey, tx: Transaction) -> SignedTransaction:
    """Sign a parsed transaction (give a :class:`SigningKey` to sign many times)."""
    payload = tx.unsigned_payload()
    signature = signing_key(private_key).sign_compact(tx.signing_digest(payload))
    y_parity = signature[64]
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    raw = tx.encode_signed(y_parity, r, s, payload)
    v = tx.legacy_v(y_parity) if tx.tx_type == LEGACY else y_parity
    return SignedTransaction(raw=raw, hash=keccak256(raw), y_parity=y_parity, r=r, s=s, v=v)


def sign_authorization(
    private_key: bytes | SigningKey, authorization: object
) -> SignedAuthorization:
    """Sign an EIP-7702 authorization ``{chainId, address, nonce}``.

    Accepts the JSON object or an already parsed :class:`Authorization`.
    """
    auth = (
        authorization
        if isinstance(authorization, Authorization)
        else parse_authorization("authorization", authorization)
    )
    y_parity, r, s = sign_digest(private_key, auth.digest())
    return SignedAuthorization(authorization=auth, y_parity=y_parity, r=r, s=s)
