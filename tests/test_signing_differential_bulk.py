"""10,000 random transactions per type, signed by the enclave's fast path and by
eth-account: raw bytes and hashes must be identical.

Hypothesis (tests/test_signing_differential.py) shrinks failures but is too slow for
this volume, so these cases come from ``random.Random(seed)``. The seed is printed;
rerun one with ``SIGNING_BULK_SEED=<seed>``. ``SIGNING_BULK_CASES`` sets the count
per type (default 10,000). Values lean on RLP length boundaries, every JSON spelling
the enclave accepts (int, lower/upper hex; lower, upper and EIP-55 addresses; field
aliases; inferred types) and key objects that sign many times, as the key cache
holds them.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from enclave_app.signing import SigningKey, keccak256, parse_transaction, sign_transaction

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1
MAX_NONCE = 2**64 - 2  # EIP-2681
CASES = int(os.environ.get("SIGNING_BULK_CASES", "10000"))
SEED = int(os.environ.get("SIGNING_BULK_SEED", "20261130"))
_EDGES = (
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFFF,
    2**55,
    2**56,
    2**63,
    MAX_NONCE,
    UINT64_MAX,
    UINT256_MAX,
)


class Generator:
    """Random transactions of one type, in the enclave's JSON form and eth-account's."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, maximum: int) -> int:
        roll = self.rng.random()
        if roll < 0.25:
            return self.rng.choice([v for v in _EDGES if v <= maximum])
        if roll < 0.6:
            return self.rng.randint(0, min(maximum, 2**32))
        return self.rng.randint(0, maximum) >> self.rng.randint(0, maximum.bit_length())

    def quantity(self, value: int) -> object:
        digits = f"{value:x}"
        return self.rng.choice([value, "0x" + digits, "0x" + digits.upper()])

    def address(self) -> tuple[str, str]:
        raw = self.rng.randbytes(20)
        spelled = self.rng.choice(
            ["0x" + raw.hex(), "0x" + raw.hex().upper(), to_checksum_address(raw)]
        )
        return spelled, to_checksum_address(raw)

    def hex_bytes(self, raw: bytes) -> str:
        return self.rng.choice(["0x" + raw.hex(), "0x" + raw.hex().upper()])

    def transaction(self, tx_type: int) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """(json, oracle, pre_eip155)."""
        rng = self.rng
        tx: dict[str, Any] = {}
        oracle: dict[str, Any] = {"type": tx_type}
        if rng.random() < 0.5:  # else inferred from the fee/blob/authorization fields
            tx["type"] = self.quantity(tx_type)
        pre_eip155 = tx_type == 0 and rng.random() < 0.1
        if not pre_eip155:
            chain_id = max(1, self.integer(UINT64_MAX))
            tx["chainId"], oracle["chainId"] = self.quantity(chain_id), chain_id
        nonce = self.integer(MAX_NONCE)
        tx["nonce"], oracle["nonce"] = self.quantity(nonce), nonce
        gas = self.integer(UINT64_MAX)
        tx[rng.choice(["gas", "gasLimit"])], oracle["gas"] = self.quantity(gas), gas
        value = self.integer(UINT256_MAX)
        if value or rng.random() < 0.5:
            tx["value"] = self.quantity(value)
        oracle["value"] = value
        data = rng.randbytes(rng.choice([0, 1, 2, 55, 56, rng.randint(0, 600)]))
        tx[rng.choice(["data", "input"])] = self.hex_bytes(data)
        oracle["data"] = "0x" + data.hex()
        if tx_type >= 3 or rng.random() < 0.85:  # else contract creation
            tx["to"], oracle["to"] = self.address()
        self.fees(tx, oracle, tx_type)
        if tx_type != 0:
            self.access_list(tx, oracle, tx_type)
        if tx_type == 3:
            blob_fee = self.integer(UINT256_MAX)
            tx["maxFeePerBlobGas"], oracle["maxFeePerBlobGas"] = self.quantity(blob_fee), blob_fee
            hashes = [b"\x01" + rng.randbytes(31) for _ in range(rng.randint(1, 6))]
            tx["blobVersionedHashes"] = [self.hex_bytes(h) for h in hashes]
            oracle["blobVersionedHashes"] = ["0x" + h.hex() for h in hashes]
        if tx_type == 4:
            pairs = [self.authorization() for _ in range(rng.randint(1, 3))]
            tx["authorizationList"] = [json_auth for json_auth, _ in pairs]
            oracle["authorizationList"] = [oracle_auth for _, oracle_auth in pairs]
        if tx_type == 0:
            del oracle["type"]
        return tx, oracle, pre_eip155

    def fees(self, tx: dict[str, Any], oracle: dict[str, Any], tx_type: int) -> None:
        if tx_type in (0, 1):
            price = self.integer(UINT256_MAX)
            tx["gasPrice"], oracle["gasPrice"] = self.quantity(price), price
            return
        max_fee = self.integer(UINT256_MAX)
        priority = self.rng.randint(0, max_fee) if self.rng.random() < 0.7 else max_fee
        tx["maxFeePerGas"], oracle["maxFeePerGas"] = self.quantity(max_fee), max_fee
        tx["maxPriorityFeePerGas"] = self.quantity(priority)
        oracle["maxPriorityFeePerGas"] = priority

    def access_list(self, tx: dict[str, Any], oracle: dict[str, Any], tx_type: int) -> None:
        rng = self.rng
        if tx_type != 1 and rng.random() < 0.4:
            oracle["accessList"] = []
            return
        json_list, oracle_list = [], []
        for _ in range(rng.randint(0, 3)):
            spelled, checksummed = self.address()
            keys = [rng.randbytes(32) for _ in range(rng.randint(0, 3))]
            json_list.append({"address": spelled, "storageKeys": [self.hex_bytes(k) for k in keys]})
            oracle_list.append(
                {"address": checksummed, "storageKeys": ["0x" + k.hex() for k in keys]}
            )
        tx["accessList"], oracle["accessList"] = json_list, oracle_list

    def authorization(self) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = self.rng
        values = {
            "chainId": self.integer(UINT256_MAX),
            "nonce": self.integer(MAX_NONCE),
            "yParity": rng.randint(0, 1),
            "r": rng.randint(1, SECP256K1_N - 1),
            "s": rng.randint(1, SECP256K1_N // 2),
        }
        spelled, checksummed = self.address()
        json_auth: dict[str, Any] = {name: self.quantity(v) for name, v in values.items()}
        for name in ("r", "s"):  # viem's form: zero-padded 32-byte words
            if rng.random() < 0.3:
                json_auth[name] = "0x" + values[name].to_bytes(32, "big").hex()
        json_auth["address"] = spelled
        return json_auth, {**values, "address": checksummed}


@pytest.mark.slow
@pytest.mark.parametrize("tx_type", [0, 1, 2, 3, 4])
def test_random_transactions_are_byte_identical_to_eth_account(tx_type: int) -> None:
    seed = SEED + tx_type
    print(f"type {tx_type}: {CASES} cases, seed {seed} (SIGNING_BULK_SEED={SEED})")
    rng = random.Random(seed)
    generator = Generator(rng)
    secrets = [rng.randint(1, SECP256K1_N - 1).to_bytes(32, "big") for _ in range(64)]
    keys = [SigningKey(secret) for secret in secrets]  # reused, as the key cache does
    started = time.monotonic()
    for case in range(CASES):
        tx, oracle, pre_eip155 = generator.transaction(tx_type)
        which = rng.randrange(len(keys))
        ours = sign_transaction(keys[which], parse_transaction(tx, allow_pre_eip155=pre_eip155))
        theirs = Account.sign_transaction(oracle, secrets[which])
        assert ours.raw == bytes(theirs.raw_transaction), (seed, case, tx)
        assert ours.hash == bytes(theirs.hash) == keccak256(ours.raw), (seed, case, tx)
        assert (ours.v, ours.r, ours.s) == (theirs.v, theirs.r, theirs.s), (seed, case, tx)
    print(f"type {tx_type}: {CASES} identical in {time.monotonic() - started:.1f} s")
