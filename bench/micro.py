"""The eth-account baseline, measured in-process right before and after each HTTP load
run (``bench.run``), so every ratio compares figures taken under the same conditions.

The baseline is ``Account.sign_transaction`` on eth-account's coincurve backend (a plain
``pip install eth-account`` without coincurve signs ~10x slower: never compare against
that). The sign function and the libsecp256k1 floor are measured, interleaved with the
same baseline, by ``bench/enclave_sign_function.py``.
"""

from __future__ import annotations

import time

import eth_keys.backends
from eth_account import Account

from bench.enclave_sign_function import PRIVATE_KEY, TRANSACTION

#: The transaction every HTTP row signs (nonces vary), in the relay's JSON form.
EIP1559_TX = TRANSACTION


def backend_name() -> str:
    return type(eth_keys.backends.get_backend()).__name__


def baseline_rate(seconds: float) -> float:
    """eth-account signatures per second over about ``seconds``."""
    oracle = {k: v if k in ("to", "data") else int(v, 16) for k, v in TRANSACTION.items()}
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):
            Account.sign_transaction(oracle, PRIVATE_KEY)
        done += 20
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)
