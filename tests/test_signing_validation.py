"""Bad input to the signing library: every case is refused with a typed error."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from eth_account import Account

from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.signing import (
    parse_transaction,
    private_key_to_address,
    require_sender,
    sign_authorization,
    sign_transaction,
)
from enclave_app.signing.messages import sign_message
from enclave_app.signing.typed_data import MAX_DEPTH, sign_typed_data

PK = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ADDR = "0x" + "11" * 20
CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55 test vector
BLOB_HASH = "0x01" + "ab" * 31

BASE: dict[int, dict[str, Any]] = {
    0: {"chainId": 1, "nonce": 0, "to": ADDR, "value": 1, "gas": 21000, "gasPrice": 1},
    1: {"type": 1, "chainId": 1, "nonce": 0, "to": ADDR, "gas": 21000, "gasPrice": 1,
        "accessList": []},
    2: {"type": "0x2", "chainId": 1, "nonce": 0, "to": ADDR, "gas": 21000,
        "maxFeePerGas": 2, "maxPriorityFeePerGas": 1},
    3: {"type": 3, "chainId": 1, "nonce": 0, "to": ADDR, "gas": 21000, "maxFeePerGas": 2,
        "maxPriorityFeePerGas": 1, "maxFeePerBlobGas": 1, "blobVersionedHashes": [BLOB_HASH]},
    4: {"type": 4, "chainId": 1, "nonce": 0, "to": ADDR, "gas": 21000, "maxFeePerGas": 2,
        "maxPriorityFeePerGas": 1,
        "authorizationList": [{"chainId": 1, "address": ADDR, "nonce": 0, "yParity": 0,
                               "r": 1, "s": 1}]},
}  # fmt: skip


def _refused(tx: Any, code: ErrorCode = ErrorCode.INVALID_PARAMS, **kwargs: Any) -> str:
    with pytest.raises(EnclaveError) as info:
        sign_transaction(PK, parse_transaction(tx, **kwargs))
    assert info.value.code == code
    return info.value.message


def _with(tx_type: int, **changes: Any) -> dict[str, Any]:
    tx = copy.deepcopy(BASE[tx_type])
    for key, value in changes.items():
        if value is _DROP:
            tx.pop(key, None)
        else:
            tx[key] = value
    return tx


_DROP = object()


@pytest.mark.parametrize("tx_type", sorted(BASE))
def test_base_transactions_are_valid(tx_type: int) -> None:
    signed = sign_transaction(PK, parse_transaction(BASE[tx_type]))
    assert signed.raw[0] == tx_type if tx_type else signed.raw[0] >= 0xC0


BAD_FIELDS = [
    # (tx_type, field, value, words expected in the message)
    (2, "chainId", "1", "decimal strings"),
    (2, "chainId", 1.0, "floats"),
    (2, "chainId", True, "boolean"),
    (2, "chainId", None, "integer or 0x-hex"),
    (2, "chainId", [1], "integer or 0x-hex"),
    (2, "chainId", 0, "chainId must be at least 1"),
    (2, "chainId", 2**64, "chainId must be at most"),
    (0, "value", -1, "value must not be negative"),
    (0, "value", 2**256, "value must be at most"),
    (0, "value", "0x1" + "0" * 64, "value is too large"),
    (0, "value", 1.5, "floats"),
    (0, "value", "1000000000000000000", "amounts are wei"),
    (0, "value", "0x01", "leading zeros"),
    (0, "value", "0x", "0x-hex quantity"),
    (0, "value", "0X1", "0x-hex quantity"),
    (0, "value", "-0x1", "0x-hex quantity"),
    (0, "gas", 2**64, "gas must be at most"),
    (0, "gas", "0x10000000000000000", "gas must be at most"),
    (0, "nonce", 2**64, "nonce must be at most"),
    (0, "nonce", 2**64 - 1, "EIP-2681"),
    (2, "nonce", "0xffffffffffffffff", "EIP-2681"),
    (0, "gasPrice", -5, "gasPrice must not be negative"),
    (2, "maxFeePerGas", 2**256, "maxFeePerGas must be at most"),
    (0, "to", "0x" + "11" * 19, "to must be a 0x-prefixed 20-byte"),
    (0, "to", "11" * 20, "to must be a 0x-prefixed 20-byte"),
    (0, "to", CHECKSUMMED[:-1] + "e", "EIP-55 checksum"),
    (0, "to", CHECKSUMMED.replace("E", "e", 1), "EIP-55 checksum"),
    (0, "data", "0x123", "even number"),
    (0, "data", "0xzz", "even number"),
    (0, "data", "1234", "0x-prefixed"),
    (0, "data", b"\x01", "0x-prefixed"),
    (1, "accessList", {"address": ADDR}, "accessList must be a list"),
    (1, "accessList", [{"address": ADDR}], "missing field(s): storageKeys"),
    (1, "accessList", [{"address": ADDR, "storageKeys": [], "x": 1}], "unknown field(s): x"),
    (1, "accessList", [{"address": ADDR, "storageKeys": ["0x01"]}], "storageKeys[0]"),
    (1, "accessList", [{"address": ADDR, "storageKeys": "0x" + "00" * 32}], "must be a list"),
    (1, "accessList", [{"address": "0x12", "storageKeys": []}], "accessList[0].address"),
    (1, "accessList", ["x"], "accessList[0] must be an object"),
    (3, "blobVersionedHashes", [], "must not be empty"),
    (3, "blobVersionedHashes", [BLOB_HASH] * 7, "more than 6"),
    (3, "blobVersionedHashes", ["0x02" + "ab" * 31], "version byte 0x01"),
    (3, "blobVersionedHashes", [BLOB_HASH[:-2]], "32-byte"),
    (3, "blobVersionedHashes", BLOB_HASH, "must be a list"),
    (4, "authorizationList", [], "must not be empty"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 0}], "missing field"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 0, "yParity": 2,
                               "r": 1, "s": 1}], "yParity must be at most 0x1"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 0, "yParity": 0,
                               "r": 1, "s": 2**255}], "s must be at most"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 2**64, "yParity": 0,
                               "r": 1, "s": 1}], "nonce must be at most"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 2**64 - 1, "yParity": 0,
                               "r": 1, "s": 1}], "EIP-2681"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 0, "yParity": 0,
                               "r": "0x" + "00" * 32, "s": 1}], "r must be at least 1"),
    (4, "authorizationList", [{"chainId": 1, "address": ADDR, "nonce": 0, "yParity": 0,
                               "r": 1, "s": "0x" + "ff" * 32}], "s must be at most"),
    (0, "to", "", "to must be a 0x-prefixed 20-byte"),
    (0, "to", "0x", "to must be a 0x-prefixed 20-byte"),
    (2, "type", 5, "type must be at most 0x4"),
    (2, "type", "0x02", "leading zeros"),
]  # fmt: skip


@pytest.mark.parametrize(("tx_type", "field", "value", "expected"), BAD_FIELDS)
def test_bad_field_is_invalid_params(tx_type: int, field: str, value: Any, expected: str) -> None:
    message = _refused(_with(tx_type, **{field: value}))
    assert expected in message
    assert field in message or field == "type"


STRUCTURE_CASES = [
    (_with(0, foo=1), "unknown field(s): foo"),
    (_with(0, v=27), "unknown field(s): v"),
    (_with(2, gasPrice=1), "not allowed in a type 2 transaction: gasPrice"),
    (_with(0, type=0, maxFeePerGas=1), "not allowed in a type 0"),
    (_with(0, type=0, accessList=[]), "not allowed in a type 0 transaction: accessList"),
    (_with(1, maxFeePerBlobGas=1), "not allowed in a type 1"),
    (_with(2, authorizationList=[]), "not allowed in a type 2"),
    (_with(3, blobVersionedHashes=_DROP), "missing field(s): blobVersionedHashes"),
    (_with(3, maxFeePerBlobGas=_DROP), "missing field(s): maxFeePerBlobGas"),
    (_with(3, to=_DROP), "requires 'to'"),
    (_with(3, to=None), "requires 'to'"),
    (_with(4, to=None), "requires 'to'"),
    (_with(4, authorizationList=_DROP), "missing field(s): authorizationList"),
    (_with(2, chainId=_DROP), "missing field(s): chainId"),
    (_with(2, nonce=_DROP), "missing field(s): nonce"),
    (_with(2, gas=_DROP), "missing field(s): gas"),
    (_with(2, maxPriorityFeePerGas=_DROP), "missing field(s): maxPriorityFeePerGas"),
    (_with(2, maxPriorityFeePerGas=3), "must not exceed maxFeePerGas"),
    (_with(0, gasPrice=_DROP), "no type and no fee fields"),
    (_with(0, data="0x00", input="0x01"), "data and input are both given and differ"),
    (_with(0, gas=1, gasLimit=2), "gas and gasLimit are both given and differ"),
    (_with(0, **{"from": "0xabc"}), "from must be"),
    ([("nonce", 1)], "transaction must be an object"),
    ("0x1234", "transaction must be an object"),
    ({1: 2}, "non-string key"),
]


@pytest.mark.parametrize(("tx", "expected"), STRUCTURE_CASES)
def test_structure_errors(tx: Any, expected: str) -> None:
    assert expected in _refused(tx)


def test_pre_eip155_is_a_policy_violation_unless_allowed() -> None:
    tx = _with(0, chainId=_DROP)
    message = _refused(tx, ErrorCode.SIGNING_POLICY_VIOLATION)
    assert "EIP-155" in message
    signed = sign_transaction(PK, parse_transaction(tx, allow_pre_eip155=True))
    assert signed.v in (27, 28)


def test_aliases_that_agree_are_accepted() -> None:
    tx = parse_transaction(_with(0, gasLimit=21000, data="0xAB", input="0xab"))
    assert tx.gas == 21000
    assert tx.data == b"\xab"


def test_from_must_match_signer() -> None:
    me = private_key_to_address(PK)
    require_sender(parse_transaction(_with(2, **{"from": me.lower()})), me)
    require_sender(parse_transaction(BASE[2]), me)  # absent: nothing to check
    other = parse_transaction(_with(2, **{"from": ADDR}))
    with pytest.raises(EnclaveError) as info:
        require_sender(other, me)
    assert info.value.code == ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize(
    "bad_key", [b"", b"\x00" * 32, b"\xff" * 32, b"\x01" * 31, "0x" + "01" * 32]
)
def test_bad_private_key_refused_without_echo(bad_key: Any) -> None:
    with pytest.raises(EnclaveError) as info:
        sign_transaction(bad_key, parse_transaction(BASE[2]))
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert "01" * 8 not in info.value.message


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"chainId": 1, "address": ADDR}, "missing field(s): nonce"),
        ({"chainId": -1, "address": ADDR, "nonce": 0}, "chainId must not be negative"),
        ({"chainId": 1, "address": ADDR, "nonce": 0, "r": 1}, "unknown field(s): r"),
        ({"chainId": 1, "address": "0x00", "nonce": 0}, "address"),
        ({"chainId": "1", "address": ADDR, "nonce": 0}, "decimal strings"),
    ],
)
def test_bad_authorization(auth: Any, expected: str) -> None:
    with pytest.raises(EnclaveError) as info:
        sign_authorization(PK, auth)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert expected in info.value.message


@pytest.mark.parametrize(
    ("message", "expected"),
    [("0x123", "even number"), ("0xZZ", "even number"), (123, "must be a string"),
     (None, "must be a string"), ("\ud800", "not valid Unicode")],
)  # fmt: skip
def test_bad_messages(message: Any, expected: str) -> None:
    with pytest.raises(EnclaveError) as info:
        sign_message(PK, message)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert expected in info.value.message


def test_message_hex_and_text_rule() -> None:
    assert sign_message(PK, "0x6869").signature == sign_message(PK, "hi").signature
    assert sign_message(PK, "0x").signature == sign_message(PK, "").signature
    assert sign_message(PK, b"hi").signature == sign_message(PK, "hi").signature


# ------------------------------------------------------------------ EIP-712

MAIL: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "chainId", "type": "uint256"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person[]"},
            {"name": "amount", "type": "uint8"},
            {"name": "delta", "type": "int16"},
            {"name": "tag", "type": "bytes4"},
            {"name": "ok", "type": "bool"},
            {"name": "pair", "type": "uint256[2]"},
        ],
    },
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail", "chainId": 1},
    "message": {
        "from": {"name": "Cow", "wallet": CHECKSUMMED},
        "to": [{"name": "Bob", "wallet": ADDR}],
        "amount": 255,
        "delta": -32768,
        "tag": "0x01020304",
        "ok": True,
        "pair": [1, "2"],
    },
}


def _mail(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(MAIL)
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is _DROP:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


def test_mail_is_valid() -> None:
    assert len(sign_typed_data(PK, MAIL).signature) == 65


TYPED_CASES = [
    (_mail("message.amount", 256), "out of range for uint8"),
    (_mail("message.amount", -1), "out of range for uint8"),
    (_mail("message.amount", 1.0), "must be an integer"),
    (_mail("message.amount", True), "must be an integer"),
    (_mail("message.amount", "1e3"), "must be an integer"),
    (_mail("message.delta", 32768), "out of range for int16"),
    (_mail("message.delta", "-32769"), "out of range for int16"),
    (_mail("message.tag", "0x010203"), "exactly 4 bytes"),
    (_mail("message.tag", "0x0102030405"), "exactly 4 bytes"),
    (_mail("message.ok", "true"), "true or false"),
    (_mail("message.ok", 1), "true or false"),
    (_mail("message.pair", [1]), "exactly 2 elements"),
    (_mail("message.to", {"name": "Bob", "wallet": ADDR}), "must be a list"),
    (_mail("message.from.wallet", CHECKSUMMED.lower()[:-1] + "E"), "EIP-55"),
    (_mail("message.from.name", 5), "must be a string"),
    (_mail("message.amount", _DROP), "missing field(s): amount"),
    (_mail("message.extra", 1), "unknown field(s): extra"),
    (_mail("message.from.extra", 1), "message.from has unknown field(s): extra"),
    (_mail("primaryType", "Nope"), "primaryType"),
    (_mail("primaryType", "EIP712Domain"), "primaryType"),
    (_mail("domain.salt", "0x" + "00" * 32), "EIP712Domain must list exactly"),
    (_mail("domain.foo", "x"), "domain has unknown field(s): foo"),
    (_mail("types.Mail.2.type", "uint"), "undefined type 'uint'"),
    (_mail("types.Mail.2.type", "uint7"), "undefined type 'uint7'"),
    (_mail("types.Mail.2.type", "Animal"), "undefined type 'Animal'"),
    (_mail("types.Mail.2.type", "uint8[0]"), "not a valid EIP-712 type"),
    (_mail("types.Mail.2.type", "uint8 x"), "not a valid EIP-712 type"),
    (_mail("types.Mail.2.name", "from"), "duplicates field"),
    (_mail("types.Mail.2.name", "a,b"), "must be an identifier"),
    (_mail("types.uint256", []), "shadows an atomic type"),
    (_mail("types.EIP712Domain", [{"name": "chainId", "type": "uint256"},
                                  {"name": "name", "type": "string"}]), "EIP712Domain"),
    (_mail("types.EIP712Domain", [{"name": "name", "type": "string"},
                                  {"name": "chainId", "type": "uint64"}]), "EIP712Domain"),
    (_mail("types.Person", "x"), "must be a list"),
    (_mail("extra", 1), "typed data has unknown field(s): extra"),
    (_mail("message", _DROP), "missing field(s): message"),
    ("not an object", "typed data must be an object"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), TYPED_CASES)
def test_typed_data_mismatch_is_invalid_params(data: Any, expected: str) -> None:
    with pytest.raises(EnclaveError) as info:
        sign_typed_data(PK, data)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert expected in info.value.message


def test_typed_data_recursion_is_bounded() -> None:
    node: dict[str, Any] = {"v": 1, "kids": []}
    for _ in range(MAX_DEPTH):
        node = {"v": 1, "kids": [node]}
    data = {
        "types": {"Node": [{"name": "v", "type": "uint8"}, {"name": "kids", "type": "Node[]"}]},
        "primaryType": "Node",
        "domain": {},
        "message": node,
    }
    with pytest.raises(EnclaveError) as info:
        sign_typed_data(PK, data)
    assert "nesting deeper" in info.value.message
    data["message"] = {"v": 1, "kids": [{"v": 2, "kids": []}]}
    assert len(sign_typed_data(PK, data).signature) == 65


@pytest.mark.parametrize("tx_type", [0, 2])
def test_highest_valid_nonce_is_two_to_the_64_minus_2(tx_type: int) -> None:
    signed = sign_transaction(PK, parse_transaction(_with(tx_type, nonce=2**64 - 2)))
    assert Account.recover_transaction(signed.raw) == Account.from_key(PK).address
