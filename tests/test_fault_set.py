"""The fault set under load (issue 9): the enclave killed, KMS stopped, KMS hung, the
relay restarted, a storage fault. While each fault lasts, clients keep signing with warm
accounts and creating new ones. Every run asserts: every 200 is a complete signature by
the right account over the transaction that was sent (never a wrong or partial one);
every other answer is a typed 503, or no answer while the relay itself restarts; every
account answered 201 is still there afterwards and signs; and the appliance is ready
again once the fault is gone.
"""

from __future__ import annotations

from typing import Any

import pytest

from nitro_sim.stack import LocalStack
from tests.load import Load, fault_set, run_fault, warm_accounts

pytestmark = pytest.mark.stack

SIGNERS = 3


@pytest.fixture(scope="module")
def warm(stack: LocalStack) -> list[dict[str, Any]]:
    return warm_accounts(stack, SIGNERS)


def under_load(stack: LocalStack, warm: list[dict[str, Any]], name: str) -> Load:
    return run_fault(Load(stack, warm, SIGNERS), fault_set(stack)[name])


def test_the_enclave_killed_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, "enclave killed")
    assert load.answers["200"] > 0
    assert load.answers["503 enclave_unavailable"] > 0  # the outage was seen, and typed


def test_kms_stopped_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, "KMS stopped")
    assert load.answers["200"] > 0  # warm signing goes on without KMS
    assert load.answers["503 kms_unavailable"] > 0  # new accounts need KMS: typed refusals


def test_kms_hung_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, "KMS hung")
    assert load.answers["200"] > 0  # warm signing needs no KMS


def test_the_relay_restarted_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, "relay restarted")
    assert load.answers["200"] > 0


def test_a_storage_fault_under_load(stack: LocalStack, warm: list[dict[str, Any]]) -> None:
    load = under_load(stack, warm, "storage fault")
    assert load.answers["200"] > 0  # signing reads on
    assert load.answers["503 storage_unavailable"] > 0
