"""The enclave's CPU and context switches per warm signing request, whole stack.

    .venv/bin/python -m bench.enclave_stack_cpu [--rounds 3] [--requests 4000]
        [--workers 16] [--compare /path/to/another/checkout] [--json]

Each round starts the simulated appliance (``bench.run.BenchStack``: KMS, IMDS,
vsock-proxy, enclave, relay) in a fresh process, creates one account, warms its key
with 500 signatures at c=8, then, for c=1 and c=8, drives ``requests``
``sign/transaction`` requests through the relay (``bench.loadgen``, its own process)
and reads, around each run, the user and system CPU of the enclave's process tree and
the context switches of all its threads (/proc). Per request, these hold on a shared
machine where rates do not; the rate is printed too, for reference only.

``--compare DIR`` runs the same rounds with another checkout's whole stack (its
``nitro_sim``, ``enclave_app`` and ``parent_app``; only the enclave is measured),
alternating round by round, and prints medians per tree. The rounds run this file with
``PYTHONPATH=DIR``: DIR's ``bench`` must have ``procfs.context_switches`` (for an
older tree, copy this tree's ``bench/procfs.py`` into it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procfs
from bench.run import BenchStack, Processes, http_request, load, sign_requests
from nitro_sim.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCIES = (1, 8)
WARM_UP = 500


def measure_here(requests: int, workers: int) -> dict[str, dict[str, float]]:
    """One round with the stack of whatever tree this process imports (run as a script
    with ``PYTHONPATH=DIR``: DIR's)."""
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nw-encl-cpu-") as tmp:
        stack = BenchStack(
            root=Path(tmp), relay_port=free_port(), enclave_settings={"enclave_workers": workers}
        )
        stack.start()
        try:
            port = stack.relay_port
            created = load(port, [http_request("POST", "/v1/accounts", {})], 1, count=1)
            account = json.loads(created["bodies"][0])["account_id"]
            singles = sign_requests(account)
            load(port, singles, 8, count=WARM_UP)
            enclave = Processes(stack).enclave()
            for concurrency in CONCURRENCIES:
                user, system = procfs.cpu_user_system(enclave)
                switches = procfs.context_switches(enclave)
                started = time.monotonic()
                result = load(port, singles, concurrency, count=requests, keep_bodies=1)
                wall = time.monotonic() - started
                user_after, system_after = procfs.cpu_user_system(enclave)
                if set(result["statuses"]) != {"200"}:
                    raise RuntimeError(f"answers other than 200: {result['statuses']}")
                figures[f"c={concurrency}"] = {
                    "user_us": (user_after - user) / requests * 1e6,
                    "sys_us": (system_after - system) / requests * 1e6,
                    "switches": (procfs.context_switches(enclave) - switches) / requests,
                    "rps": requests / wall,
                }
        finally:
            stack.stop()
    return figures


def measure_in(tree: Path, requests: int, workers: int) -> dict[str, dict[str, float]]:
    """One round in a fresh process importing ``tree``'s packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--one-round", str(requests), "--workers", str(workers)),
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        check=True,
        timeout=1800,
    )
    figures: dict[str, dict[str, float]] = json.loads(out.stdout.decode().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.enclave_stack_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000, help="per concurrency and round")
    parser.add_argument("--workers", type=int, default=16, help="the enclave's workers")
    parser.add_argument("--compare", type=Path, help="another checkout")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one-round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_round is not None:
        print(json.dumps(measure_here(args.one_round, args.workers)))
        return 0
    from bench.alternate import alternated  # noqa: PLC0415 (not in the one-round child)

    samples = alternated(
        ROOT,
        args.compare,
        args.rounds,
        lambda tree: measure_in(tree, args.requests, args.workers),
        lambda name, sample: print(f"{name}: {json.dumps(sample)}", file=sys.stderr, flush=True),
    )
    summary: dict[str, Any] = {
        name: {
            phase: {
                key: round(statistics.median(r[phase][key] for r in runs), 2)
                for key in runs[0][phase]
            }
            for phase in runs[0]
        }
        for name, runs in samples.items()
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'tree':<32} {'load':<6} {'user us':>8} {'sys us':>7} {'switches':>9} {'req/s':>7}")
    for name, loads in summary.items():
        for phase, f in loads.items():
            print(
                f"{name:<32} {phase:<6} {f['user_us']:>8.0f} {f['sys_us']:>7.0f}"
                f" {f['switches']:>9.2f} {f['rps']:>7.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
