"""Signed transactions executed by a local EVM (py-evm through eth-tester).

The enclave library signs; py-evm decodes, verifies the signature, and executes.
Each test checks the state change: balances for transfers, code and storage for a
contract deployment and call, delegated code for EIP-7702, blob gas for EIP-4844.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import eth_tester
import pytest

from enclave_app.signing import (
    generate_private_key,
    keccak256,
    parse_transaction,
    private_key_to_address,
    rlp,
    sign_authorization,
    sign_transaction,
)

# Runtime: sstore(0, calldataload(0)); stop  ->  PUSH1 0 CALLDATALOAD PUSH1 0 SSTORE STOP
RUNTIME = bytes.fromhex("60003560005500")
# Init: codecopy(0, 12, len(runtime)); return(0, len(runtime)); runtime follows (offset 12).
INIT = bytes.fromhex(f"60{len(RUNTIME):02x}600c60003960{len(RUNTIME):02x}6000f3") + RUNTIME
FUNDING = 10**21


class Chain:
    def __init__(self) -> None:
        self.backend = eth_tester.PyEVMBackend()
        self.tester = eth_tester.EthereumTester(self.backend)
        self.chain_id: int = self.backend.chain.chain_id
        self._faucet = self.tester.get_accounts()[0]

    def funded_key(self) -> tuple[bytes, str]:
        pk = generate_private_key()
        address = private_key_to_address(pk)
        self.tester.send_transaction(
            {"from": self._faucet, "to": address, "value": FUNDING, "gas": 21000}
        )
        return pk, address

    def balance(self, address: str) -> int:
        return int(self.tester.get_balance(address))

    def nonce(self, address: str) -> int:
        return int(self.tester.get_nonce(address))

    def storage(self, address: str, slot: int) -> int:
        return int(self.tester.get_storage_at(address, hex(slot)), 16)

    def base_fee(self) -> int:
        return int(self.tester.get_block_by_number("latest")["base_fee_per_gas"])

    def send(self, pk: bytes, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign with the enclave library, submit raw, return the (mined) receipt."""
        signed = sign_transaction(pk, parse_transaction(fields))
        tx_hash = self.tester.send_raw_transaction("0x" + signed.raw.hex())
        assert tx_hash == "0x" + signed.hash.hex()
        receipt: dict[str, Any] = self.tester.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        tx = self.tester.get_transaction_by_hash(tx_hash)
        assert tx["from"].lower() == private_key_to_address(pk).lower()
        return receipt


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


def _fees(chain: Chain, tx_type: int) -> dict[str, int]:
    fee = chain.base_fee() * 2 + 1
    if tx_type in (0, 1):
        return {"gasPrice": fee}
    return {"maxFeePerGas": fee, "maxPriorityFeePerGas": 1}


@pytest.mark.parametrize("tx_type", [0, 1, 2])
def test_value_transfer_changes_both_balances(chain: Chain, tx_type: int) -> None:
    pk, sender = chain.funded_key()
    recipient = private_key_to_address(generate_private_key())
    fields: dict[str, Any] = {
        "type": tx_type,
        "chainId": chain.chain_id,
        "nonce": hex(chain.nonce(sender)),
        "to": recipient,
        "value": "0xde0b6b3a7640000",  # 1 ether
        "gas": 30000 if tx_type == 1 else 21000,
        **_fees(chain, tx_type),
    }
    if tx_type == 1:
        fields["accessList"] = [{"address": recipient, "storageKeys": ["0x" + "00" * 32]}]
    before = chain.balance(sender)
    receipt = chain.send(pk, fields)
    assert chain.balance(recipient) == 10**18
    cost = receipt["gas_used"] * receipt["effective_gas_price"]
    assert chain.balance(sender) == before - 10**18 - cost
    assert chain.nonce(sender) == int(fields["nonce"], 16) + 1


def _deploy(chain: Chain, pk: bytes, sender: str, tx_type: int) -> str:
    receipt = chain.send(
        pk,
        {
            "type": tx_type,
            "chainId": chain.chain_id,
            "nonce": chain.nonce(sender),
            "gas": 200000,
            "data": "0x" + INIT.hex(),
            **_fees(chain, tx_type),
        },
    )
    contract = receipt["contract_address"]
    nonce = chain.nonce(sender) - 1
    expected = keccak256(rlp.encode([bytes.fromhex(sender[2:]), rlp.uint(nonce)]))[12:]
    assert contract.lower() == "0x" + expected.hex()
    assert chain.tester.get_code(contract) == "0x" + RUNTIME.hex()
    return str(contract)


