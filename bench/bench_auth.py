"""Cost of authentication and audit per decision, against the signature it guards.

    .venv/bin/python bench/bench_auth.py [--rounds 5] [--frame 100]

Measured in-process, interleaved round by round (medians of per-round means):

- ``sign``: one secp256k1 signature of a 32-byte digest (the enclave's signing core);
- ``receipt/frame``: recording one decision in a frame of ``--frame`` decisions sealed
  once (what the enclave does), per decision;
- ``receipt/each``: the alternative of sealing every decision (one Ed25519 signature each);
- ``stamp``: verifying one Ed25519 stamp over a REST body, plus matching the op to it.

The receipt cost is reported as a share of ``sign``: the batch path's budget is about
66 µs per signature all-in, so per-frame sealing must keep receipts a small fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from coincurve import PrivateKey
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.authenticate import Authenticator
from enclave_app.auth.intents import OpItem
from enclave_app.auth.receipts import AuditDecision, ReceiptChain
from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from nitro_wallet.stamping import KeyFile, make_stamp

ID = "6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f"
ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
TX = {
    "type": "0x2",
    "chainId": 1,
    "nonce": 0,
    "to": ADDRESS,
    "value": "0x1",
    "gas": 21000,
    "maxFeePerGas": "0x77359400",
    "maxPriorityFeePerGas": "0x3b9aca00",
}


class Entry:
    def __init__(self, key: KeyFile) -> None:
        self.public_key = key.private_key.public_key()
        self.scopes = frozenset({"sign"})


REQUEST_DIGEST = os.urandom(32)


def decision() -> AuditDecision:
    """An allowed signature: it carries the request digest (computed by the stamp check)
    and the transaction hash; a payload digest is only computed for denials."""
    return AuditDecision(
        op="sign_transaction",
        allowed=True,
        rule="small-transfers",
        principal="stamp:ops-1",
        account_id=ID,
        address=ADDRESS,
        request_digest=REQUEST_DIGEST,
        result="0x" + "ab" * 32,
    )


def per_call_us(run: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frame", type=int, default=100)
    args = parser.parse_args()
    frame = args.frame
    chain = ReceiptChain(
        ed25519.Ed25519PrivateKey.generate(), os.urandom(16), b"doc", capacity=10_000_000
    )
    signer = PrivateKey()
    digest = os.urandom(32)
    key = KeyFile("ops-1", "api", ed25519.Ed25519PrivateKey.generate())
    path = f"/v1/accounts/{ID}/sign/transaction"
    body = json.dumps({"transaction": TX}).encode()
    auth = Authenticator(
        StampVerifier(ReplayMemory(10_000_000)), ApprovalVerifier(ReplayMemory(16))
    )
    item = (OpItem("sign_transaction", ID, ADDRESS, TX),)

    def sign() -> None:
        for _ in range(frame):
            signer.sign_recoverable(digest, hasher=None)

    def receipts_per_frame() -> None:
        with chain.reserve(frame) as reservation:
            for _ in range(frame):
                reservation.record(decision())

    def receipts_each() -> None:
        for _ in range(frame):
            with chain.reserve(1) as reservation:
                reservation.record(decision())

    stamps = [make_stamp(key, "POST", path, body) for _ in range(frame * args.rounds * 2)]

    def stamp() -> None:
        for _ in range(frame):
            params = {
                "request": {"method": "POST", "path": path, "body": body.decode()},
                "stamp": stamps.pop(),
            }
            auth.authenticate(params, item, stamp_keys={"ops-1": Entry(key)}, approvers={})

    results: dict[str, list[float]] = {
        "sign": [],
        "receipt/frame": [],
        "receipt/each": [],
        "stamp": [],
    }
    for _ in range(args.rounds):
        results["sign"].append(per_call_us(sign, frame))
        results["receipt/frame"].append(per_call_us(receipts_per_frame, frame))
        results["receipt/each"].append(per_call_us(receipts_each, frame))
        results["stamp"].append(per_call_us(stamp, frame))
        sealed = chain.pull(None, 1)["sealed"]  # acknowledge all: keep the ring small
        chain.pull({"seg": chain.segment.hex(), "n": sealed, "hash": "00" * 32}, 1)
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:15s} {value:8.1f} µs per decision")
    print(
        f"receipt/frame is {medians['receipt/frame'] / medians['sign']:.0%} of a signature; "
        f"receipt/each is {medians['receipt/each'] / medians['sign']:.0%}"
    )


if __name__ == "__main__":
    main()
