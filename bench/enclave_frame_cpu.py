"""CPU time per frame of the enclave's warm signing path, in-process, socket I/O left out.

    .venv/bin/python -m bench.enclave_frame_cpu [--rounds 3] [--frames 3000]
        [--compare /path/to/another/checkout] [--json]

Builds the enclave's objects as ``enclave_app.__main__`` does (ops, gate with a signing
policy, relay-identity authentication, the receipt chain, the vault and key cache) with
one warm account (its key object put in the cache under its record's cache key, as a
warm unlock leaves it: no KMS), then runs the enclave server's path for a frame (parse,
the inline check where the tree has one, the op, the answer frame) on the frames the
relay sends:
``sign_transaction`` (EIP-1559) and a ``sign_batch`` of 50. Every 20 frames it pulls
and acknowledges the sealed receipts as the relay's audit log writer does, so the
receipts' whole life (record, seal, pull) is in the figure. Prints CPU microseconds per
frame (``time.process_time``), which hold on a shared machine where rates do not.

``--compare DIR`` runs the same measurement with another checkout's ``enclave_app``
(same interpreter), each round in a fresh process per tree, alternating: a before/after
comparison measured in one run. The relay's share and the socket hops are
``bench/relay_cpu.py``'s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.enclave_sign_function import TRANSACTION
from enclave_app import wire
from enclave_app.accounts import AccountVault
from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.authenticate import Authenticator
from enclave_app.auth.receipt_format import receipt_hash
from enclave_app.auth.receipts import ReceiptChain
from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from enclave_app.gate import Gate
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AttestedKms
from enclave_app.ops import Operations
from enclave_app.policy import PolicyEngine, parse_policy
from enclave_app.signing.keys import SigningKey, generate_private_key

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "arn:aws:kms:us-east-1:111122223333:key/0d3c2b1a-0000-4000-8000-000000000001"
PRINCIPAL = "bench"
POLICY: dict[str, Any] = {
    "version": 1,
    "principals": {"relay_identities": [{"id": PRINCIPAL, "scopes": ["sign"]}]},
    "rules": [
        {
            "name": "bench-transactions",
            "effect": "allow",
            "principals": {"relay_identities": [PRINCIPAL]},
            "accounts": "all",
            "condition": {"transaction": {}},
        }
    ],
}
AUTH = {"relay": {"principal": PRINCIPAL, "scopes": ["sign"]}}
CREDENTIALS = {
    "access_key_id": "AKIAEXAMPLEEXAMPLE12",
    "secret_access_key": "secret",
    "session_token": None,
}
PULL_EVERY = 20
BATCH = 50


class WarmEnclave:
    """The enclave's objects with one warm account, and the relay's frames for it."""

    def __init__(self) -> None:
        cache: KeyCache[SigningKey] = KeyCache(16, 900)
        kms = AttestedKms(None, "https://127.0.0.1:1", "us-east-1", (KEY_ID,))  # type: ignore[arg-type]
        self.vault = AccountVault(kms, cache)
        self.chain = ReceiptChain(Ed25519PrivateKey.generate(), secrets.token_bytes(16), b"")
        gate = Gate(
            PolicyEngine(parse_policy(POLICY)),
            Authenticator(StampVerifier(ReplayMemory()), ApprovalVerifier(ReplayMemory())),
            self.chain,
        )
        operations = Operations(None, self.vault, gate=gate, allow_pre_eip155=False)  # type: ignore[arg-type]
        self.operations = operations
        #: Where the tree has it, the server asks this of every frame before running it.
        self.runs_inline = getattr(operations, "runs_inline", None)
        key = SigningKey(generate_private_key())
        record = {
            "account_id": str(uuid.uuid4()),
            "address": key.address,
            "key_id": KEY_ID,
            # A version 2 envelope of the production size: only its cache key matters.
            "encrypted_private_key": base64.b64encode(b"\x02" + secrets.token_bytes(60)).decode(),
            "encrypted_data_key": base64.b64encode(secrets.token_bytes(184)).decode(),
            "created_by": f"relay:{PRINCIPAL}",
        }
        cache.put(operations._account(record).cache_key, key)
        self.singles = [
            _frame(
                "sign_transaction",
                {
                    "account": record,
                    "credentials": CREDENTIALS,
                    "auth": AUTH,
                    "transaction": {**TRANSACTION, "nonce": hex(n)},
                },
                n,
            )
            for n in range(64)
        ]
        self.batches = [
            _frame(
                "sign_batch",
                {
                    "credentials": CREDENTIALS,
                    "accounts": [record],
                    "auth": AUTH,
                    "items": [
                        {
                            "op": "sign_transaction",
                            "account": 0,
                            "transaction": {**TRANSACTION, "nonce": hex(v * BATCH + i)},
                        }
                        for i in range(BATCH)
                    ],
                },
                v,
            )
            for v in range(8)
        ]
        self._after: dict[str, Any] | None = None

    def pull(self) -> None:
        """What the relay's audit log writer does: pull and acknowledge until done."""
        while True:
            answer = self.chain.pull(self._after)
            if not answer["receipts"]:
                return
            last = json.loads(answer["receipts"][-1])["receipt"]
            self._after = {"seg": last["seg"], "n": last["n"], "hash": receipt_hash(last).hex()}

    def answer(self, body: bytes) -> bytes:
        """A frame's CPU path in the enclave server: parse, the inline check (in trees
        that have one), the op, the answer frame."""
        request = wire.parse_request(body)
        if self.runs_inline is not None:
            self.runs_inline(request.op, request.params)
        result = self.operations.dispatch(request.op, request.params)
        return wire.ok_frame(request.request_id, result)

    def run(self, frames: list[bytes], count: int) -> float:
        """CPU microseconds per frame over ``count`` frames."""
        started = time.process_time()
        for n in range(count):
            answer = self.answer(frames[n % len(frames)])
            if n == 0 and b'"ok":true' not in answer:
                raise RuntimeError(f"the enclave refused the frame: {answer[:200]!r}")
            if n % PULL_EVERY == PULL_EVERY - 1:
                self.pull()
        return (time.process_time() - started) / count * 1e6


