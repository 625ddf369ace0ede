"""Audit logs written by real receipt chains on the simulated NSM, for the audit tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enclave_app.auth import receipt_format as fmt
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.auth.receipts import AuditDecision, ReceiptChain
from enclave_app.nsm import SocketNsm
from nitro_sim.ca import SimCa
from nitro_sim.nsm import SimulatedNsm

PCR0 = bytes(range(48))


@contextmanager
def nsm_socket(ca: SimCa, directory: Path) -> Iterator[SocketNsm]:
    sim = SimulatedNsm(ca, {0: PCR0}, "i-0sim-enc0audit")
    with sim.serve(directory / "nsm.sock"):
        yield SocketNsm(directory / "nsm.sock")


def boot(nsm: SocketNsm, capacity: int = 1024) -> ReceiptChain:
    return ReceiptChain.boot(nsm, MixedEntropy(nsm.get_random), capacity)


def decide(chain: ReceiptChain, count: int, *, allowed: bool = True) -> None:
    """One frame of ``count`` decisions (one seal)."""
    with chain.reserve(count) as frame:
        for index in range(count):
            frame.record(
                AuditDecision(
                    op="sign_transaction",
                    allowed=allowed,
                    rule="small-transfers" if allowed else "default-deny",
                    code=None if allowed else "policy_denied",
                    principal="stamp:ops-1",
                    approvers=frozenset({"alice"}),
                    account_id="6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f",
                    address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                    request_digest=bytes([index]) * 32,
                    payload_digest=fmt.payload_digest("sign_transaction", {"nonce": index}),
                    result="0x" + "ab" * 32 if allowed else None,
                )
            )


def last_ref(lines: list[str]) -> dict[str, Any] | None:
    if not lines:
        return None
    receipt = json.loads(lines[-1])["receipt"]
    return {"seg": receipt["seg"], "n": receipt["n"], "hash": fmt.receipt_hash(receipt).hex()}


def collect(chain: ReceiptChain, lines: list[str], limit: int = 1000) -> None:
    """Pull everything sealed, as the relay's writer does, appending to ``lines``."""
    while True:
        answer = chain.pull(last_ref(lines), limit)
        if not answer["receipts"]:
            return
        lines.extend(answer["receipts"])


def raw(lines: list[str]) -> list[bytes]:
    return [line.encode("ascii") for line in lines]
