"""Decode a signed raw transaction into the JSON object geth answers for it.

``eth_signTransaction`` answers ``{"raw": "0x..", "tx": {...}}`` (geth's
``SignTransactionResult``); web3.py and ethers read that shape. The relay builds
``tx`` from the bytes the enclave actually signed, never from the request, so the
object always describes the raw transaction next to it.

The RLP reader is strict (canonical lengths, no trailing bytes, bounded nesting):
the raw transaction comes from the enclave, and a malformed one is a protocol fault.
"""

from __future__ import annotations

from typing import Any, NoReturn

from parent_app.ethaddress import keccak256, to_checksum_address

RlpItem = bytes | list["RlpItem"]

MAX_DEPTH = 8


class RawTransactionError(ValueError):
    """The bytes are not a signed transaction this module understands."""


def _length(data: bytes, start: int, size: int) -> int:
    if start + size > len(data):
        raise RawTransactionError("RLP length runs past the end")
    if size == 0 or data[start] == 0:
        raise RawTransactionError("RLP length has leading zeros")
    value = int.from_bytes(data[start : start + size], "big")
    if value < 56:
        raise RawTransactionError("RLP long form used for a short item")
    return value


def _header(data: bytes, pos: int) -> tuple[bool, int, int]:
    """(is_list, payload start, payload size) of the item at ``pos`` (not a single byte)."""
    prefix = data[pos]
    base, short_max = (0xC0, 0xF7) if prefix >= 0xC0 else (0x80, 0xB7)
    if prefix <= short_max:
        start, size = pos + 1, prefix - base
    else:
        width = prefix - short_max
        start, size = pos + 1 + width, _length(data, pos + 1, width)
    if start + size > len(data):
        raise RawTransactionError("RLP item runs past the end")
    return prefix >= 0xC0, start, size


def _item(data: bytes, pos: int, depth: int) -> tuple[RlpItem, int]:
    """The item starting at ``pos`` and the position after it."""
    if depth > MAX_DEPTH:
        raise RawTransactionError("RLP nested too deeply")
    if pos >= len(data):
        raise RawTransactionError("RLP item runs past the end")
    if data[pos] < 0x80:
        return data[pos : pos + 1], pos + 1
    is_list, start, size = _header(data, pos)
    end = start + size
    if not is_list:
        value = data[start:end]
        if size == 1 and value[0] < 0x80:
            raise RawTransactionError("RLP single byte not encoded as itself")
        return value, end
    items: list[RlpItem] = []
    cursor = start
    while cursor < end:
        item, cursor = _item(data, cursor, depth + 1)
        items.append(item)
    if cursor != end:
        raise RawTransactionError("RLP list length does not match its items")
    return items, end


def decode_rlp(data: bytes) -> RlpItem:
    item, end = _item(data, 0, 0)
    if end != len(data):
        raise RawTransactionError("trailing bytes after the RLP item")
    return item


def _bytes(item: RlpItem) -> bytes:
    if not isinstance(item, bytes):
        raise RawTransactionError("expected an RLP string, found a list")
    return item


def _list(item: RlpItem) -> list[RlpItem]:
    if not isinstance(item, list):
        raise RawTransactionError("expected an RLP list, found a string")
    return item


def _uint(item: RlpItem) -> int:
    raw = _bytes(item)
    if raw[:1] == b"\x00":
        raise RawTransactionError("integer with leading zeros")
    if len(raw) > 32:
        raise RawTransactionError("integer wider than 256 bits")
    return int.from_bytes(raw, "big")


def _quantity(item: RlpItem) -> str:
    return hex(_uint(item))


def _data(item: RlpItem) -> str:
    return "0x" + _bytes(item).hex()


def _to(item: RlpItem) -> str | None:
    raw = _bytes(item)
    if not raw:
        return None
    if len(raw) != 20:
        raise RawTransactionError("to is not 20 bytes")
    return to_checksum_address(raw)


def _address(item: RlpItem) -> str:
    address = _to(item)
    if address is None:
        raise RawTransactionError("address is empty")
    return address


def _word(item: RlpItem) -> str:
    raw = _bytes(item)
    if len(raw) != 32:
        raise RawTransactionError("expected a 32-byte value")
    return "0x" + raw.hex()


