"""100 concurrent cold unlocks (issue 9: "concurrent cold unlocks: 30 s hangs, most
likely the simulated vsock-proxy's 4 workers; the real vsock-proxy also defaults to 4").

Every signature needs the account's key from KMS (the enclave was restarted: its cache
is empty), all at once, through the vsock-proxy with as many workers as the enclave's
bounded KMS concurrency. Each must come back signed and verified, none slower than 5 s
on this project's machine (the issue's figure; a hang, not a speed target).

The 5 s bound holds because one RSA-2048 recipient key serves several KMS calls
(``kms.recipient_key_uses``); with a fresh key per call and a pool of 8, 92 of the 100
unlocks right after a restart generated one inline, and the slowest took 10 to 30 s on
2 cores (docs/reliability.md, "The KMS path under concurrency").
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from eth_account import Account

from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import create_account, eip1559

pytestmark = [pytest.mark.stack, pytest.mark.slow]

UNLOCKS = 100
BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def stack_options() -> dict[str, Any]:
    """Capacity for 100 clients at once: the relay admits them all and keeps them waiting
    for a pooled enclave connection (as many as the enclave's workers + queue) rather
    than refusing them (503 server_busy is the answer beyond capacity; the defaults admit
    64). This measures the cold KMS path, not admission."""
    return {
        "relay_settings": {
            "relay": {"max_concurrent_requests": 128},
            "enclave": {"pool_size": 80, "pool_wait_seconds": 30},
        }
    }


@pytest.fixture(scope="module")
def accounts(stack: LocalStack) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: create_account(stack), range(UNLOCKS)))
    assert stack.measurements is not None
    stack.run_enclave(stack.measurements.eif)  # an empty key cache: every unlock is cold
    return made


Burst = list[tuple[int, float, dict[str, Any]]]


@pytest.fixture(scope="module")
def burst(stack: LocalStack, accounts: list[dict[str, Any]]) -> Burst:
    """All 100 signatures at once: (status, seconds, body) per account, in order."""
    start = threading.Barrier(UNLOCKS)

    def sign(account: dict[str, Any]) -> tuple[int, float, dict[str, Any]]:
        start.wait()
        began = time.monotonic()
        try:
            status, body = http_json(
                "POST",
                f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
                {"transaction": eip1559()},
            )
        except OSError as exc:  # a reset or a refused connection: no HTTP answer at all
            status, body = 0, {"error": {"code": type(exc).__name__}}
        return status, time.monotonic() - began, body

    with ThreadPoolExecutor(UNLOCKS) as pool:
        results = list(pool.map(sign, accounts))
    codes = Counter(
        f"{status} {body.get('error', {}).get('code', '')}" for status, _, body in results
    )
    times = sorted((took for _, took, _ in results), reverse=True)
    over = sum(took >= BOUND_SECONDS for took in times)
    print(
        f"\n{UNLOCKS} cold unlocks: {dict(codes)}, {over} over {BOUND_SECONDS:.0f}s, "
        f"slowest {', '.join(f'{took:.2f}' for took in times[:5])} s, median {times[50]:.2f} s"
    )
    return results


def test_100_concurrent_cold_unlocks_all_sign(accounts: list[dict[str, Any]], burst: Burst) -> None:
    statuses = sorted({status for status, _, _ in burst})
    assert statuses == [200], [body for status, _, body in burst if status != 200][:3]
    for account, (_, _, body) in zip(accounts, burst, strict=True):
        assert Account.recover_transaction(body["raw_transaction"]) == account["address"]


def test_no_cold_unlock_takes_over_5_seconds(burst: Burst) -> None:
    assert max(took for _, took, _ in burst) < BOUND_SECONDS
