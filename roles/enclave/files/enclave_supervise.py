#!/usr/bin/python3
"""Run a Nitro enclave under systemd (Type=notify) and stay up exactly as long as it runs.

nitro-cli run-enclave returns once the enclave is up, so systemd alone cannot tell when
the enclave dies. This supervisor: terminates a stale enclave of the same name, runs
run-enclave, notifies READY=1, then polls describe-enclaves every --interval seconds and
exits 1 when the enclave is no longer RUNNING (Restart=on-failure starts it again).
ExecStop terminates the enclave; SIGTERM then ends the supervisor with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from types import FrameType
from typing import Any

COMMAND_TIMEOUT = 120


def log(message: str) -> None:
    print(f"enclave-supervise: {message}", flush=True)


def nitro_cli(cli: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


def enclaves_named(cli: str, name: str) -> list[dict[str, Any]] | None:
    """The enclaves called ``name``, or None when describe-enclaves failed."""
    result = nitro_cli(cli, "describe-enclaves")
    if result.returncode != 0:
        log(f"describe-enclaves failed ({result.returncode}): {result.stderr.strip()[:500]}")
        return None
    try:
        described = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        log("describe-enclaves printed no JSON")
        return None
    if not isinstance(described, list):
        return None
    return [e for e in described if isinstance(e, dict) and e.get("EnclaveName") == name]


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="enclave-supervise")
    parser.add_argument("--nitro-cli", default="/usr/bin/nitro-cli")
    parser.add_argument("--name", required=True)
    parser.add_argument("--eif-path", required=True)
    parser.add_argument("--cpu-count", type=int, required=True)
    parser.add_argument("--memory", type=int, required=True)
    parser.add_argument("--enclave-cid", type=int, required=True)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--debug-mode", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stopping = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)

    stale = enclaves_named(args.nitro_cli, args.name)
    if stale:
        log(f"terminating a stale enclave named {args.name}")
        nitro_cli(args.nitro_cli, "terminate-enclave", "--enclave-name", args.name)

    command = [
        "run-enclave",
        "--eif-path",
        args.eif_path,
        "--cpu-count",
        str(args.cpu_count),
        "--memory",
        str(args.memory),
        "--enclave-cid",
        str(args.enclave_cid),
        "--enclave-name",
        args.name,
    ]
    if args.debug_mode:
        command.append("--debug-mode")
    started = nitro_cli(args.nitro_cli, *command)
    if started.returncode != 0:
        log(f"run-enclave failed ({started.returncode}): {started.stderr.strip()[:2000]}")
        return started.returncode or 1
    log(f"run-enclave: {' '.join(started.stdout.split())[:2000]}")
    notify("READY=1")

    misses = 0
    while not stopping.wait(args.interval):
        running = enclaves_named(args.nitro_cli, args.name)
        if running is None:
            misses += 1  # nitro-cli itself failed: tolerate a few before giving up
            if misses >= 3:
                return 1
            continue
        misses = 0
        if not any(e.get("State") == "RUNNING" for e in running):
            if stopping.is_set():
                break
            log(f"enclave {args.name} is no longer running")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
