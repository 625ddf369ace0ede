"""End to end on the simulated Nitro backend: the relay, the real enclave app, the
local KMS with the rendered key policy, checked by independent code (eth-account)."""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import sys
import urllib.request
import uuid

import pytest
import rlp
from eth_account import Account
from eth_utils.crypto import keccak

from enclave_app import wire
from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import (
    CHAIN_ID,
    create_account,
    eip1559,
    files_under,
    secret_forms,
    sign,
    stored_record,
    unlock_as_measured_enclave,
)

pytestmark = pytest.mark.stack


def test_create_account_and_sign_eip1559_recovers_to_the_address(stack: LocalStack) -> None:
    account = create_account(stack)
    assert uuid.UUID(account["account_id"])
    status, signed = sign(stack, account["account_id"], eip1559())
    assert status == 200, signed
    raw = bytes.fromhex(signed["raw_transaction"][2:])
    assert raw[0] == 0x02
    assert Account.recover_transaction(raw) == account["address"]
    assert signed["hash"] == "0x" + keccak(raw).hex()


def test_legacy_eip155_transaction_recovers_and_carries_the_chain_id(stack: LocalStack) -> None:
    account = create_account(stack)
    tx = {
        "chainId": CHAIN_ID,
        "nonce": 7,
        "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": 1,
        "gas": 21000,
        "gasPrice": "0x4a817c800",
        "data": "0x",
    }
    status, signed = sign(stack, account["account_id"], tx)
    assert status == 200, signed
    raw = bytes.fromhex(signed["raw_transaction"][2:])
    assert Account.recover_transaction(raw) == account["address"]
    fields = rlp.decode(
        raw
    )  # independent decoder: [nonce, gasPrice, gas, to, value, data, v, r, s]
    v = int.from_bytes(fields[6], "big")
    assert v in (CHAIN_ID * 2 + 35, CHAIN_ID * 2 + 36)


def test_get_account_returns_the_address_and_no_ciphertext(stack: LocalStack) -> None:
    account = create_account(stack)
    status, body = http_json("GET", f"{stack.relay_url}/v1/accounts/{account['account_id']}")
    assert status == 200
    assert body["address"] == account["address"]
    assert "encrypted_private_key" not in body
    assert "encrypted_data_key" not in body


def test_a_warm_signature_makes_no_kms_call(stack: LocalStack) -> None:
    account = create_account(stack)
    assert sign(stack, account["account_id"], eip1559(0))[0] == 200
    audit = stack.sim_dir / "kms" / "audit.log"
    before = audit.read_text().count("\n")
    for nonce in range(1, 4):
        assert sign(stack, account["account_id"], eip1559(nonce))[0] == 200
    assert audit.read_text().count("\n") == before


def test_account_survives_a_relay_restart_and_is_never_overwritten(stack: LocalStack) -> None:
    account_id = str(uuid.uuid4())
    status, created = http_json(
        "POST", f"{stack.relay_url}/v1/accounts", {"account_id": account_id}
    )
    assert status == 201, created
    status, again = http_json("POST", f"{stack.relay_url}/v1/accounts", {"account_id": account_id})
    assert status == 409
    assert again["error"]["code"] == "account_exists"
    stack.restart_relay()
    status, body = http_json("GET", f"{stack.relay_url}/v1/accounts/{account_id}")
    assert status == 200
    assert body["address"] == created["address"]
    status, signed = sign(stack, account_id, eip1559())
    assert status == 200
    assert Account.recover_transaction(signed["raw_transaction"]) == created["address"]


@pytest.mark.parametrize(
    ("body", "expected_status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"transaction": "0x02"}', 400),
        (b'{"transaction": {"type": "0x2", "chainId": 1.5}}', 400),
        (b"x" * 2_000_000, 413),
    ],
)
def test_malformed_requests_get_4xx_and_the_relay_stays_up(
    stack: LocalStack, body: bytes, expected_status: int
) -> None:
    account = create_account(stack)
    status, answer = http_json(
        "POST", f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction", body
    )
    assert status == expected_status, answer
    assert answer["error"]["code"]
    assert answer["error"]["message"]
    assert http_json("GET", f"{stack.relay_url}/healthz")[0] == 200


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"chainId": None}, "chainId"),
        ({"to": "0xnothex"}, "to"),
        ({"data": "0xabc"}, "data"),
        ({"value": "1000"}, "value"),
        ({"value": -1}, "value"),
        ({"nonce": True}, "nonce"),
        ({"maxFeePerGas": 1.0}, ""),
    ],
)
def test_invalid_transaction_fields_are_refused_by_the_enclave(
    stack: LocalStack, change: dict[str, object], fragment: str
) -> None:
    account = create_account(stack)
    tx = eip1559()
    for key, value in change.items():
        if value is None:
            tx.pop(key)
        else:
            tx[key] = value
    status, answer = sign(stack, account["account_id"], tx)
    assert status == 400, answer
    assert fragment in answer["error"]["message"]
    assert "raw_transaction" not in answer


