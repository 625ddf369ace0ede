"""Signing latency through the whole simulated appliance: warm (key cached in the
enclave) against cold (the enclave unlocks the key through attested KMS Decrypt).

    .venv/bin/python bench/bench_signing.py [--rounds 30]

Prints medians and the cold/warm ratio. Figures from shared machines are noisy:
compare the ratio within one run, not absolute numbers across runs. Speed targets
live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nitro_sim.stack import LocalStack, http_json

TX = {
    "type": "0x2",
    "chainId": "0xaa36a7",
    "nonce": "0x0",
    "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "value": "0x1",
    "gas": "0x5208",
    "maxFeePerGas": "0x77359400",
    "maxPriorityFeePerGas": "0x3b9aca00",
}
# Targets (ratios, so they hold on any machine): a warm signature must be much cheaper
# than a cold one, since it makes no KMS call and no RSA key generation.
TARGET_COLD_OVER_WARM = 3.0


def sign_ms(stack: LocalStack, account_id: str) -> float:
    started = time.perf_counter()
    status, body = http_json(
        "POST",
        f"{stack.relay_url}/v1/accounts/{account_id}/sign/transaction",
        {"transaction": TX},
    )
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"signing failed: {status} {body}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nw-bench-", dir="/tmp"))
    try:
        with LocalStack(root=root) as stack:
            assert stack.measurements is not None
            accounts = []
            for _ in range(args.rounds):
                status, account = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
                assert status == 201
                accounts.append(account["account_id"])
            # Restart the enclave: its cache is empty, every first signature is cold.
            stack.run_enclave(stack.measurements.eif)
            cold = [sign_ms(stack, account_id) for account_id in accounts]
            warm = [sign_ms(stack, account_id) for account_id in accounts]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cold_median, warm_median = statistics.median(cold), statistics.median(warm)
    ratio = cold_median / warm_median
    print(f"rounds {args.rounds}")
    print(f"cold sign (attested KMS Decrypt)  median {cold_median:7.1f} ms")
    print(f"warm sign (cached key)            median {warm_median:7.1f} ms")
    print(f"cold / warm                       {ratio:7.1f}x (target >= {TARGET_COLD_OVER_WARM}x)")
    return 0 if ratio >= TARGET_COLD_OVER_WARM else 1


if __name__ == "__main__":
    sys.exit(main())