def _frame(op: str, params: dict[str, Any], n: int) -> bytes:
    return wire.request_frame(wire.Request(f"bench{n:016x}", op, params))


def measure_here(frames: int) -> dict[str, float]:
    """One round in this process, with whatever ``enclave_app`` it imports."""
    enclave = WarmEnclave()
    enclave.run(enclave.singles, 200)
    enclave.run(enclave.batches, 10)
    single = enclave.run(enclave.singles, frames)
    batch = enclave.run(enclave.batches, max(20, frames // BATCH))
    enclave.vault.close()
    return {"sign_us": single, "batch50_us": batch, "batch50_per_signature_us": batch / BATCH}


def measure_in(tree: Path, frames: int) -> dict[str, float]:
    """One round in a fresh process importing ``tree``'s ``enclave_app``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)  # this file runs as a script: its enclave_app is tree's
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one-round", str(frames)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    figures: dict[str, float] = json.loads(out.stdout)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.enclave_frame_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=3000, help="single frames per round")
    parser.add_argument("--compare", type=Path, help="another checkout's enclave_app")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one-round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_round is not None:
        print(json.dumps(measure_here(args.one_round)))
        return 0
    from bench.alternate import alternated  # noqa: PLC0415 (not in the one-round child)

    samples = alternated(
        ROOT, args.compare, args.rounds, lambda tree: measure_in(tree, args.frames)
    )
    summary = {
        name: {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        for name, runs in samples.items()
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'enclave_app':<40} {'sign us/frame':>14} {'batch50 us/frame':>17} {'per sig':>8}")
    for name, figures in summary.items():
        print(
            f"{name:<40} {figures['sign_us']:>14.1f} {figures['batch50_us']:>17.1f}"
            f" {figures['batch50_per_signature_us']:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
