"""The dev/test stack supervises its processes as systemd does on a host: a killed
enclave or relay comes back by itself, and /readyz says not ready while it is down.
(Issue 9: "enclave killed under load ... nothing restarts it in make dev".)"""

from __future__ import annotations

import os
import signal

import pytest
from eth_account import Account

from nitro_sim.stack import LocalStack, http_status
from nitro_sim.supervisor import State
from tests.stack_helpers import create_account, eip1559, sign, wait_for

pytestmark = pytest.mark.stack

#: Generous: detection (2 s poll) + backoff + an enclave boot, on a loaded CI machine.
RECOVERY_BOUND_SECONDS = 90


def test_a_killed_enclave_is_restarted_and_readiness_is_false_meanwhile(stack: LocalStack) -> None:
    account = create_account(stack)
    assert sign(stack, account["account_id"], eip1559())[0] == 200
    record = stack.enclave_record()
    assert record is not None
    enclave_pid = record["EnclaveProcessID"]
    restarts = stack.services["enclave"].restarts

    os.kill(enclave_pid, signal.SIGKILL)
    assert wait_for(lambda: http_status(f"{stack.relay_url}/readyz") == 503, 30)
    status, answer = sign(stack, account["account_id"], eip1559(1))
    assert status == 503, answer  # never a wrong or partial signature, never a 500
    assert answer["error"]["code"] == "enclave_unavailable"

    enclave = stack.services["enclave"]
    assert wait_for(
        lambda: enclave.restarts == restarts + 1 and enclave.state == State.RUNNING,
        RECOVERY_BOUND_SECONDS,
    ), stack.log("supervisor")
    assert wait_for(stack.relay_ready, 30)
    again = stack.enclave_record()
    assert again is not None
    assert again["EnclaveProcessID"] != enclave_pid
    status, signed = sign(stack, account["account_id"], eip1559(2))
    assert status == 200, signed  # a cold unlock through KMS again
    assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]
    assert "enclave: exited with 1; restarting" in stack.log("supervisor")


def test_a_killed_relay_is_restarted_on_the_same_port(stack: LocalStack) -> None:
    account = create_account(stack)
    relay = stack.services["relay"]
    old_pid, port = relay.pid, stack.relay_port
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    assert wait_for(lambda: relay.pid != old_pid and relay.state == State.RUNNING, 60)
    assert stack.relay_port == port
    assert wait_for(stack.relay_ready, RECOVERY_BOUND_SECONDS)
    status, signed = sign(stack, account["account_id"], eip1559())
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]