def _access_list(item: RlpItem) -> list[dict[str, Any]]:
    entries = []
    for entry in _list(item):
        pair = _list(entry)
        if len(pair) != 2:
            _bad("access list entry")
        address, keys = pair
        entries.append(
            {"address": _address(address), "storageKeys": [_word(k) for k in _list(keys)]}
        )
    return entries


def _authorizations(item: RlpItem) -> list[dict[str, Any]]:
    result = []
    for entry in _list(item):
        fields = _list(entry)
        if len(fields) != 6:
            _bad("authorization tuple")
        chain_id, address, nonce, y_parity, r, s = fields
        result.append(
            {
                "chainId": _quantity(chain_id),
                "address": _address(address),
                "nonce": _quantity(nonce),
                "yParity": _quantity(y_parity),
                "r": _quantity(r),
                "s": _quantity(s),
            }
        )
    return result


def _bad(what: str) -> NoReturn:
    raise RawTransactionError(f"malformed {what}")


# Field layouts before the signature, per transaction type (EIP-2718 envelopes).
_TYPED_LAYOUTS: dict[int, tuple[str, ...]] = {
    1: ("chainId", "nonce", "gasPrice", "gas", "to", "value", "input", "accessList"),
    2: (
        "chainId",
        "nonce",
        "maxPriorityFeePerGas",
        "maxFeePerGas",
        "gas",
        "to",
        "value",
        "input",
        "accessList",
    ),
    3: (
        "chainId",
        "nonce",
        "maxPriorityFeePerGas",
        "maxFeePerGas",
        "gas",
        "to",
        "value",
        "input",
        "accessList",
        "maxFeePerBlobGas",
        "blobVersionedHashes",
    ),
    4: (
        "chainId",
        "nonce",
        "maxPriorityFeePerGas",
        "maxFeePerGas",
        "gas",
        "to",
        "value",
        "input",
        "accessList",
        "authorizationList",
    ),
}
_LEGACY_LAYOUT = ("nonce", "gasPrice", "gas", "to", "value", "input")


def _field(name: str, item: RlpItem) -> Any:
    if name == "to":
        return _to(item)
    if name == "input":
        return _data(item)
    if name == "accessList":
        return _access_list(item)
    if name == "blobVersionedHashes":
        return [_word(h) for h in _list(item)]
    if name == "authorizationList":
        return _authorizations(item)
    return _quantity(item)


def transaction_json(raw: bytes) -> dict[str, Any]:
    """geth's JSON for a signed transaction: fields, v/r/s (+ yParity) and hash."""
    if not raw:
        raise RawTransactionError("empty transaction")
    if raw[0] >= 0xC0:  # legacy: an RLP list
        fields = _list(decode_rlp(raw))
        if len(fields) != len(_LEGACY_LAYOUT) + 3:
            _bad("legacy transaction")
        tx: dict[str, Any] = {"type": "0x0"}
        tx.update(
            {name: _field(name, item) for name, item in zip(_LEGACY_LAYOUT, fields, strict=False)}
        )
        v = _uint(fields[6])
        if v >= 35:
            tx["chainId"] = hex((v - 35) // 2)
        tx.update({"v": hex(v), "r": _quantity(fields[7]), "s": _quantity(fields[8])})
    else:
        layout = _TYPED_LAYOUTS.get(raw[0])
        if layout is None:
            raise RawTransactionError(f"unsupported transaction type {raw[0]}")
        fields = _list(decode_rlp(raw[1:]))
        if len(fields) != len(layout) + 3:
            _bad(f"type {raw[0]} transaction")
        tx = {"type": hex(raw[0])}
        tx.update({name: _field(name, item) for name, item in zip(layout, fields, strict=False)})
        y_parity = _uint(fields[-3])
        if y_parity > 1:
            _bad("y parity")
        tx.update(
            {
                "v": hex(y_parity),
                "yParity": hex(y_parity),
                "r": _quantity(fields[-2]),
                "s": _quantity(fields[-1]),
            }
        )
    tx["hash"] = "0x" + keccak256(raw).hex()
    return tx
