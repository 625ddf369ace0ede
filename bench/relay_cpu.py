"""CPU time per request of the relay and of the enclave, on the warm signing path.

    .venv/bin/python -m bench.relay_cpu [--rounds 3] [--requests 2000]
        [--compare /path/to/another/checkout] [--py-spy relay.svg] [--json]

Starts the simulated appliance (``bench.run.BenchStack``), creates one account, warms
its key, then drives ``bench.loadgen`` (its own process, keep-alive connections) with a
fixed number of requests per run and reads the CPU each process tree spent from /proc:
microseconds per request, which hold on a shared machine where rates do not.
Workloads: ``sign/transaction`` at c=1, 8 and 32, and the 50-transaction batch at c=4
(per request and per signature).

``--compare DIR`` starts a second relay from another checkout (say the main branch's
worktree) with the same interpreter, configuration, storage and enclave, and
interleaves the two round by round: a before/after comparison measured in one run.
A caveat since audit receipts: the enclave's receipt ring has one consumer (a relay's
audit log writer) and the two writers compete for it, so which relay collects (and is
charged for) a receipt depends on timing. The second relay writes its own log file,
which usually cannot even start once the first has acknowledged the genesis receipt:
then the first relay's figures include collecting the second's receipts and the
second's include none. For the writer's cost per receipt use
``bench/audit_receipt_cpu.py``; for whole stacks, interleave ``make bench`` runs of
each tree (each with its own enclave).
``--py-spy FILE`` records a flame graph of the (first) relay during one extra c=8 run,
when py-spy is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procfs
from bench.run import (
    BenchStack,
    Processes,
    batch_requests,
    check_signed,
    http_request,
    load,
    sign_requests,
)
from nitro_sim.stack import LocalStack, free_port, http_status, wait_until

ROOT = Path(__file__).resolve().parent.parent
#: (name, concurrency, signatures per request)
WORKLOADS = (("sign c=1", 1, 1), ("sign c=8", 8, 1), ("sign c=32", 32, 1), ("batch50 c=4", 4, 50))


@dataclass(frozen=True)
class Relay:
    """One relay under measurement: its port and how to find its process tree."""

    name: str
    port: int
    pids: Callable[[], list[int]]


def start_second_relay(
    stack: LocalStack, source: Path, log_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """The same relay configuration on another port, running ``source``'s parent_app."""
    port = free_port()
    config = stack.root / "relay-compare.toml"
    own_log = json.dumps(str(stack.root / "audit-compare.jsonl"))  # never the first's file
    config.write_text(
        stack.relay_config()
        .replace(f"listen_port = {stack.relay_port}", f"listen_port = {port}")
        .replace(json.dumps(str(stack.audit_log)), own_log)
    )
    env = dict(stack.env())
    env["PYTHONPATH"] = str(source)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "parent_app", "--config", str(config)],
            cwd=source,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, "second relay")
    return process, port


