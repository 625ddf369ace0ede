"""The real clients the suite drives, and how their results are checked and tabled.

ethers, viem and Foundry (cast, anvil) come from the npm registry, pinned in
``tests/clients/package-lock.json`` (``make clients`` runs ``npm ci`` here); node is
the distribution's. Outside CI a missing toolchain skips with the reason; ``make
test`` sets NITRO_WALLET_REQUIRE_CLIENTS=1, so there it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from nitro_sim.ports import free_port, owned_by

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
CAST = NODE_MODULES / "@foundry-rs" / "cast-linux-amd64" / "bin" / "cast"
ANVIL = NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
TYPED_DATA: dict[str, dict[str, Any]] = json.loads((HERE / "typed_data.json").read_text())
REQUIRED = os.environ.get("NITRO_WALLET_REQUIRE_CLIENTS") == "1"
SCRIPT_TIMEOUT = 180


def missing_toolchain() -> str | None:
    """Why the JavaScript clients cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    for package in ("ethers", "viem"):
        if not (NODE_MODULES / package / "package.json").is_file():
            return f"{package} is not installed: run `make clients` (npm ci in tests/clients)"
    for binary in (CAST, ANVIL):
        if not os.access(binary, os.X_OK):
            return f"{binary.name} is not installed: run `make clients`"
    return None


def require_toolchain() -> None:
    """Skip (fail under NITRO_WALLET_REQUIRE_CLIENTS=1) when the clients are missing."""
    reason = missing_toolchain()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"client toolchain required (NITRO_WALLET_REQUIRE_CLIENTS=1): {reason}")
    pytest.skip(reason)


# -- anvil ------------------------------------------------------------------------------


class Anvil:
    """A real anvil on a free loopback port (stopped by ``stop``)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--silent"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rpc("eth_chainId", [])
                if not owned_by(self.port, self.process.pid):  # another process's answer
                    self.stop()
                    raise RuntimeError(f"port {self.port} was taken before anvil bound it")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    output = log.read_text(errors="replace")[-800:]
                    raise RuntimeError(f"anvil did not start: {output}") from None
                time.sleep(0.1)

    def rpc(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = urllib.request.Request(
            self.url, body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        if "error" in answer:
            raise RuntimeError(f"anvil {method}: {answer['error']}")
        return answer["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


# -- rows -------------------------------------------------------------------------------


@dataclass
class Row:
    """One check of one client: what the table prints and what failing means."""

    client: str
    operation: str
    ok: bool
    ms: int = 0
    detail: str = ""
    evidence: dict[str, Any] | None = None

    def fail(self, detail: str) -> None:
        self.ok = False
        self.detail = detail


def run_node(script: str, config: dict[str, Any]) -> list[Row]:
    """Run one client script; every JSON line it prints is a row."""
    completed = subprocess.run(
        ["node", str(HERE / script), json.dumps(config)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    rows = [Row(**json.loads(line)) for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0:
        client = script.removesuffix(".mjs")
        rows.append(
            Row(
                client, f"{script} exited {completed.returncode}", False, 0, completed.stderr[-800:]
            )
        )
    return rows


def verify_evidence(row: Row, address: str, anvil: Anvil | None) -> None:
    """Check what a client reported it signed, again, with eth-account (independent code)."""
    evidence = row.evidence
    if not row.ok or evidence is None:
        return
    kind = evidence["kind"]
    if kind == "message":
        message = (
            encode_defunct(text=evidence["text"])
            if "text" in evidence
            else encode_defunct(hexstr=evidence["hex"])
        )
        recovered = Account.recover_message(message, signature=evidence["signature"])
    elif kind == "typed":
        typed = encode_typed_data(full_message=TYPED_DATA[evidence["name"]])
        recovered = Account.recover_message(typed, signature=evidence["signature"])
    elif kind == "transaction":
        recovered = Account.recover_transaction(evidence["raw"])
    elif kind == "sent":
        if anvil is None:
            row.fail("no anvil to look the transaction up")
            return
        receipt = anvil.rpc("eth_getTransactionReceipt", [evidence["hash"]])
        if receipt is None or receipt["status"] != "0x1":
            row.fail(f"anvil has no successful receipt for {evidence['hash']}")
            return
        recovered = receipt["from"]
    else:
        row.fail(f"unknown evidence kind {kind}")
        return
    if recovered.lower() != address.lower():
        row.fail(f"eth-account recovers {recovered}, not {address}")


def table(rows: list[Row]) -> str:
    """The suite's summary: client, operation, result, time, detail."""
    header = ("client", "operation", "result", "ms", "detail")
    lines = [
        (r.client, r.operation, "ok" if r.ok else "FAIL", str(r.ms), r.detail[:110]) for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:4])]
    out = []
    rule = (*("-" * w for w in widths), "-" * 6)
    for cells in [header, rule, *lines]:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True)) + "  " + cells[4]
        )
    return "\n".join(out)
