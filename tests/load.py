"""Client load against the simulated appliance, with every answer checked: signers on
warm accounts and a creator of new ones (the fault set and the soak run use it)."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import rlp
from eth_account import Account
from eth_utils.crypto import keccak

from nitro_sim.stack import LocalStack, http_json
from tests.fs_faults import require_immutable_support, set_immutable
from tests.stack_helpers import eip1559, wait_for

#: Typed answers a fault may bring; anything else (a 500, a 4xx) is a problem.
FAULT_ANSWERS = {
    "enclave_unavailable",
    "kms_unavailable",
    "storage_unavailable",
    "server_busy",
    "credentials_unavailable",
}


@dataclass
class Load:
    """``signers`` threads signing with warm accounts and one creator, until ``stop()``;
    every answer is counted and checked, anything unexpected goes to ``problems``: a
    connection that gets no HTTP answer too, unless ``relay_down`` (the relay itself is
    restarted: nothing listens for a moment)."""

    stack: LocalStack
    warm: list[dict[str, Any]]
    signers: int = 3
    relay_down: bool = False
    answers: Counter[str] = field(default_factory=Counter)
    created: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _nonce: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for index in range(self.signers):
            self._spawn(functools.partial(self._sign, self.warm[index % len(self.warm)]))
        self._spawn(self._create)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        assert not any(t.is_alive() for t in self._threads), "a client hung for 2 minutes"

    def _spawn(self, step: Callable[[], None]) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                step()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _call(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        try:
            return http_json("POST", f"{self.stack.relay_url}{path}", body)
        except OSError as exc:
            with self._lock:
                self.answers["no answer"] += 1
                if not self.relay_down:
                    self.problems.append(f"no answer from {path}: {exc!r}")
            time.sleep(0.05)
            return None

    def _record(self, status: int, body: dict[str, Any]) -> None:
        code = body.get("error", {}).get("code", "") if status not in {200, 201} else ""
        with self._lock:
            self.answers[f"{status} {code}".strip()] += 1
            if status not in (200, 201) and (status != 503 or code not in FAULT_ANSWERS):
                self.problems.append(f"{status} {body}")
        if status == 503:
            time.sleep(0.05)

    def _sign(self, account: dict[str, Any]) -> None:
        with self._lock:
            nonce = next(self._nonce)
        path = f"/v1/accounts/{account['account_id']}/sign/transaction"
        answer = self._call(path, {"transaction": eip1559(nonce)})
        if answer is None:
            return
        status, body = answer
        self._record(status, body)
        if status == 200:
            check_signature(account, nonce, body, self.problems)

    def _create(self) -> None:
        answer = self._call("/v1/accounts", {})
        if answer is None:
            return
        status, body = answer
        self._record(status, body)
        if status == 201:
            with self._lock:
                self.created.append(body)


def check_signature(
    account: dict[str, Any], nonce: int, body: dict[str, Any], problems: list[str]
) -> None:
    raw = bytes.fromhex(body["raw_transaction"][2:])
    if Account.recover_transaction(raw) != account["address"]:
        problems.append(f"signed by the wrong key: {body}")
    if "0x" + keccak(raw).hex() != body["hash"]:
        problems.append(f"hash does not match the raw transaction: {body}")
    fields = rlp.decode(raw[1:])  # EIP-1559: 0x02 || rlp([chainId, nonce, ...])
    if int.from_bytes(fields[1], "big") != nonce or len(fields) != 12:
        problems.append(f"not the transaction sent (nonce {nonce}): {body}")


def warm_accounts(stack: LocalStack, count: int) -> list[dict[str, Any]]:
    """``count`` new accounts, each used once, so their keys are in the enclave's cache."""
    accounts = []
    for _ in range(count):
        status, account = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
        assert status == 201, account
        path = f"/v1/accounts/{account['account_id']}/sign/transaction"
        status, signed = http_json("POST", stack.relay_url + path, {"transaction": eip1559()})
        assert status == 200, signed
        accounts.append(account)
    return accounts


@dataclass(frozen=True)
class Fault:
    """One fault of the set: how to cause it, how to heal it, and whether it takes the
    relay itself away (the only fault during which a request may get no answer)."""

    cause: Callable[[], None]
    heal: Callable[[], None]
    relay_down: bool = False


def run_fault(load: Load, fault: Fault) -> Load:
    """Run ``load`` before, through and after ``fault``; check what it got, and that every
    account it was answered 201 for is still there and signs. The fault is healed
    whatever happens, so a failed run leaves none behind (an immutable file, a stopped
    KMS)."""
    stack = load.stack
    load.relay_down = fault.relay_down
    load.start()
    try:
        time.sleep(1.0)  # the load runs before the fault
        try:
            fault.cause()
            time.sleep(4.0)  # and through it
        finally:
            fault.heal()
        assert wait_for(stack.relay_ready, 90), stack.log("supervisor")
        time.sleep(1.0)  # and after it
    finally:
        load.stop()
    assert load.problems == [], load.problems[:3]
    print(f"answers: {dict(load.answers)}")
    for account in load.created:  # nothing answered is lost, and it signs
        status, body = http_json("GET", f"{stack.relay_url}/v1/accounts/{account['account_id']}")
        assert (status, body.get("address")) == (200, account["address"]), body
    if load.created:
        account = load.created[-1]
        status, body = http_json(
            "POST",
            f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
            {"transaction": eip1559(7)},
        )
        assert status == 200, body
        check_signature(account, 7, body, load.problems)
        assert load.problems == []
    return load


def fault_set(stack: LocalStack) -> dict[str, Fault]:
    """Issue 9's fault set on a running stack, by name."""
    kms = stack.services["kms"]

    def kill_enclave() -> None:
        record = stack.enclave_record()
        assert record is not None
        os.kill(int(record["EnclaveProcessID"]), signal.SIGKILL)

    def storage_paths() -> list[Any]:
        directory = stack.relay_db.parent
        return [*sorted(directory.glob("accounts.db*")), directory]

    def storage_fault() -> None:
        require_immutable_support(stack.relay_db.parent)
        for path in storage_paths():
            set_immutable(path, True)

    def storage_heal() -> None:
        for path in storage_paths():
            set_immutable(path, False)

    def nothing() -> None:
        return None

    return {
        "enclave killed": Fault(kill_enclave, nothing),
        "KMS stopped": Fault(kms.stop, kms.start),
        "KMS hung": Fault(
            functools.partial(kms.signal, signal.SIGSTOP),
            functools.partial(kms.signal, signal.SIGCONT),
        ),
        "relay restarted": Fault(stack.restart_relay, nothing, relay_down=True),
        "storage fault": Fault(storage_fault, storage_heal),
    }
