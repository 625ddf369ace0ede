"""Recovery times of the supervised dev/test stack (the figures in docs/reliability.md).

    .venv/bin/python bench/bench_recovery.py [--rounds 3]

For each round: SIGKILL the enclave process, then the relay, and time (a) until /readyz
answers 503 (the outage is visible), (b) until /readyz answers 200 again from the
relay this stack started, (c) until a signature for an existing account succeeds (the
enclave's cache is empty after a restart: a cold unlock through KMS). Then the stop:
``python -m nitro_sim.dev`` on free ports, SIGINT, time to exit. Figures from a shared
machine are noisy: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nitro_sim.stack import REPO_ROOT, LocalStack, http_json, http_status

TX = {
    "type": "0x2",
    "chainId": "0x7a69",
    "nonce": "0x0",
    "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "value": "0x1",
    "gas": "0x5208",
    "maxFeePerGas": "0x77359400",
    "maxPriorityFeePerGas": "0x3b9aca00",
}


def until(predicate: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("no recovery within the timeout")
        time.sleep(0.02)


def signs(stack: LocalStack, account_id: str) -> bool:
    status, _ = http_json(
        "POST", f"{stack.relay_url}/v1/accounts/{account_id}/sign/transaction", {"transaction": TX}
    )
    return status == 200


def kill_and_time(
    stack: LocalStack, account_id: str, kill: Callable[[], None]
) -> tuple[float, ...]:
    """Seconds from the kill to: /readyz not 200, /readyz 200 again, a signature."""
    started = time.monotonic()
    kill()
    marks = []
    for reached in (
        lambda: http_status(f"{stack.relay_url}/readyz") != 200,
        stack.relay_ready,
        lambda: signs(stack, account_id),
    ):
        until(reached)
        marks.append(time.monotonic() - started)
    return tuple(marks)


def stop_time(root: Path) -> float:
    dev = subprocess.Popen(
        [
            *(sys.executable, "-m", "nitro_sim.dev", "--state-dir", str(root)),
            *("--relay-port", "0", "--kms-port", "0", "--imds-port", "0"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert dev.stdout is not None
    for line in dev.stdout:
        if re.search("dev stack is up", line):
            break
    started = time.monotonic()
    dev.send_signal(signal.SIGINT)
    dev.communicate(timeout=60)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nw-bench-", dir="/tmp"))
    rows: dict[str, list[tuple[float, ...]]] = {"enclave SIGKILL": [], "relay SIGKILL": []}
    try:
        with LocalStack(root=root / "stack") as stack:
            status, account = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
            assert status == 201, account
            for _ in range(args.rounds):
                record = stack.enclave_record()
                assert record is not None
                enclave_pid = int(record["EnclaveProcessID"])
                kill_enclave = functools.partial(os.kill, enclave_pid, signal.SIGKILL)
                rows["enclave SIGKILL"].append(
                    kill_and_time(stack, account["account_id"], kill_enclave)
                )
                kill_relay = functools.partial(stack.services["relay"].signal, signal.SIGKILL)
                rows["relay SIGKILL"].append(
                    kill_and_time(stack, account["account_id"], kill_relay)
                )
        stops = [stop_time(root / f"dev-{n}") for n in range(args.rounds)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.rounds} rounds; seconds from the kill (median, max)")
    for name, values in rows.items():
        columns = list(zip(*values, strict=True))
        cells = [f"{statistics.median(c):5.2f} / {max(c):5.2f}" for c in columns]
        print(f"  {name:16s} readyz 503 {cells[0]}   readyz 200 {cells[1]}   signs {cells[2]}")
    print(f"  make dev SIGINT -> exit: {statistics.median(stops):5.2f} / {max(stops):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
