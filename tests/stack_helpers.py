"""Helpers for the end-to-end tests that run the whole simulated appliance."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_account import Account

from enclave_app import envelope, wire
from enclave_app.account_metadata import parse_metadata
from enclave_app.accounts import SealedAccount, additional_data_for
from enclave_app.cms import decrypt_enveloped_data
from enclave_app.transport import Transport
from nitro_sim.ca import SimCa
from nitro_sim.nsm import SimulatedNsm
from nitro_sim.stack import ENCLAVE_CID, ENCLAVE_PORT, LocalStack, http_json

T = TypeVar("T")
CHAIN_ID = 11155111
REPO = Path(__file__).resolve().parent.parent


def nitro_wallet(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI as its own process, in the stack's environment."""
    return subprocess.run(
        [sys.executable, "-m", "nitro_wallet", *args],
        cwd=REPO,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def timed_in_parallel(
    call: Callable[[], T], count: int, timeout: float = 60
) -> list[tuple[float, T]]:
    """Run ``call`` in ``count`` threads at once; each result with the seconds it took."""
    results: list[tuple[float, T]] = []
    lock = threading.Lock()

    def timed() -> None:
        started = time.monotonic()
        result = call()
        with lock:
            results.append((time.monotonic() - started, result))

    threads = [threading.Thread(target=timed) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert len(results) == count, "a call did not finish"
    return results


def eip1559(nonce: int = 0, **overrides: Any) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "type": "0x2",
        "chainId": hex(CHAIN_ID),
        "nonce": hex(nonce),
        "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": "0xde0b6b3a7640000",
        "gas": 21000,
        "maxFeePerGas": "0x77359400",
        "maxPriorityFeePerGas": "0x3b9aca00",
        "data": "0x",
    }
    tx.update(overrides)
    return tx


def assert_every_account_signs(
    relay_url: str, accounts: Mapping[str, str], nonce: int, token: str | None = None
) -> None:
    """Each account (id -> address) signs a transaction through the relay at
    ``relay_url``, and eth-account recovers the account's address from it. ``token``:
    the bearer token, for a relay that no stack of this process started."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    for account_id, address in sorted(accounts.items()):
        status, body = http_json(
            "POST",
            f"{relay_url}/v1/accounts/{account_id}/sign/transaction",
            {"transaction": eip1559(nonce=nonce)},
            headers,
        )
        assert status == 200, body
        assert Account.recover_transaction(body["raw_transaction"]) == address


def create_account(stack: LocalStack) -> dict[str, Any]:
    status, body = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
    assert status == 201, body
    return body


def sign(stack: LocalStack, account_id: str, tx: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return http_json(
        "POST", f"{stack.relay_url}/v1/accounts/{account_id}/sign/transaction", {"transaction": tx}
    )


def stored_record(stack: LocalStack, account_id: str) -> dict[str, Any]:
    """The account's record as the relay sends it to the enclave: the stored columns and
    the sealed metadata fields (``labels``, ``stamp_keys``, ``created_by``)."""
    with closing(sqlite3.connect(stack.relay_db)) as db:
        row = db.execute(
            "SELECT account_id, address, key_id, encrypted_private_key, encrypted_data_key, "
            "metadata FROM accounts WHERE account_id = ?",
            (account_id,),
        ).fetchone()
    assert row is not None
    keys = ("account_id", "address", "key_id", "encrypted_private_key", "encrypted_data_key")
    record = dict(zip(keys, row[:5], strict=True))
    record.update(json.loads(row[5]) if row[5] else {})
    return record


def account_param(stack: LocalStack, account_id: str) -> dict[str, Any]:
    """The ``account`` param of an enclave op, as the relay sends it (ciphertexts in
    base64, the sealed metadata fields as stored)."""
    stored = stored_record(stack, account_id)
    return {
        **stored,
        "encrypted_private_key": base64.b64encode(stored["encrypted_private_key"]).decode(),
        "encrypted_data_key": base64.b64encode(stored["encrypted_data_key"]).decode(),
    }


def role_credentials(stack: LocalStack) -> dict[str, Any]:
    """The instance role's credentials (what IMDS gives any process on the parent)."""
    role = next(p for p in stack.principals() if p.get("imds_role"))
    return {
        "access_key_id": role["access_key_id"],
        "secret_access_key": role["secret_access_key"],
        "session_token": role.get("session_token"),
    }


def enclave_call(stack: LocalStack, op: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request straight to the stack's enclave socket, as the relay (or any other
    process on the parent) makes it: the result, or the ``EnclaveError`` answered."""
    with Transport.unix(stack.sim_dir / "vsock").connect(ENCLAVE_CID, ENCLAVE_PORT, 30) as sock:
        request_id = uuid.uuid4().hex
        wire.write_frame(sock, wire.request_frame(wire.Request(request_id, op, params)))
        body = wire.read_frame(sock)
        assert body is not None
        return wire.parse_response(body, request_id)


def overwrite_ciphertexts(
    stack: LocalStack, account_id: str, private_key_ct: bytes, data_key_ct: bytes
) -> None:
    """What a compromised parent can do: rewrite its own storage behind the relay."""
    with closing(sqlite3.connect(stack.relay_db)) as db:
        db.execute(
            "UPDATE accounts SET encrypted_private_key = ?, encrypted_data_key = ? "
            "WHERE account_id = ?",
            (private_key_ct, data_key_ct, account_id),
        )
        db.commit()


def unlock_as_measured_enclave(stack: LocalStack, record: dict[str, Any]) -> tuple[bytes, bytes]:
    """Ground truth for the leak tests: (private key, data key) of a stored account.

    Only possible because the test holds the simulator CA's private key, so it can
    produce an attestation with the allowed measurements exactly as the real enclave
    does. Nothing in the appliance has that power.
    """
    assert stack.measurements is not None
    pcrs = stack.measurements.pcrs()
    nsm = SimulatedNsm(SimCa.load_or_create(stack.sim_dir / "ca"), pcrs, "i-test-enc0")
    ephemeral = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_der = ephemeral.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = nsm.attestation_document(public_key=public_der)
    response = stack.kms_client("imds_role").decrypt(
        CiphertextBlob=record["encrypted_data_key"],
        EncryptionContext=envelope.encryption_context(record["account_id"]),
        Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document},
    )
    data_key = decrypt_enveloped_data(response["CiphertextForRecipient"], ephemeral)
    account = SealedAccount(
        account_id=record["account_id"],
        address=record["address"],
        key_id=record["key_id"],
        encrypted_private_key=record["encrypted_private_key"],
        encrypted_data_key=record["encrypted_data_key"],
        metadata=parse_metadata(record),
    )
    private_key = envelope.open_sealed(
        data_key, record["encrypted_private_key"], additional_data_for(account)
    )
    return private_key, data_key


def secret_forms(secret: bytes) -> list[bytes]:
    """Every common spelling of a secret: raw, hex (both cases), base64."""
    hexed = secret.hex()
    return [
        secret,
        hexed.encode(),
        hexed.upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and not p.is_socket()]
