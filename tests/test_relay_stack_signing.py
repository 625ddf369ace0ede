"""The REST signing surface end to end on the simulated appliance (real enclave, local
KMS, NSM): signatures are checked by independent code (eth-account), attestation
documents by the verifier CLI."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_keys.datatypes import Signature
from eth_utils.crypto import keccak

from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import CHAIN_ID, create_account, eip1559, sign

pytestmark = pytest.mark.stack

TYPED: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
            {"name": "amount", "type": "uint256"},
        ],
    },
    "primaryType": "Mail",
    "domain": {
        "name": "Ether Mail",
        "version": "1",
        "chainId": CHAIN_ID,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    },
    "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!",
        "amount": "0xde0b6b3a7640000",
    },
}


def _post(stack: LocalStack, account_id: str, kind: str, body: Any) -> tuple[int, dict[str, Any]]:
    return http_json("POST", f"{stack.relay_url}/v1/accounts/{account_id}/sign/{kind}", body)


@pytest.mark.parametrize(
    ("message", "signed_bytes"),
    [
        ("Hello, nitro-wallet", b"Hello, nitro-wallet"),
        ("0x00ff10", b"\x00\xff\x10"),
        ("héllo ✓", "héllo ✓".encode()),
    ],
)
def test_sign_message_recovers_to_the_account(
    stack: LocalStack, message: str, signed_bytes: bytes
) -> None:
    account = create_account(stack)
    status, body = _post(stack, account["account_id"], "message", {"message": message})
    assert status == 200, body
    signable = encode_defunct(primitive=signed_bytes)
    assert Account.recover_message(signable, signature=body["signature"]) == account["address"]
    assert len(bytes.fromhex(body["signature"][2:])) == 65


@pytest.mark.parametrize("amount", ["0xde0b6b3a7640000", "1000000000000000000", 10**18])
def test_sign_typed_data_recovers_to_the_account(stack: LocalStack, amount: Any) -> None:
    # ethers' TypedDataEncoder.getPayload sends uint values as decimal strings: EIP-712
    # values are not wei amounts, so all three spellings are the same message
    account = create_account(stack)
    typed = {**TYPED, "message": {**TYPED["message"], "amount": amount}}
    status, body = _post(stack, account["account_id"], "typed-data", {"typed_data": typed})
    assert status == 200, body
    signable = encode_typed_data(full_message=TYPED)
    assert Account.recover_message(signable, signature=body["signature"]) == account["address"]


def test_sign_authorization_recovers_to_the_account(stack: LocalStack) -> None:
    account = create_account(stack)
    target = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    auth = {"chainId": CHAIN_ID, "address": target, "nonce": 3}
    status, body = _post(stack, account["account_id"], "authorization", {"authorization": auth})
    assert status == 200, body
    signed = body["authorization"]
    assert signed["address"] == target
    assert int(signed["chainId"], 16) == CHAIN_ID
    assert int(signed["nonce"], 16) == 3
    # EIP-7702: the authority signs keccak256(0x05 || rlp([chain_id, address, nonce]))
    digest = keccak(b"\x05" + rlp.encode([CHAIN_ID, bytes.fromhex(target[2:]), 3]))
    signature = Signature(
        vrs=(int(signed["yParity"], 16), int(signed["r"], 16), int(signed["s"], 16))
    )
    authority = signature.recover_public_key_from_msg_hash(digest).to_checksum_address()
    assert authority == account["address"]


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("value", "1000000000000000000", "decimal strings are not accepted"),
        ("nonce", "7", "decimal strings are not accepted"),
    ],
)
def test_decimal_amounts_are_refused_with_a_clear_message(
    stack: LocalStack, field: str, value: str, phrase: str
) -> None:
    account = create_account(stack)
    status, body = sign(stack, account["account_id"], {**eip1559(), field: value})
    assert status == 400
    assert body["error"]["code"] == "invalid_params"
    assert phrase in body["error"]["message"]
    assert "0x-hex" in body["error"]["message"]


def test_float_amount_is_refused_with_a_clear_message(stack: LocalStack) -> None:
    account = create_account(stack)
    raw = b'{"transaction": {"type": "0x2", "value": 1.5}}'
    status, body = http_json(
        "POST", f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction", raw
    )
    assert status == 400
    assert "floating-point numbers are not accepted" in body["error"]["message"]


def _verify(stack: LocalStack, document: Path, *, pcr0: str, nonce: str) -> int:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_wallet",
            "attestation",
            "verify",
            "--document",
            str(document),
            "--root",
            str(stack.sim_dir / "ca" / "root.pem"),
            "--expect-pcr0",
            pcr0,
            "--expect-nonce",
            nonce,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return completed.returncode


def test_attestation_endpoint_document_verifies_with_the_cli(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.measurements is not None
    nonce = secrets.token_hex(32)
    status, body = http_json(
        "GET", f"{stack.relay_url}/v1/attestation?nonce={nonce}&user_data=0xc0ffee"
    )
    assert status == 200, body
    document = tmp_path / "attestation.b64"
    document.write_text(body["attestation_document"])
    pcr0 = stack.measurements.pcr0
    assert _verify(stack, document, pcr0=pcr0, nonce=nonce) == 0
    assert _verify(stack, document, pcr0=pcr0, nonce=secrets.token_hex(32)) != 0
    assert _verify(stack, document, pcr0="ab" * 48, nonce=nonce) != 0


def test_attestation_endpoint_refuses_bad_hex(stack: LocalStack) -> None:
    status, body = http_json("GET", f"{stack.relay_url}/v1/attestation?nonce=not-hex")
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    status, body = http_json("GET", f"{stack.relay_url}/v1/attestation?nonce={'00' * 513}")
    assert status == 400
