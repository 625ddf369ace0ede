"""The enclave killed under load, on the simulated appliance: every request in flight
gets a 503 (with Retry-After) or a correct signature, never a wrong or partial answer;
the relay's connection pool recovers once the enclave is back."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
from eth_account import Account

from nitro_sim import statedir
from nitro_sim.stack import LocalStack
from tests.stack_helpers import create_account, eip1559

pytestmark = pytest.mark.stack


def _enclave_pid(stack: LocalStack) -> int:
    for directory in statedir.enclaves_dir(stack.sim_dir).iterdir():
        record = statedir.read_record(directory)
        if record and isinstance(record.get("EnclaveProcessID"), int):
            return int(record["EnclaveProcessID"])
    raise AssertionError("no running enclave")


def _sign(stack: LocalStack, account_id: str, nonce: int) -> tuple[int, dict[str, Any], str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.relay_port, timeout=60)
    try:
        body = json.dumps({"transaction": eip1559(nonce)})
        conn.request(
            "POST",
            f"/v1/accounts/{account_id}/sign/transaction",
            body=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {stack.api_token}",
            },
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        conn.close()


def test_an_enclave_killed_under_load_gives_503s_and_no_wrong_signature(
    stack: LocalStack,
) -> None:
    assert stack.measurements is not None
    accounts = [create_account(stack) for _ in range(4)]
    answers: list[tuple[dict[str, Any], int, dict[str, Any], str | None]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        account = accounts[index % len(accounts)]
        nonce = index * 100_000
        while not stop.is_set() and nonce < index * 100_000 + 2_000:
            status, body, retry_after = _sign(stack, account["account_id"], nonce)
            with lock:
                answers.append((account, status, body, retry_after))
            nonce += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        os.kill(_enclave_pid(stack), signal.SIGKILL)  # dies mid-request
        time.sleep(1.0)
        stack.run_enclave(stack.measurements.eif)
        time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    statuses = {status for _, status, _, _ in answers}
    assert statuses <= {200, 503}, statuses
    refused = [(body, retry) for _, status, body, retry in answers if status == 503]
    assert refused, "the enclave's death went unnoticed"
    for body, retry_after in refused:
        assert body["error"]["code"] in ("enclave_unavailable", "server_busy")
        assert retry_after is not None
    signed = [(account, body) for account, status, body, _ in answers if status == 200]
    assert signed
    for account, body in signed:
        assert Account.recover_transaction(body["raw_transaction"]) == account["address"]
    # After the restart the pool reconnects: the last answers are signatures again.
    assert answers[-1][1] == 200
