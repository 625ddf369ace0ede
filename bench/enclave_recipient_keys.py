"""Does refilling the RSA recipient-key pool starve request workers?

    .venv/bin/python bench/enclave_recipient_keys.py [--rounds 6] [--seconds 1.5] [--json]

1. The GIL: pinned to one CPU, a pure-Python thread counts while this thread
   generates RSA-2048 keys. If generation held the GIL, the counter would stand still
   during each generation (share near 0); released, the two share the CPU through
   the OS scheduler (share near 0.5). ``gil_share`` is the counter's rate during
   generation over its rate alone.
2. The cost to workers: the warm sign function's throughput in this thread, in
   interleaved rounds with the pool's refiller idle (pool full) and generating
   non-stop (pool drained as fast as it fills), on every CPU the process may use.
   With a spare CPU the ratio should stay near 1; ``longest stall`` is the longest
   gap between two signatures while refilling.

``measure()`` returns the figures for the bench harness.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

# bench/ is sys.path[0] when a bench script runs; mypy does not know it.
from enclave_sign_function import PRIVATE_KEY, TRANSACTION  # type: ignore[import-not-found]

from enclave_app.recipient_keys import RecipientKeyPool, generate_recipient_key
from enclave_app.signing import SigningKey, parse_transaction, sign_transaction


def _signing_rate(key: SigningKey, seconds: float) -> tuple[float, float]:
    """(signatures per second, longest gap between two signatures in ms)."""
    count = 0
    worst = 0.0
    last = time.perf_counter()
    deadline = last + seconds
    while last < deadline:
        sign_transaction(key, parse_transaction(TRANSACTION))
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
        count += 1
    return count / seconds, worst * 1000


def _rounds(
    key: SigningKey, pool: RecipientKeyPool, rounds: int, seconds: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Alternate rounds with the refiller idle (pool full) and busy (pool drained)."""
    draining = threading.Event()
    stop = threading.Event()

    def drain() -> None:  # takes only ready keys: an empty pool would generate here
        while not stop.is_set():
            if draining.wait(0.05) and pool.ready():
                pool.take()
            else:
                time.sleep(0.002)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    idle, busy = [], []
    try:
        for _ in range(rounds):
            draining.clear()
            pool.wait_full(timeout=30)
            time.sleep(0.1)  # let a take() in flight finish
            idle.append(_signing_rate(key, seconds))
            draining.set()
            busy.append(_signing_rate(key, seconds))
    finally:
        stop.set()
        draining.set()
        drainer.join(timeout=10)
    return idle, busy


def _gil_share(keys: int = 5) -> tuple[float, float]:
    """(counter rate during generation / rate alone, median generation ms), one CPU."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    stamps: list[float] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    try:
        time.sleep(0.3)
        alone_start = time.perf_counter()
        time.sleep(0.3)  # the counter runs alone (this thread sleeps)
        alone_end = time.perf_counter()
        windows = []
        for _ in range(keys):
            started = time.perf_counter()
            generate_recipient_key()
            windows.append((started, time.perf_counter()))
    finally:
        stop.set()
        counter.join()
        os.sched_setaffinity(0, cpus)
    alone_rate = sum(alone_start < t < alone_end for t in stamps) / (alone_end - alone_start)
    during = sum(sum(a < t < b for t in stamps) for a, b in windows)
    busy_time = sum(b - a for a, b in windows)
    return during / busy_time / alone_rate, statistics.median(b - a for a, b in windows) * 1000


def measure(rounds: int = 6, seconds: float = 1.5) -> dict[str, Any]:
    share, keygen_ms = _gil_share()
    key = SigningKey(PRIVATE_KEY)
    pool = RecipientKeyPool(1).start()
    try:
        idle, busy = _rounds(key, pool, rounds, seconds)
    finally:
        pool.close()
    idle_rate = statistics.median(rate for rate, _ in idle)
    busy_rate = statistics.median(rate for rate, _ in busy)
    return {
        "rsa_keygen_ms_one_cpu": round(keygen_ms, 1),
        "gil_share": round(share, 3),
        "gil_released": share > 0.2,
        "cpus": len(os.sched_getaffinity(0)),
        "sign_per_second_idle": round(idle_rate),
        "sign_per_second_refilling": round(busy_rate),
        "refilling_over_idle": round(busy_rate / idle_rate, 3),
        "longest_stall_ms": round(max(gap for _, gap in busy), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"RSA-2048 generation, one CPU shared  {figures['rsa_keygen_ms_one_cpu']:8} ms")
    print(
        f"GIL share during generation          {figures['gil_share']:8} (0: held, ~0.5: released)"
    )
    print(f"signatures/s, refiller idle          {figures['sign_per_second_idle']:8}")
    print(f"signatures/s, refiller generating    {figures['sign_per_second_refilling']:8}")
    print(f"refilling / idle ({figures['cpus']} CPUs)           {figures['refilling_over_idle']:8}")
    print(f"longest stall while refilling        {figures['longest_stall_ms']:8} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
