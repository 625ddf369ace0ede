"""The enclave's sign function against eth-account and against the libsecp256k1 floor.

    .venv/bin/python bench/enclave_sign_function.py [--rounds 7] [--number 2000] [--json]

What is timed, in one process, interleaved round by round:
- ours: ``parse_transaction`` on the JSON fields of an EIP-1559 transaction, then
  ``sign_transaction`` with a cached ``SigningKey`` (what a warm enclave request runs,
  from parsed JSON to raw bytes);
- eth-account: ``Account.sign_transaction`` on the same transaction (coincurve
  backend, as eth-keys picks it when coincurve is installed);
- the floor: libsecp256k1 signing a 32-byte digest with a reused key object
  (``coincurve.PrivateKey.sign_recoverable``), the cost no implementation avoids.
The raw bytes of ours and eth-account's are checked identical first. Figures are
medians over rounds of the mean per call; compare ratios, not absolute numbers.

``measure()`` returns the figures for the bench harness (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from eth_account import Account

from enclave_app.signing import SigningKey, parse_transaction, sign_transaction

TARGET_RATIO_VS_ETH_ACCOUNT = 8.0
PRIVATE_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
TRANSACTION: dict[str, Any] = {
    "type": "0x2",
    "chainId": "0xaa36a7",
    "nonce": "0x7",
    "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "value": "0xde0b6b3a7640000",
    "gas": "0x5208",
    "maxFeePerGas": "0x77359400",
    "maxPriorityFeePerGas": "0x3b9aca00",
    "data": "0x",
}


def _oracle_form(tx: dict[str, Any]) -> dict[str, Any]:
    return {key: value if key in ("to", "data") else int(value, 16) for key, value in tx.items()}


def _per_call_us(function: Callable[[], object], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        function()
    return (time.perf_counter() - started) / number * 1e6


def measure(rounds: int = 7, number: int = 2000) -> dict[str, Any]:
    key = SigningKey(PRIVATE_KEY)
    oracle_tx = _oracle_form(TRANSACTION)
    floor_key = key._key
    digest = bytes(range(32))

    def ours() -> bytes:
        return sign_transaction(key, parse_transaction(TRANSACTION)).raw

    def eth_account() -> bytes:
        return bytes(Account.sign_transaction(oracle_tx, PRIVATE_KEY).raw_transaction)

    def floor() -> bytes:
        return floor_key.sign_recoverable(digest, hasher=None)

    if ours() != eth_account():
        raise SystemExit("the enclave and eth-account disagree: not byte-identical")
    candidates = {"ours": ours, "eth_account": eth_account, "floor": floor}
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(1, number // 10)):  # warm up
        for function in candidates.values():
            function()
    for round_index in range(rounds):
        names = list(candidates)
        names = names[round_index % 3 :] + names[: round_index % 3]  # rotate the order
        for name in names:
            samples[name].append(_per_call_us(candidates[name], number))
    ours_us = statistics.median(samples["ours"])
    eth_us = statistics.median(samples["eth_account"])
    floor_us = statistics.median(samples["floor"])
    ratio = eth_us / ours_us
    return {
        "ours_us": round(ours_us, 2),
        "eth_account_us": round(eth_us, 2),
        "floor_us": round(floor_us, 2),
        "ratio_vs_eth_account": round(ratio, 2),
        "floor_ratio_vs_eth_account": round(eth_us / floor_us, 2),
        "ours_over_floor": round(ours_us / floor_us, 2),
        "target_ratio_vs_eth_account": TARGET_RATIO_VS_ETH_ACCOUNT,
        "pass": ratio >= TARGET_RATIO_VS_ETH_ACCOUNT,
        "rounds": rounds,
        "number": number,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.rounds, args.number)
    if args.json:
        print(json.dumps(figures))
        return 0 if figures["pass"] else 1
    print(f"enclave sign function (EIP-1559, JSON -> raw)  {figures['ours_us']:8.1f} us")
    print(f"eth-account Account.sign_transaction           {figures['eth_account_us']:8.1f} us")
    print(f"libsecp256k1 floor (reused key, 32-byte hash)  {figures['floor_us']:8.1f} us")
    print(
        f"ratio vs eth-account  {figures['ratio_vs_eth_account']:5.2f}x "
        f"(target >= {TARGET_RATIO_VS_ETH_ACCOUNT}x)"
    )
    print(f"floor vs eth-account  {figures['floor_ratio_vs_eth_account']:5.2f}x")
    print(f"ours / floor          {figures['ours_over_floor']:5.2f}")
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
