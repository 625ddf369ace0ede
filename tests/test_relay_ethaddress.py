"""parent_app.ethaddress (the relay's own Keccak and EIP-55) agrees with eth-utils and
with the enclave's signing helpers, byte for byte."""

from __future__ import annotations

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from enclave_app.signing import keccak as enclave_keccak
from enclave_app.signing import keys as enclave_keys
from parent_app import ethaddress


@given(st.binary(max_size=300))
def test_keccak_matches_eth_utils(data: bytes) -> None:
    assert ethaddress.keccak256(data) == keccak(data) == enclave_keccak.keccak256(data)


@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_matches_eth_utils_and_the_enclave(raw: bytes) -> None:
    expected = to_checksum_address(raw)
    assert ethaddress.to_checksum_address(raw) == expected
    assert enclave_keys.to_checksum_address(raw) == expected


@pytest.mark.parametrize("bad", [b"", b"\x00" * 19, b"\x00" * 21, "00" * 20])
def test_checksum_address_refuses_anything_but_20_bytes(bad: object) -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        ethaddress.to_checksum_address(bad)  # type: ignore[arg-type]
