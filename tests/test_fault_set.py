"""The fault set under load (issue 9): the enclave killed, KMS stopped, KMS hung, the
relay restarted, a storage fault. While each fault lasts, clients keep signing with warm
accounts and creating new ones. Every run asserts: every 200 is a complete signature by
the right account over the transaction that was sent (never a wrong or partial one);
every other answer is a typed 503, or no answer while the relay itself restarts; every
account answered 201 is still there afterwards and signs; and the appliance is ready
again once the fault is gone.
"""

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

import pytest
import rlp
from eth_account import Account
from eth_utils.crypto import keccak

from nitro_sim.stack import LocalStack, http_json
from tests.fs_faults import require_immutable_support, set_immutable
from tests.stack_helpers import create_account, eip1559, wait_for

pytestmark = pytest.mark.stack

SIGNERS = 3
#: Typed answers a fault may bring; anything else (a 500, a 4xx) fails the run.
FAULT_ANSWERS = {
    "enclave_unavailable",
    "kms_unavailable",
    "storage_unavailable",
    "server_busy",
    "credentials_unavailable",
}


@dataclass
class Load:
    """Signers on warm accounts and one creator, until ``stop()``; everything recorded."""

    stack: LocalStack
    warm: list[dict[str, Any]]
    answers: Counter[str] = field(default_factory=Counter)
    created: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _nonce: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for index in range(SIGNERS):
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
        except OSError:
            with self._lock:
                self.answers["no answer"] += 1
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


@pytest.fixture(scope="module")
def warm(stack: LocalStack) -> list[dict[str, Any]]:
    accounts = [create_account(stack) for _ in range(SIGNERS)]
    for account in accounts:
        assert (
            http_json(  # one signature each: the keys are in the enclave's cache
                "POST",
                f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
                {"transaction": eip1559()},
            )[0]
            == 200
        )
    return accounts


def under_load(
    stack: LocalStack,
    warm: list[dict[str, Any]],
    fault: Callable[[], None],
    heal: Callable[[], None],
) -> Load:
    load = Load(stack, warm).start()
    try:
        time.sleep(1.0)  # the load runs before the fault
        fault()
        time.sleep(4.0)  # and through it
        heal()
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


def test_the_enclave_killed_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    record = stack.enclave_record()
    assert record is not None
    load = under_load(
        stack, warm, lambda: os.kill(int(record["EnclaveProcessID"]), signal.SIGKILL), lambda: None
    )
    assert load.answers["200"] > 0
    assert load.answers["503 enclave_unavailable"] > 0  # the outage was seen, and typed


def test_kms_stopped_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    kms = stack.services["kms"]
    load = under_load(stack, warm, kms.stop, kms.start)
    assert load.answers["200"] > 0  # warm signing goes on without KMS
    assert load.answers["503 kms_unavailable"] > 0  # new accounts need KMS: typed refusals


def test_kms_hung_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    kms = stack.services["kms"]
    load = under_load(
        stack, warm, lambda: kms.signal(signal.SIGSTOP), lambda: kms.signal(signal.SIGCONT)
    )
    assert load.answers["200"] > 0


def test_the_relay_restarted_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, stack.restart_relay, lambda: None)
    assert load.answers["200"] > 0


def test_a_storage_fault_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    directory = stack.relay_db.parent
    require_immutable_support(directory)

    def paths() -> list[Any]:
        return [*sorted(directory.glob("accounts.db*")), directory]

    def fault() -> None:
        for path in paths():
            set_immutable(path, True)

    def heal() -> None:
        for path in paths():
            set_immutable(path, False)

    try:
        load = under_load(stack, warm, fault, heal)
    finally:
        heal()
    assert load.answers["200"] > 0  # signing reads on
    assert load.answers["503 storage_unavailable"] > 0
