"""`make dev`: the stack starts as plain processes, serves, owns its ports, and stops
within a bound on SIGINT or SIGTERM, leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from nitro_sim.stack import REPO_ROOT, STOP_BUDGET_SECONDS, http_json
from nitro_wallet.stamping import load_key_file, make_stamp
from tests.stack_helpers import eip1559

pytestmark = pytest.mark.stack

#: SIGINT/SIGTERM to exit: the stack's own budget plus interpreter exit.
STOP_BOUND_SECONDS = STOP_BUDGET_SECONDS + 10


class DevProcess:
    """``python -m nitro_sim.dev`` with its output read by a thread (joined on exit)."""

    def __init__(self, state: Path, *ports: str) -> None:
        self.state = state
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nitro_sim.dev", "--state-dir", str(state), *ports],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = re.search(pattern, "".join(self.lines))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")
                self._changed.wait(min(left, 1.0))

    def stop(self, signum: int) -> tuple[int, float]:
        """Send ``signum``; the exit code and the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(STOP_BOUND_SECONDS)
        self._reader.join(10)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)


@pytest.fixture
def state() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: keep the state dir short.
    path = Path(tempfile.mkdtemp(prefix="nw-dev-", dir="/tmp"))
    yield path
    for pid in processes_mentioning(path):  # never leak into the next test
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def processes_mentioning(path: Path) -> list[int]:
    """Live processes whose command line or environment names ``path``."""
    marker = os.fsencode(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                continue
            if (
                marker in (entry / "cmdline").read_bytes()
                or marker in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def any_ports() -> tuple[str, ...]:
    return ("--relay-port", "0", "--kms-port", "0", "--imds-port", "0")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_dev_stack_serves_then_stops_in_bounded_time_leaving_no_process(
    state: Path, signum: signal.Signals
) -> None:
    dev = DevProcess(state, *any_ports())
    try:
        relay = dev.wait_for(r"relay\s+(http://127\.0\.0\.1:\d+)").group(1)
        dev.wait_for("dev stack is up")
        assert processes_mentioning(state), "the stack's processes are findable"
        assert "grants\n" in dev.output  # the banner says what the dev policy grants
        assert "BOTH EVERYTHING" in dev.output
        status, refused = http_json("POST", f"{relay}/v1/accounts", {})  # no credentials
        assert (status, refused["error"]["code"]) == (401, "unauthenticated")
        bearer = {"Authorization": f"Bearer {(state / 'api-token').read_text().strip()}"}
        status, account = http_json("POST", f"{relay}/v1/accounts", {}, bearer)
        assert status == 201
        path = f"/v1/accounts/{account['account_id']}/sign/transaction"
        status, signed = http_json("POST", relay + path, {"transaction": eip1559()}, bearer)
        assert status == 200
        assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]
        body = json.dumps({"message": "stamped in make dev"}).encode()
        stamp = make_stamp(
            load_key_file(state / "api-key.pem"), "POST", path[:-11] + "message", body
        )
        status, stamped = http_json(
            "POST", relay + path[:-11] + "message", body, {"X-Stamp": stamp}
        )
        assert status == 200, stamped
        message = encode_defunct(text="stamped in make dev")
        assert (
            Account.recover_message(message, signature=stamped["signature"]) == account["address"]
        )
        code, took = dev.stop(signum)
    finally:
        dev.kill()
    assert code == 0, dev.output
    for secret in ("api-token", "api-key.pem"):
        assert (state / secret).stat().st_mode & 0o777 == 0o600, secret
    verified = subprocess.run(
        [
            *(sys.executable, "-m", "nitro_wallet", "audit", "verify"),
            *(str(state / "audit.jsonl"), "--root", str(state / "sim-root.pem")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert took < STOP_BOUND_SECONDS
    assert processes_mentioning(state) == [], dev.output
    described = subprocess.run(
        [sys.executable, "-m", "nitro_sim.nitro_cli", "describe-enclaves"],
        cwd=REPO_ROOT,
        env={**os.environ, "NITRO_SIM_DIR": str(state / "sim")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(described.stdout) == []


@pytest.mark.parametrize("flag", ["--relay-port", "--kms-port", "--imds-port"])
def test_a_taken_port_is_refused_naming_the_port_and_its_holder(state: Path, flag: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = dict(zip(any_ports()[::2], any_ports()[1::2], strict=True))
        ports[flag] = str(port)
        argv = [item for pair in ports.items() for item in pair]
        dev = DevProcess(state, *argv)
        try:
            code = dev.process.wait(60)
            dev._reader.join(10)
        finally:
            dev.kill()
    assert code == 1, dev.output
    assert f"port {port} is already in use by pid {os.getpid()}" in dev.output
    assert "dev stack is up" not in dev.output
    assert processes_mentioning(state) == []


def test_a_second_stack_on_the_same_state_dir_is_refused(state: Path) -> None:
    first = DevProcess(state, *any_ports())
    try:
        first.wait_for("dev stack is up")
        second = DevProcess(state, *any_ports())
        try:
            assert second.process.wait(60) == 1
            second._reader.join(10)
        finally:
            second.kill()
        assert f"another stack runs from {state}" in second.output
        assert f"(pid {first.process.pid})" in second.output
        code, _ = first.stop(signal.SIGINT)
    finally:
        first.kill()
    assert code == 0, first.output


def test_sigint_while_starting_stops_in_bounded_time(state: Path) -> None:
    dev = DevProcess(state, *any_ports())
    try:
        dev.wait_for("starting the simulated appliance")
        time.sleep(1.0)  # somewhere inside start(): KMS up, EIF building
        code, took = dev.stop(signal.SIGINT)
    finally:
        dev.kill()
    assert code in (0, 130), dev.output
    assert took < STOP_BOUND_SECONDS
    assert processes_mentioning(state) == [], dev.output


def test_demo_dev_walkthrough_ends_with_a_verified_stamped_signature(state: Path) -> None:
    """`make demo-dev`: scripts/demo-dev.sh starts the stack, runs the README's curl
    walk-through (scripts/walkthrough.sh) against it and stops it. The walk-through shows
    the 401 and recovers the transaction's sender on the way, and ends with a message
    signed under an X-Stamp (`nitro-wallet stamp`) that eth-account recovers to the
    account. (`make demo` ends with the same walk-through: molecule `default` runs it.)"""
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo-dev.sh"), *any_ports()],
        env={**os.environ, "DEMO_STATE": str(state)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert '"code":"unauthenticated"' in output.replace(" ", ""), output[-8000:]
    assert "recovered sender" in output, output[-8000:]
    assert "X-Stamp: $(nitro-wallet stamp --key" in output, output[-8000:]
    lines = output.splitlines()
    signer = next(i for i, line in enumerate(lines) if line.startswith("recovered signer"))
    recovered, address = lines[signer].split()[-1], lines[signer + 1]
    assert address == f"account address  {recovered}", lines[signer : signer + 2]
    assert "demo OK" in output, output[-8000:]
    assert processes_mentioning(state) == [], output[-8000:]
