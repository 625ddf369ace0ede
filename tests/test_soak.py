"""``make soak`` (not in CI): 32 clients for 120 s, then the fault set under the same
load. 0 problems (every 200 a verified signature, every refusal a typed 503 during a
fault), and the relay's and the enclave's RSS flat within 10% over the steady run.

    make soak                       # NITRO_WALLET_SOAK=1, 120 s
    NITRO_WALLET_SOAK=1 NITRO_WALLET_SOAK_SECONDS=30 .venv/bin/pytest -s tests/test_soak.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nitro_sim.stack import LocalStack
from tests.load import Load, fault_set, run_fault, warm_accounts

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("NITRO_WALLET_SOAK") != "1", reason="the soak runs with make soak only"
    ),
]

CLIENTS = 32
SECONDS = float(os.environ.get("NITRO_WALLET_SOAK_SECONDS", "120"))
WARM_UP_SECONDS = min(20.0, SECONDS / 4)
RSS_DRIFT = 0.10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def pids(stack: LocalStack) -> dict[str, int]:
    record = stack.enclave_record()
    relay = stack.services["relay"].pid
    assert record is not None
    assert relay is not None
    return {"relay": relay, "enclave": int(record["EnclaveProcessID"])}


def test_32_clients_for_the_soak_then_the_fault_set(stack: LocalStack) -> None:
    accounts = warm_accounts(stack, CLIENTS)
    load = Load(stack, accounts, CLIENTS).start()
    try:
        time.sleep(WARM_UP_SECONDS)
        watched = pids(stack)
        before = {name: rss_kib(pid) for name, pid in watched.items()}
        time.sleep(SECONDS - WARM_UP_SECONDS)
        after = {name: rss_kib(pid) for name, pid in watched.items()}
        assert pids(stack) == watched, "a process restarted during the steady run"
    finally:
        load.stop()
    steady = dict(load.answers)
    assert load.problems == [], load.problems[:3]
    assert set(steady) <= {"200", "201"}, steady  # no fault: no refusal at all
    for name in watched:
        drift = (after[name] - before[name]) / before[name]
        print(f"{name} RSS {before[name]} KiB -> {after[name]} KiB ({drift:+.1%})")
        assert abs(drift) <= RSS_DRIFT, f"{name} RSS drifted {drift:+.1%}"
    print(f"steady {SECONDS:.0f}s with {CLIENTS} clients: {steady}")
    for name, fault in fault_set(stack).items():
        faulted = run_fault(Load(stack, accounts, CLIENTS), fault)
        print(f"{name}: {dict(faulted.answers)}")