def test_an_oversized_frame_is_refused_by_the_enclave_without_reading_it(
    stack: LocalStack,
) -> None:
    path = stack.sim_dir / "vsock" / "16_5000.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        # Announce 64 MiB and send none of it: the enclave must answer from the header.
        conn.sendall(struct.pack(">I", 64 * 1024 * 1024))
        body = wire.read_frame(conn)
        assert body is not None
        with pytest.raises(Exception, match="frame_too_large"):
            wire.parse_response(body, "unused")
        assert conn.recv(1) == b""  # and it hung up
    assert http_json("GET", f"{stack.relay_url}/readyz")[0] == 200


def test_attest_op_answers_a_document_the_verifier_cli_accepts(stack: LocalStack) -> None:
    assert stack.measurements is not None
    path = stack.sim_dir / "vsock" / "16_5000.sock"
    nonce = bytes(range(32))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(20)
        conn.connect(str(path))
        request = wire.Request("r1", "attest", {"nonce": base64.b64encode(nonce).decode()})
        wire.write_frame(conn, wire.request_frame(request))
        frame = wire.read_frame(conn)
    assert frame is not None
    document = wire.parse_response(frame, "r1")["attestation_document"]
    doc_file = stack.root / "attestation.b64"
    doc_file.write_text(document)
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_wallet",
            "attestation",
            "verify",
            "--document",
            str(doc_file),
            "--root",
            str(stack.sim_dir / "ca" / "root.pem"),
            "--expect-pcr0",
            stack.measurements.pcr0,
            "--expect-nonce",
            nonce.hex(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_wallet",
            "attestation",
            "verify",
            "--document",
            str(doc_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0  # the AWS root is pinned by default


def test_no_private_key_or_data_key_in_storage_logs_or_responses(stack: LocalStack) -> None:
    responses: list[bytes] = []
    account = create_account(stack)
    responses.append(repr(account).encode())
    for path in (f"/v1/accounts/{account['account_id']}", "/v1/accounts"):
        responses.append(repr(http_json("GET", stack.relay_url + path)).encode())
    with urllib.request.urlopen(f"{stack.relay_url}/metrics", timeout=10) as metrics:
        responses.append(metrics.read())
    status, signed = sign(stack, account["account_id"], eip1559())
    assert status == 200
    responses.append(repr(signed).encode())

    record = stored_record(stack, account["account_id"])
    private_key, data_key = unlock_as_measured_enclave(stack, record)
    assert Account.from_key(private_key).address == account["address"]

    logs = {p: p.read_bytes() for p in files_under(stack.log_dir)}
    consoles = list((stack.sim_dir / "enclaves").rglob("console.log"))
    assert consoles, "the enclave's console log is part of what is searched"
    logs.update({p: p.read_bytes() for p in consoles})
    logs[stack.sim_dir / "kms" / "audit.log"] = (stack.sim_dir / "kms" / "audit.log").read_bytes()
    haystacks = {p: p.read_bytes() for p in files_under(stack.relay_db.parent)}
    haystacks.update(logs)
    haystacks.update({stack.root / f"response{i}": r for i, r in enumerate(responses)})
    for secret in (private_key, data_key):
        for form in secret_forms(secret):
            for where, content in haystacks.items():
                assert form not in content, f"key material found in {where}"
    # The role credentials the relay passes to the enclave are never logged either.
    role = next(p for p in stack.principals() if p.get("imds_role"))
    for credential in (role["secret_access_key"], role["session_token"]):
        for where, content in logs.items():
            assert credential.encode() not in content, f"credential found in {where}"
