"""Keccak, RLP, keys and ECDSA: known vectors plus differential checks."""

from __future__ import annotations

import pytest
import rlp as oracle_rlp
from coincurve import PrivateKey
from eth_account import Account
from eth_keys.datatypes import PrivateKey as OraclePrivateKey
from eth_utils.address import to_checksum_address as oracle_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.signing import (
    generate_private_key,
    is_valid_private_key,
    keccak256,
    private_key_to_address,
    recover_address,
    sign_digest,
    to_checksum_address,
)
from enclave_app.signing import rlp as enclave_rlp
from enclave_app.signing.keys import SECP256K1_HALF_N, SECP256K1_N
from tests import strategies as gen


def test_keccak_vectors() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    assert keccak256(b"abc").hex() == (
        "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    )


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (b"dog", "83646f67"),
        ([b"cat", b"dog"], "c88363617483646f67"),
        (b"", "80"),
        ([], "c0"),
        (b"\x00", "00"),
        (b"\x0f", "0f"),
        (b"\x04\x00", "820400"),
        ([[], [[]], [[], [[]]]], "c7c0c1c0c3c0c1c0"),
        (b"Lorem ipsum dolor sit amet, consectetur adipisicing elit",
         "b8384c6f72656d20697073756d20646f6c6f722073697420616d65742c20636f6e7365637465747572"
         "206164697069736963696e6720656c6974"),
    ],
)  # fmt: skip
def test_rlp_vectors(item: enclave_rlp.RlpItem, expected: str) -> None:
    assert enclave_rlp.encode(item).hex() == expected


def test_rlp_uint_is_minimal() -> None:
    assert enclave_rlp.uint(0) == b""
    assert enclave_rlp.uint(0x7F) == b"\x7f"
    assert enclave_rlp.uint(0x100) == b"\x01\x00"
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="non-negative"):
            enclave_rlp.uint(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        enclave_rlp.encode("dog")


rlp_items = st.recursive(
    st.binary(max_size=80),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None, database=None)
@given(item=rlp_items)
def test_rlp_matches_pyrlp(item: enclave_rlp.RlpItem) -> None:
    assert enclave_rlp.encode(item) == oracle_rlp.encode(item)


@settings(max_examples=300, deadline=None, database=None)
@given(raw=gen.raw_addresses)
def test_checksum_matches_eth_utils(raw: bytes) -> None:
    assert to_checksum_address(raw) == oracle_checksum(raw)


def test_checksum_vector() -> None:
    raw = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    assert to_checksum_address(raw) == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@settings(max_examples=200, deadline=None, database=None)
@given(pk=gen.private_keys, digest=st.binary(min_size=32, max_size=32))
def test_sign_and_recover_match_eth_keys(pk: bytes, digest: bytes) -> None:
    address = private_key_to_address(pk)
    assert address == Account.from_key(pk).address
    parity, r, s = sign_digest(pk, digest)
    assert parity in (0, 1)
    assert 1 <= s <= SECP256K1_HALF_N
    oracle = OraclePrivateKey(pk).sign_msg_hash(digest)
    assert (oracle.v, oracle.r, oracle.s) == (parity, r, s)
    assert recover_address(digest, parity, r, s) == address
    assert recover_address(digest, 27 + parity, r, s) == address
    assert recover_address(digest, 1 - parity, r, s) != address


def test_generated_keys_are_valid_and_distinct() -> None:
    keys = {generate_private_key() for _ in range(64)}
    assert len(keys) == 64
    assert all(is_valid_private_key(k) for k in keys)
    assert all(PrivateKey(k).secret == k for k in keys)


def test_private_key_bounds() -> None:
    assert not is_valid_private_key(b"\x00" * 32)
    assert not is_valid_private_key(SECP256K1_N.to_bytes(32, "big"))
    assert is_valid_private_key((SECP256K1_N - 1).to_bytes(32, "big"))
    assert not is_valid_private_key(b"\x01" * 33)


@pytest.mark.parametrize(
    ("digest", "v", "r", "s"),
    [(b"\x00" * 31, 0, 1, 1), (b"\x00" * 32, 2, 1, 1), (b"\x00" * 32, 0, 0, 1),
     (b"\x00" * 32, 0, 1, SECP256K1_N), (b"\x00" * 32, True, 1, 1)],
)  # fmt: skip
def test_recover_refuses_malformed_signatures(digest: bytes, v: int, r: int, s: int) -> None:
    with pytest.raises(EnclaveError) as info:
        recover_address(digest, v, r, s)
    assert info.value.code == ErrorCode.INVALID_PARAMS
