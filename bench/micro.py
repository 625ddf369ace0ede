"""In-process signing rates, interleaved: the baseline, the enclave's sign function
and the libsecp256k1 floor, measured round by round so the ratios share the machine's
conditions.

- baseline: eth-account ``Account.sign_transaction`` on its coincurve backend (a plain
  ``pip install eth-account`` without coincurve signs ~10x slower: never compare
  against that);
- the enclave's sign function: ``parse_transaction`` (every field validated) then
  ``sign_transaction`` with the cached key, as the enclave runs them for a warm key;
- the floor: libsecp256k1 signing a 32-byte hash with a reused key object.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coincurve
import eth_keys.backends
from eth_account import Account

from enclave_app.signing import keys as signing_keys
from enclave_app.signing import transactions

SECRET = hashlib.sha256(b"nitro-wallet bench key").digest()
EIP1559_TX: dict[str, Any] = {
    "type": "0x2",
    "chainId": "0xaa36a7",
    "nonce": "0x7",
    "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "value": "0xde0b6b3a7640000",
    "gas": "0x5208",
    "maxFeePerGas": "0x77359400",
    "maxPriorityFeePerGas": "0x3b9aca00",
    "data": "0x",
    "accessList": [],
}


@dataclass(frozen=True)
class MicroRates:
    eth_account_per_s: float
    enclave_sign_per_s: float
    floor_per_s: float
    byte_identical: bool
    backend: str
    rounds: int

    @property
    def enclave_ratio(self) -> float:
        return self.enclave_sign_per_s / self.eth_account_per_s

    @property
    def floor_ratio(self) -> float:
        return self.floor_per_s / self.eth_account_per_s


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``operation`` over about ``seconds``."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            operation()
        done += 50
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


def eth_account_signer() -> Callable[[], bytes]:
    def sign() -> bytes:
        return bytes(Account.sign_transaction(EIP1559_TX, SECRET).raw_transaction)

    return sign


def cached_key() -> Any:
    """What the enclave's key cache holds for a warm account: the prepared key object
    when the enclave has one (``SigningKey``), else the 32 secret bytes."""
    factory = getattr(signing_keys, "SigningKey", None)
    return SECRET if factory is None else factory(SECRET)


def enclave_signer() -> Callable[[], bytes]:
    key = cached_key()

    def sign() -> bytes:
        parsed = transactions.parse_transaction(EIP1559_TX)
        return bytes(transactions.sign_transaction(key, parsed).raw)

    return sign


def floor_signer() -> Callable[[], bytes]:
    key = coincurve.PrivateKey(SECRET)
    digest = hashlib.sha256(b"a 32-byte message hash").digest()

    def sign() -> bytes:
        return bytes(key.sign_recoverable(digest, hasher=None))

    return sign


def baseline_rate(seconds: float) -> float:
    """The eth-account baseline alone (between load runs)."""
    return rate(eth_account_signer(), seconds)


def measure(rounds: int, seconds: float) -> MicroRates:
    signers = {
        "eth": eth_account_signer(),
        "enclave": enclave_signer(),
        "floor": floor_signer(),
    }
    identical = signers["eth"]() == signers["enclave"]()
    samples: dict[str, list[float]] = {name: [] for name in signers}
    for _ in range(rounds):
        for name, signer in signers.items():
            samples[name].append(rate(signer, seconds))
    return MicroRates(
        eth_account_per_s=statistics.median(samples["eth"]),
        enclave_sign_per_s=statistics.median(samples["enclave"]),
        floor_per_s=statistics.median(samples["floor"]),
        byte_identical=identical,
        backend=type(eth_keys.backends.get_backend()).__name__,
        rounds=rounds,
    )
