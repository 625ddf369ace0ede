"""`make dev`: the stack starts as plain processes, serves, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from eth_account import Account

from nitro_sim.stack import REPO_ROOT, free_port, http_json, wait_for_http
from tests.stack_helpers import eip1559

pytestmark = pytest.mark.stack


def test_dev_stack_serves_and_stops_cleanly_on_ctrl_c() -> None:
    relay_port, kms_port, imds_port = free_port(), free_port(), free_port()
    # Unix socket paths are limited to 107 bytes: keep the state dir short.
    state = Path(tempfile.mkdtemp(prefix="nw-dev-", dir="/tmp"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nitro_sim.dev",
            "--state-dir",
            str(state),
            "--relay-port",
            str(relay_port),
            "--kms-port",
            str(kms_port),
            "--imds-port",
            str(imds_port),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    relay = f"http://127.0.0.1:{relay_port}"
    try:
        try:
            wait_for_http(f"{relay}/readyz", None)
        except Exception:
            process.send_signal(signal.SIGINT)
            print(process.communicate(timeout=60)[0].decode(errors="replace"))
            raise
        status, account = http_json("POST", f"{relay}/v1/accounts", {})
        assert status == 201
        status, signed = http_json(
            "POST",
            f"{relay}/v1/accounts/{account['account_id']}/sign/transaction",
            {"transaction": eip1559()},
        )
        assert status == 200
        assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode(errors="replace")
    assert b"dev stack is up" in output
    # Nothing is left running: no enclave, no listener on the relay port.
    env = {**os.environ, "NITRO_SIM_DIR": str(state / "sim")}
    described = subprocess.run(
        [sys.executable, "-m", "nitro_sim.nitro_cli", "describe-enclaves"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(described.stdout) == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and http_json_ok(f"{relay}/healthz"):
        time.sleep(0.1)
    assert not http_json_ok(f"{relay}/healthz")
    shutil.rmtree(state, ignore_errors=True)


def http_json_ok(url: str) -> bool:
    try:
        return http_json("GET", url)[0] == 200
    except OSError:
        return False
