"""Warm signing throughput of the enclave process over its socket, from other processes.

    .venv/bin/python bench/enclave_socket_throughput.py [--concurrency 1 8 32]
        [--seconds 5] [--accounts 8] [--json]

Starts the simulated appliance (``nitro_sim.stack.LocalStack``: the enclave runs as
its own process from the measured image, with the rendered enclave.toml), creates
accounts with ``generate_account`` on the enclave's socket (so their keys are warm),
then, for each concurrency c, drives c persistent connections spread over several
client processes, each sending ``sign_transaction`` frames (EIP-1559) back to back for
``--seconds``. Every answer is checked to be ``ok``; the first answer of every
connection is checked to recover to its account with eth-account. Prints signatures/s
and latency percentiles per c. The clients share this machine's cores with the
enclave, so the figures are a lower bound on what the enclave serves.

``measure(concurrency, seconds, accounts)`` returns the figures for the bench harness.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# bench/ is sys.path[0] when a bench script runs; mypy does not know it.
from enclave_sign_function import TRANSACTION  # type: ignore[import-not-found]
from eth_account import Account

from enclave_app import wire
from enclave_app.transport import Transport
from nitro_sim.stack import ENCLAVE_CID, ENCLAVE_PORT, LocalStack, free_port

MAX_CLIENT_PROCESSES = 4


def _connect(vsock_dir: str) -> socket.socket:
    return Transport.unix(vsock_dir).connect(ENCLAVE_CID, ENCLAVE_PORT, timeout=30)


def _call(sock: socket.socket, op: str, params: dict[str, Any]) -> dict[str, Any]:
    request_id = uuid.uuid4().hex
    wire.write_frame(sock, wire.request_frame(wire.Request(request_id, op, params)))
    body = wire.read_frame(sock)
    if body is None:
        raise ConnectionError("the enclave closed the connection")
    return wire.parse_response(body, request_id)


def _client_process(
    vsock_dir: str,
    frames: list[tuple[bytes, str]],
    connections: int,
    seconds: float,
    out: Any,
) -> None:
    """``connections`` threads, each on its own connection, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[str] = []
    start = threading.Barrier(connections)

    def run(index: int) -> None:
        frame, address = frames[index % len(frames)]
        sock = _connect(vsock_dir)
        try:
            sock.sendall(frame)
            first = wire.decode_object(wire.read_frame(sock) or b"{}")
            raw = first.get("result", {}).get("raw_transaction")
            if raw is None or Account.recover_transaction(raw) != address:
                errors.append(f"bad first answer: {first.get('error')}")
                return
            start.wait()
            deadline = time.perf_counter() + seconds
            mine = latencies[index]
            while True:
                sent = time.perf_counter()
                if sent >= deadline:
                    break
                sock.sendall(frame)
                body = wire.read_frame(sock)
                mine.append(time.perf_counter() - sent)
                if body is None or b'"ok":true' not in body:
                    errors.append((body or b"closed")[:200].decode(errors="replace"))
                    return
        except (OSError, threading.BrokenBarrierError) as exc:
            errors.append(type(exc).__name__)
        finally:
            sock.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put({"latencies": [x for per in latencies for x in per], "errors": errors})


def _frames(accounts: list[dict[str, Any]], credentials: dict[str, Any]) -> list[tuple[bytes, str]]:
    frames = []
    for account in accounts:
        body = wire.request_frame(
            wire.Request(
                "bench",
                "sign_transaction",
                {"account": account, "credentials": credentials, "transaction": TRANSACTION},
            )
        )
        frames.append((wire.HEADER.pack(len(body)) + body, str(account["address"])))
    return frames


def drive(
    vsock_dir: str, frames: list[tuple[bytes, str]], concurrency: int, seconds: float
) -> dict[str, Any]:
    processes = min(concurrency, MAX_CLIENT_PROCESSES)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [
        context.Process(
            target=_client_process,
            args=(vsock_dir, frames[i::processes] or frames, share, seconds, out),
        )
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(x for result in results for x in result["latencies"])
    errors = [e for result in results for e in result["errors"]]
    count = len(latencies)
    return {
        "concurrency": concurrency,
        "signatures_per_second": round(count / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[int(count * 0.99) - 1] * 1000, 3) if latencies else None,
        "signatures": count,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def measure(
    concurrency: list[int] | None = None, seconds: float = 5.0, accounts: int = 8
) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="nw-encbench-", dir="/tmp"))
    try:
        with LocalStack(root=root, relay_port=free_port()) as stack:
            role = next(p for p in stack.principals() if p.get("imds_role"))
            credentials = {
                "access_key_id": role["access_key_id"],
                "secret_access_key": role["secret_access_key"],
                "session_token": role.get("session_token"),
            }
            vsock_dir = str(stack.sim_dir / "vsock")
            with _connect(vsock_dir) as sock:
                records = [
                    _call(
                        sock,
                        "generate_account",
                        {
                            "account_id": str(uuid.uuid4()),
                            "key_id": stack.key_arn,
                            "credentials": credentials,
                        },
                    )
                    for _ in range(accounts)
                ]
            frames = _frames(records, credentials)
            return [drive(vsock_dir, frames, c, seconds) for c in concurrency or [1, 8, 32]]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.concurrency, args.seconds, args.accounts)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'c':>4} {'sig/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for row in rows:
            print(
                f"{row['concurrency']:>4} {row['signatures_per_second']:>9} "
                f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['error_count']:>7}"
            )
    return 0 if all(row["error_count"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
