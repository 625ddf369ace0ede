"""100 concurrent cold unlocks (issue 9: "concurrent cold unlocks: 30 s hangs, most
likely the simulated vsock-proxy's 4 workers; the real vsock-proxy also defaults to 4").

Every signature needs the account's key from KMS (the enclave was restarted: its cache
is empty), all at once, through the vsock-proxy with as many workers as the enclave's
bounded KMS concurrency. Each must come back signed and verified, none slower than 5 s
on this project's machine (the issue's figure; a hang, not a speed target).
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
def accounts(stack: LocalStack) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: create_account(stack), range(UNLOCKS)))
    assert stack.measurements is not None
    stack.run_enclave(stack.measurements.eif)  # an empty key cache: every unlock is cold
    return made


@pytest.mark.xfail(
    strict=True,
    reason="until issue 7 lands: the relay's listen backlog resets connections and the "
    "enclave answers 500 at its connection limit (docs/reliability.md); remove then",
)
def test_100_concurrent_cold_unlocks_all_sign_and_none_hangs(
    stack: LocalStack, accounts: list[dict[str, Any]]
) -> None:
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
    statuses = sorted({status for status, _, _ in results})
    slowest = max(took for _, took, _ in results)
    codes = Counter(
        f"{status} {body.get('error', {}).get('code', '')}" for status, _, body in results
    )
    print(f"{UNLOCKS} cold unlocks: {dict(codes)}, slowest {slowest:.2f}s")
    assert statuses == [200], [body for status, _, body in results if status != 200][:3]
    for account, (_, _, body) in zip(accounts, results, strict=True):
        assert Account.recover_transaction(body["raw_transaction"]) == account["address"]
    assert slowest < BOUND_SECONDS
