"""The policy as the signing operations use it: decide, then hold the velocity share
until the signature exists.

    permit = engine.authorize(request)       # raises PolicyDeniedError on any refusal
    with permit:                              # released unless committed
        signed = sign(...)
        permit.commit()

A batch authorizes, signs and commits item by item, so an item counts against the
limits of the items after it only once it is signed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from enclave_app.policy.evaluate import Decision, PolicyDeniedError, Request, evaluate
from enclave_app.policy.model import Policy
from enclave_app.policy.velocity import Charge, Reservation, VelocityLedger
from enclave_app.signing.transactions import Transaction


class Permit:
    """An allowed request's decision and its velocity reservation."""

    def __init__(self, decision: Decision, reservation: Reservation) -> None:
        self.decision = decision
        self._reservation: Reservation | None = reservation

    def commit(self) -> None:
        """The signature was produced: the reservation becomes a record."""
        self._reservation = None

    def release(self) -> None:
        """Nothing was signed: give the reservation back (idempotent)."""
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class PolicyEngine:
    """One loaded policy and its velocity ledger (which starts used up: see
    :mod:`enclave_app.policy.velocity`)."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.ledger = VelocityLedger(boot=clock())

    def authorize(self, request: Request) -> Permit:
        decision = evaluate(self.policy, request)
        if not decision.allowed:
            raise PolicyDeniedError(decision)
        reservation = self.ledger.reserve(self.charges(request), self._clock())
        return Permit(decision, reservation)

    def charges(self, request: Request) -> list[Charge]:
        """What the request costs under every limit that covers it."""
        value = request.payload.value if isinstance(request.payload, Transaction) else 0
        account = request.account
        return [
            Charge(limit, account.account_id, value)
            for limit in self.policy.limits
            if request.op in limit.operations
            and limit.principals.covers(request.principal)
            and limit.accounts.covers(account.account_id, account.labels)
        ]
