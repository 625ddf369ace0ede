"""Account creation per second at c=8: single-use RSA recipient keys against keys that
serve several KMS calls (``kms.recipient_key_uses``), interleaved in one run.

    .venv/bin/python -m bench.account_creation [--rounds 3] [--accounts 200] [--uses 1 100]
        [--compare /path/to/another/checkout]

Starts one simulated appliance per setting (``bench.run.BenchStack``; enclave, NSM,
KMS, vsock-proxy and relay as processes), then, round by round and setting by setting,
creates ``--accounts`` accounts at c=8 through the relay (``bench.loadgen``, its own
process) and reads the CPU each process tree spent from /proc. The stacks not being
measured sit idle (their recipient-key pools are full). Prints a Markdown table of
medians: accounts/s, p50, and CPU milliseconds per account by process.

``--compare DIR`` adds, on the stack with the most uses per key, a second relay running
``DIR``'s parent_app (``bench.relay_cpu.start_second_relay``: same enclave, same
configuration and storage), measured in the same rounds: the relay's share (storage
commits) before/after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import procfs
from bench.relay_cpu import start_second_relay
from bench.run import BenchStack, Processes, cpu_ms_per, http_request, load
from nitro_sim.stack import LocalStack, free_port

CONCURRENCY = 8


class UsesStack(BenchStack):
    """The bench stack with ``uses`` KMS calls per recipient key."""

    uses = 1

    def render_enclave_config(self, **overrides: Any) -> str:
        return super().render_enclave_config(
            **{"enclave_kms_recipient_key_uses": self.uses, **overrides}
        )


def stack_for(uses: int, root: Path) -> BenchStack:
    cls = type(f"Uses{uses}Stack", (UsesStack,), {"uses": uses})
    stack: BenchStack = cls(root=root, relay_port=free_port())
    return stack


def measure(stack: LocalStack, port: int, relay_pids: Any, accounts: int) -> dict[str, Any]:
    procs = Processes(stack)
    before = {**procs.cpu(edges=True), "relay": procfs.cpu_seconds(relay_pids())}
    run = load(
        port,
        [http_request("POST", "/v1/accounts", {})],
        CONCURRENCY,
        count=accounts,
        keep_bodies=0,
    )
    after = {**procs.cpu(edges=True), "relay": procfs.cpu_seconds(relay_pids())}
    stored = sum(n for status, n in run["statuses"].items() if status in ("200", "201"))
    return {
        "rps": run["rps"] * stored / max(1, sum(run["statuses"].values())),
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "refused": accounts - stored,
        "cpu_ms": cpu_ms_per(before, after, accounts),
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    cpu_names = samples[0]["cpu_ms"].keys()
    return {
        "rps": round(statistics.median(s["rps"] for s in samples), 1),
        "p50_ms": round(statistics.median(s["p50_ms"] for s in samples), 1),
        "p99_ms": round(statistics.median(s["p99_ms"] for s in samples), 1),
        "refused": sum(s["refused"] for s in samples),
        "cpu_ms": {
            n: round(statistics.median(s["cpu_ms"][n] for s in samples), 1) for n in cpu_names
        },
    }


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| calls per recipient key, relay | accounts/s at c=8 | p50 ms | p99 ms | refused "
        "| CPU ms per account |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in summary.items():
        cpu = ", ".join(f"{process} {ms}" for process, ms in f["cpu_ms"].items())
        lines.append(
            f"| {name} | {f['rps']:,.1f} | {f['p50_ms']} | {f['p99_ms']} | {f['refused']} | {cpu} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.account_creation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=200, help="accounts per run")
    parser.add_argument("--uses", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--compare", type=Path, help="another checkout's relay, same enclave")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="nw-creation-", dir="/tmp"))
    started = time.monotonic()
    try:
        with ExitStack() as running:
            targets: dict[str, tuple[LocalStack, int, Any]] = {}
            for uses in args.uses:
                stack = running.enter_context(stack_for(uses, root / f"uses-{uses}"))
                targets[f"{uses}, this tree"] = (stack, stack.relay_port, Processes(stack).relay)
            if args.compare is not None:
                uses = max(args.uses)
                stack = targets[f"{uses}, this tree"][0]
                second, port = start_second_relay(stack, args.compare, root / "compare.log")
                running.callback(second.wait, 10)
                running.callback(second.terminate)
                pids = procfs.tree(second.pid)
                targets[f"{uses}, {args.compare}"] = (stack, port, lambda: pids)
            samples: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (stack, port, relay_pids) in targets.items():
                    time.sleep(3)  # every enclave's recipient-key pool refills while idle
                    samples[name].append(measure(stack, port, relay_pids, args.accounts))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {uses: summarise(runs) for uses, runs in samples.items()}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(table(summary))
        print(
            f"({args.rounds} rounds of {args.accounts} accounts, medians; "
            f"{time.monotonic() - started:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