def measure(
    relay: Relay, procs: Processes, requests: list[bytes], concurrency: int, count: int
) -> dict[str, Any]:
    relay_pids = relay.pids()
    user, system = procfs.cpu_user_system(relay_pids)
    switches = procfs.context_switches(relay_pids)
    cpu_enclave = procfs.cpu_seconds(procs.enclave())
    started = time.monotonic()
    result = load(relay.port, requests, concurrency, count=count, keep_bodies=5)
    wall = time.monotonic() - started
    user_after, system_after = procfs.cpu_user_system(relay_pids)
    relay_user_us = (user_after - user) / count * 1e6
    relay_sys_us = (system_after - system) / count * 1e6
    relay_us = relay_user_us + relay_sys_us
    enclave_us = (procfs.cpu_seconds(procs.enclave()) - cpu_enclave) / count * 1e6
    if set(result["statuses"]) != {"200"}:
        raise RuntimeError(f"{relay.name}: answers other than 200: {result['statuses']}")
    return {
        "relay_us": relay_us,
        "relay_sys_us": relay_sys_us,
        "relay_switches": (procfs.context_switches(relay_pids) - switches) / count,
        "enclave_us": enclave_us,
        "loadgen_us": result["cpu_us_per_request"],
        "rps": count / wall,
        "bodies": result["bodies"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="nw-relaycpu-", dir="/tmp"))
    second: subprocess.Popen[bytes] | None = None
    try:
        with BenchStack(root=root, relay_port=free_port()) as stack:
            procs = Processes(stack)
            created = load(stack.relay_port, [http_request("POST", "/v1/accounts", {})], 1, count=1)
            account = json.loads(created["bodies"][0])
            relays = [Relay("this tree", stack.relay_port, procs.relay)]
            if args.compare is not None:
                second, port = start_second_relay(stack, args.compare, root / "relay-compare.log")
                pid = second.pid
                relays.append(Relay(str(args.compare), port, lambda: procfs.tree(pid)))
            singles = sign_requests(account["account_id"])
            batches = batch_requests(account["account_id"])
            for relay in relays:  # warm keys, connections, caches
                load(relay.port, singles, 8, count=200, keep_bodies=0)
                load(relay.port, batches, 4, count=8, keep_bodies=0)
            samples: dict[str, dict[str, list[dict[str, Any]]]] = {
                r.name: {w[0]: [] for w in WORKLOADS} for r in relays
            }
            for _ in range(args.rounds):
                for name, concurrency, per in WORKLOADS:
                    requests = batches if per > 1 else singles
                    count = max(40, args.requests // per) if per > 1 else args.requests
                    for relay in relays:
                        figures = measure(relay, procs, requests, concurrency, count)
                        check_signed(figures.pop("bodies"), account["address"])
                        samples[relay.name][name].append(figures)
            if args.py_spy is not None:
                py_spy(relays[0], singles, args)
        return summarise(samples)
    finally:
        if second is not None:
            second.terminate()
            second.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def py_spy(relay: Relay, requests: list[bytes], args: argparse.Namespace) -> None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy is not installed: no flame graph", file=sys.stderr)
        return
    pid = relay.pids()[0]
    recorder = subprocess.Popen(
        [
            *(exe, "record", "-p", str(pid), "-o", str(args.py_spy), "-d", "8", "-r", "400"),
            *("-f", args.py_spy_format, "--gil", *(["--native"] if args.native else [])),
        ]
    )
    time.sleep(1)
    load(relay.port, requests, 8, seconds=6, warmup=0, keep_bodies=0)
    recorder.wait(30)


def summarise(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for relay, workloads in samples.items():
        summary[relay] = {}
        for name, runs in workloads.items():
            summary[relay][name] = {
                key: round(statistics.median(run[key] for run in runs), 1)
                for key in (
                    "relay_us",
                    "relay_sys_us",
                    "relay_switches",
                    "enclave_us",
                    "loadgen_us",
                    "rps",
                )
            }
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| relay | workload | relay CPU us/request (of which system) | relay context "
        "switches/request | enclave CPU us/request | load generator us/request | requests/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for relay, workloads in summary.items():
        for name, f in workloads.items():
            lines.append(
                f"| {relay} | {name} | {f['relay_us']:,.0f} ({f['relay_sys_us']:,.0f}) | "
                f"{f['relay_switches']:.1f} | {f['enclave_us']:,.0f} | "
                f"{f['loadgen_us']:,.0f} | {f['rps']:,.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.relay_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="single requests per run")
    parser.add_argument("--compare", type=Path, help="another checkout's parent_app to compare")
    parser.add_argument("--py-spy", type=Path, help="record a py-spy profile of the relay")
    parser.add_argument("--py-spy-format", default="speedscope")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(table(summary))
    print(
        f"({args.rounds} rounds, medians; load average {load_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end; {time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