@pytest.mark.parametrize("tx_type", [0, 1, 2])
def test_deploy_then_call_changes_storage(chain: Chain, tx_type: int) -> None:
    pk, sender = chain.funded_key()
    contract = _deploy(chain, pk, sender, tx_type)
    assert chain.storage(contract, 0) == 0
    word = "0x" + (0xC0FFEE).to_bytes(32, "big").hex()
    chain.send(
        pk,
        {
            "type": tx_type,
            "chainId": chain.chain_id,
            "nonce": chain.nonce(sender),
            "to": contract,
            "gas": 100000,
            "data": word,
            **_fees(chain, tx_type),
        },
    )
    assert chain.storage(contract, 0) == 0xC0FFEE


def test_blob_transaction_is_executed(chain: Chain) -> None:
    pk, sender = chain.funded_key()
    recipient = private_key_to_address(generate_private_key())
    hashes = ["0x01" + bytes([i]).hex() * 31 for i in range(1, 4)]
    before = chain.balance(sender)
    receipt = chain.send(
        pk,
        {
            "type": 3,
            "chainId": chain.chain_id,
            "nonce": chain.nonce(sender),
            "to": recipient,
            "value": 12345,
            "gas": 21000,
            "maxFeePerBlobGas": 1000,
            "blobVersionedHashes": hashes,
            **_fees(chain, 2),
        },
    )
    assert chain.balance(recipient) == 12345
    block = chain.tester.get_block_by_number(receipt["block_number"])
    assert block["blob_gas_used"] == 3 * 2**17
    gas_cost = receipt["gas_used"] * receipt["effective_gas_price"]
    # No excess blob gas yet, so the blob base fee is its minimum, 1 wei (EIP-4844).
    # (eth-tester's receipt reports blob_gas_used as blob_gas_price, so it is not used.)
    assert block["excess_blob_gas"] == 0
    blob_cost = receipt["blob_gas_used"] * 1
    assert chain.balance(sender) == before - 12345 - gas_cost - blob_cost


def test_set_code_transaction_delegates_and_executes(chain: Chain) -> None:
    pk, sender = chain.funded_key()
    contract = _deploy(chain, pk, sender, 2)
    authority_key = generate_private_key()
    authority = private_key_to_address(authority_key)
    auth = sign_authorization(
        authority_key, {"chainId": hex(chain.chain_id), "address": contract, "nonce": "0x0"}
    )
    word = "0x" + (0xBEEF).to_bytes(32, "big").hex()
    chain.send(
        pk,
        {
            "type": 4,
            "chainId": chain.chain_id,
            "nonce": chain.nonce(sender),
            "to": authority,
            "gas": 100000,
            "data": word,
            "authorizationList": [auth.to_json()],
            **_fees(chain, 4),
        },
    )
    # EIP-7702: the authority's code is the delegation designator, its nonce is bumped,
    # and the call ran the contract's code against the authority's storage.
    assert chain.tester.get_code(authority) == "0xef0100" + contract[2:].lower()
    assert chain.nonce(authority) == 1
    assert chain.storage(authority, 0) == 0xBEEF
    assert chain.storage(contract, 0) == 0


def test_chain_rejects_a_tampered_transaction(chain: Chain) -> None:
    """The EVM really checks what we sign: the same signature over another value
    recovers to a different, unfunded sender and the transaction is refused.
    (py-evm does not compare a typed transaction's chainId with its own, so a
    wrong-chain signature is not a usable negative test here.)"""
    pk, sender = chain.funded_key()
    fields = {
        "type": 2,
        "chainId": chain.chain_id,
        "nonce": chain.nonce(sender),
        "to": sender,
        "value": 1,
        "gas": 21000,
        **_fees(chain, 2),
    }
    tx = parse_transaction(fields)
    signed = sign_transaction(pk, tx)
    tampered = dataclasses.replace(tx, value=2).encode_signed(signed.y_parity, signed.r, signed.s)
    with pytest.raises(Exception, match=r"(?i)balance|funds|nonce"):
        chain.tester.send_raw_transaction("0x" + tampered.hex())
    assert chain.nonce(sender) == 0
    chain.tester.send_raw_transaction("0x" + signed.raw.hex())
    assert chain.nonce(sender) == 1
