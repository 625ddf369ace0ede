"""CPU per audit receipt on both sides of its collection: the enclave's ``pull`` (the
``audit_receipts`` op building log lines) and the relay's check of each line before it
writes it (``parent_app.audit_log._continues``: parse, canonical form, chain link, hash).

    .venv/bin/python bench/audit_receipt_cpu.py [--receipts 500]

One frame of decisions as a ``sign_batch`` records them (the relay's identity, a
transaction hash each), pulled and checked in full; best of 7 runs. To compare trees,
run it with each tree's packages first on the path, e.g. from /tmp:
``PYTHONPATH=/work/main .venv/bin/python /path/to/bench/audit_receipt_cpu.py``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_app.auth.receipts import AuditDecision, ReceiptChain
from parent_app import audit_log

RUNS = 7


def measure(receipts: int) -> dict[str, float]:
    chain = ReceiptChain(Ed25519PrivateKey.generate(), secrets.token_bytes(16), b"")
    with chain.reserve(receipts) as frame:
        for _ in range(receipts):
            frame.record(
                AuditDecision(
                    op="sign_transaction",
                    allowed=True,
                    rule="dev-everything",
                    principal="relay:dev",
                    account_id="6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f",
                    address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                    result="0x" + secrets.token_hex(32),
                )
            )
    pull_us = check_us = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        lines: list[str] = chain.pull(None, receipts + 1)["receipts"]
        pull_us = min(pull_us, (time.perf_counter() - started) / len(lines) * 1e6)
        started = time.perf_counter()
        last: dict[str, Any] | None = None
        for line in lines:
            last = audit_log._continues(last, line)
        check_us = min(check_us, (time.perf_counter() - started) / len(lines) * 1e6)
    return {"enclave_pull_us": round(pull_us, 2), "relay_check_us": round(check_us, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=500)
    args = parser.parse_args()
    figures = measure(min(args.receipts, 999))
    print(
        f"enclave pull {figures['enclave_pull_us']:.2f} us/receipt; "
        f"relay check {figures['relay_check_us']:.2f} us/receipt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
