"""Audit logs written by real receipt chains on the simulated NSM, for the audit tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from enclave_app.auth import receipt_format as fmt
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.auth.receipts import AuditDecision, ReceiptChain
from enclave_app.nsm import SocketNsm
from nitro_sim.ca import SimCa
from nitro_sim.nsm import SimulatedNsm
from tests.simhelpers import make_ca

PCR0 = bytes(range(48))


@dataclass(frozen=True)
class SimEnclaveNsm:
    """The simulator's CA and an NSM client of a simulated enclave with PCR0 ``PCR0``."""

    ca: SimCa
    client: SocketNsm


def serve_nsm(factory: pytest.TempPathFactory) -> Iterator[SimEnclaveNsm]:
    """Body of a module-scoped fixture: a CA and a served simulated NSM."""
    ca = make_ca(factory.mktemp("ca"))
    directory = factory.mktemp("nsm")
    with SimulatedNsm(ca, {0: PCR0}, "i-0sim-enc0audit").serve(directory / "nsm.sock"):
        yield SimEnclaveNsm(ca, SocketNsm(directory / "nsm.sock"))


def boot(sim: SimEnclaveNsm, capacity: int = 1024) -> ReceiptChain:
    """A new enclave boot: a new receipt segment on the simulated NSM."""
    return ReceiptChain.boot(sim.client, MixedEntropy(sim.client.get_random), capacity)


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
