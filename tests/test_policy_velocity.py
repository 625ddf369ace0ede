"""Velocity limits: the request that crosses a limit is refused, limits are per account
and per scope, a reservation not turned into a signature is given back, and a restart
never lets more be signed in any window."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_app.errors import ErrorCode
from enclave_app.policy import Policy, PolicyDeniedError, PolicyEngine, Request
from enclave_app.policy.velocity import SLOTS
from tests.policy_helpers import (
    OTHER_ACCOUNT_ID,
    account,
    message_request,
    policy,
    relay,
    rule,
    tx_request,
)

WINDOW = 600
ETH = 10**18
EVERYTHING = rule("everything", {"transaction": {}, "message": {}})


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limited(**limit: Any) -> Policy:
    spec = {"name": "the-limit", "accounts": "all", "window_seconds": WINDOW, **limit}
    return policy(EVERYTHING, limits=[spec])


def warm_engine(rules: Policy, clock: Clock) -> PolicyEngine:
    """An engine whose boot window has passed."""
    engine = PolicyEngine(rules, clock)
    clock.now += WINDOW
    return engine


def sign(engine: PolicyEngine, request: Request) -> None:
    with engine.authorize(request) as permit:
        permit.commit()


def refusal(engine: PolicyEngine, request: Request) -> PolicyDeniedError:
    with pytest.raises(PolicyDeniedError) as error:
        engine.authorize(request)
    return error.value


def test_the_request_that_crosses_a_count_limit_is_refused_and_names_the_limit() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_count=3), clock)
    for _ in range(3):
        sign(engine, tx_request())
    error = refusal(engine, tx_request())
    assert error.code is ErrorCode.VELOCITY_EXCEEDED
    assert error.decision.rule == "the-limit"
    assert error.message.startswith("policy rule 'the-limit': the account's max_count of 3")


def test_the_request_that_crosses_a_value_limit_is_refused() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_value=ETH), clock)
    sign(engine, tx_request(value=4 * ETH // 10))
    sign(engine, tx_request(value=4 * ETH // 10))
    error = refusal(engine, tx_request(value=3 * ETH // 10))
    assert error.code is ErrorCode.VELOCITY_EXCEEDED
    assert "max_value" in error.message
    sign(engine, tx_request(value=2 * ETH // 10))  # exactly the limit
    sign(engine, tx_request(value=0))  # no value, no cost
    sign(engine, message_request())


def test_the_window_rolls_and_counts_the_oldest_slot_whole() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_count=1), clock)
    sign(engine, tx_request())
    clock.now += WINDOW  # the slot of the first signature still touches the window
    assert refusal(engine, tx_request()).code is ErrorCode.VELOCITY_EXCEEDED
    clock.now += WINDOW / SLOTS
    sign(engine, tx_request())


def test_limits_are_per_account() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_count=1), clock)
    sign(engine, tx_request())
    sign(engine, tx_request(on=account(account_id=OTHER_ACCOUNT_ID)))
    refusal(engine, tx_request())


def test_a_limit_counts_only_the_principals_operations_and_accounts_it_covers() -> None:
    clock = Clock()
    rules = limited(
        max_count=1,
        principals={"relay_identities": ["bot"]},
        operations=["sign_transaction"],
        accounts={"labels": ["hot"]},
    )
    engine = warm_engine(rules, clock)
    hot = account(("hot",))
    for _ in range(3):
        sign(engine, tx_request(on=hot))  # a stamp key: not covered
        sign(engine, message_request(relay("bot"), on=hot))  # another operation
        sign(engine, tx_request(relay("bot"), on=account(("cold",))))  # another account
    sign(engine, tx_request(relay("bot"), on=hot))
    assert refusal(engine, tx_request(relay("bot"), on=hot)).decision.rule == "the-limit"


def test_a_reservation_is_given_back_when_no_signature_is_produced() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_count=1), clock)
    with pytest.raises(RuntimeError), engine.authorize(tx_request()):
        raise RuntimeError("signing failed")
    permit = engine.authorize(tx_request())  # the share came back
    permit.release()
    permit.release()  # idempotent
    sign(engine, tx_request())
    refusal(engine, tx_request())


def test_a_refused_request_takes_nothing_from_the_window() -> None:
    clock = Clock()
    rules = policy(
        EVERYTHING,
        rule("no-big", {"transaction": {"value": {"min": ETH}}}, effect="deny"),
        limits=[{"name": "the-limit", "accounts": "all", "window_seconds": WINDOW, "max_count": 1}],
    )
    engine = warm_engine(rules, clock)
    for _ in range(3):
        assert refusal(engine, tx_request(value=ETH)).decision.rule == "no-big"
    sign(engine, tx_request())


def test_concurrent_requests_cannot_share_the_last_of_a_window() -> None:
    clock = Clock()
    engine = warm_engine(limited(max_count=50), clock)
    signed = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                permit = engine.authorize(tx_request())
            except PolicyDeniedError:
                continue
            signed.append(1)
            permit.commit()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(signed) == 50


# -- restarts -----------------------------------------------------------------------------
def test_after_a_restart_each_window_counts_as_used_until_it_has_passed() -> None:
    clock = Clock()
    rules = limited(max_count=2)
    before = warm_engine(rules, clock)
    sign(before, tx_request())
    sign(before, tx_request())
    restarted = PolicyEngine(rules, clock)  # the parent restarts the enclave
    error = refusal(restarted, tx_request())
    assert "started less than one window ago" in error.message
    clock.now += WINDOW - 1
    refusal(restarted, tx_request())
    clock.now += 1
    sign(restarted, tx_request())
    sign(restarted, tx_request())
    refusal(restarted, tx_request())


def test_after_a_restart_a_value_limit_still_lets_zero_value_requests_through() -> None:
    clock = Clock()
    engine = PolicyEngine(limited(max_value=ETH), clock)
    assert refusal(engine, tx_request(value=1)).code is ErrorCode.VELOCITY_EXCEEDED
    sign(engine, tx_request(value=0))
    sign(engine, message_request())


def test_an_engine_without_limits_signs_from_the_first_second() -> None:
    engine = PolicyEngine(policy(EVERYTHING), Clock())
    sign(engine, tx_request(value=10 * ETH))


events = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3 * WINDOW), st.sampled_from(["sign", "restart"])),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events=events, max_count=st.integers(min_value=1, max_value=4))
def test_no_sequence_of_restarts_signs_more_than_the_limit_in_any_window(
    events: list[tuple[float, str]], max_count: int
) -> None:
    rules = limited(max_count=max_count)
    clock = Clock(0.0)
    engine = PolicyEngine(rules, clock)
    # What signed before the first boot we know of: a full window right up to it.
    signed = [-1e-9] * max_count
    for at, kind in sorted(events):
        clock.now = at
        if kind == "restart":
            engine = PolicyEngine(rules, clock)
            continue
        try:
            sign(engine, tx_request())
        except PolicyDeniedError:
            continue
        signed.append(at)
    for end in signed:
        in_window = [t for t in signed if end - WINDOW < t <= end]
        assert len(in_window) <= max_count
