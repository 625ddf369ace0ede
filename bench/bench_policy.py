"""Cost of the signing policy per request, next to the signature it guards.

    .venv/bin/python bench/bench_policy.py [--rounds 20000]

Uses docs/examples/policy.yaml (8 rules, 2 limits) and three requests: an ERC-20
transfer allowed by the 4th rule in evaluation order, a transaction no rule allows
(every rule looked at), and a full authorize + commit with the velocity limits. Each is
timed interleaved with one secp256k1 signature of the same transaction (what the
enclave does next), so the ratio holds on any machine. A batch of 100 items pays this
per item. Speed targets live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from enclave_app.policy import (
    AccountFacts,
    Op,
    PolicyEngine,
    Principal,
    PrincipalKind,
    Request,
    Scope,
    evaluate,
)
from enclave_app.signing import generate_private_key, parse_transaction, sign_transaction
from nitro_wallet.policy import compile_policy_text

ROOT = Path(__file__).resolve().parent.parent
USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
EXCHANGE = "28c6c06298d514db089934071355e5743bf21d60"
# The policy must cost far less than the signature it guards.
TARGET_SIGNATURE_OVER_POLICY = 5.0


def _tx(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": 2,
        "chainId": 1,
        "nonce": 0,
        "to": USDC,
        "value": 0,
        "gas": 60000,
        "maxFeePerGas": 30 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "data": "0xa9059cbb" + "00" * 12 + EXCHANGE + f"{5_000_000:064x}",
    }
    base.update(fields)
    return base


def _median_us(
    run: Callable[[], object], reference: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """Median microseconds of ``run`` and of ``reference``, interleaved."""
    ours, theirs = [], []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        run()
        middle = time.perf_counter_ns()
        reference()
        ours.append(middle - started)
        theirs.append(time.perf_counter_ns() - middle)
    return statistics.median(ours) / 1000, statistics.median(theirs) / 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    policy = compile_policy_text((ROOT / "docs" / "examples" / "policy.yaml").read_text()).policy
    bot = Principal(PrincipalKind.RELAY, "trading-bot", frozenset({Scope.SIGN}))
    hot = AccountFacts("6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a", bytes(20), frozenset({"hot"}))
    allowed = Request(Op.SIGN_TRANSACTION, bot, hot, parse_transaction(_tx()))
    refused = Request(Op.SIGN_TRANSACTION, bot, hot, parse_transaction(_tx(chainId=5)))
    assert evaluate(policy, allowed).rule == "bot-usdc-to-exchange"
    assert evaluate(policy, refused).rule == "default-deny"
    clock = [0.0]
    engine = PolicyEngine(policy, lambda: clock[0])
    clock[0] = 10**7  # past the boot window of every limit
    key = generate_private_key()
    tx = allowed.payload

    def authorize() -> None:
        with engine.authorize(allowed) as permit:
            permit.commit()
        clock[0] += 20  # stay under the bot's 200 signatures an hour

    def sign() -> object:
        return sign_transaction(key, tx)  # type: ignore[arg-type]

    worst = 0.0
    for name, run in (
        ("evaluate, allowed by rule 4", lambda: evaluate(policy, allowed)),
        ("evaluate, default-deny", lambda: evaluate(policy, refused)),
        ("authorize + commit (2 limits)", authorize),
    ):
        policy_us, sign_us = _median_us(run, sign, args.rounds)
        ratio = sign_us / policy_us
        worst = max(worst, policy_us / sign_us)
        print(f"{name:32s} {policy_us:8.2f} us   signature {sign_us:8.2f} us   ratio {ratio:5.1f}")
    print(f"target: a signature costs at least {TARGET_SIGNATURE_OVER_POLICY}x the policy")
    return 0 if 1 / worst >= TARGET_SIGNATURE_OVER_POLICY else 1


if __name__ == "__main__":
    raise SystemExit(main())
