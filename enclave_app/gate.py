"""The gate every signing op and account creation pass: who asks (``enclave_app.auth``),
whether the policy lets them (``enclave_app.policy``), and the receipt of each decision
(``enclave_app.auth.receipts``).

One frame (a single op, or a ``sign_batch``) opens one :class:`Pass`:

    with gate.open(op, params["auth"], items, account_keys) as frame:   # authenticates
        permit = frame.authorize(i, request_parts...)                   # policy + velocity
        ... unlock, sign ...
        frame.signed(i, permit, result)    or    frame.failed(i, error, permit)

Every item ends in exactly one receipt: allowed with the rule and the signed hash, or
denied with the rule (when the policy decided) and the code. An authentication failure
refuses every item of the frame and is recorded too. Leaving the block seals the
receipts before the answer leaves the enclave and, when nothing was signed, gives the
stamp and approvals back (a request that failed may be retried with them).

Account labels come from the record the relay sent: the policy decides on them before
the key is unlocked, and the unlock then authenticates them (AES-GCM, envelope version
2). A forged label fails that unlock, so it can never lead to a signature.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from enclave_app.accounts import SealedAccount
from enclave_app.auth import receipt_format
from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.authenticate import Authenticator, AuthResult
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.auth.intents import OpItem
from enclave_app.auth.keys import StampKeyEntry
from enclave_app.auth.receipts import AuditDecision, ReceiptChain, Reservation
from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from enclave_app.errors import EnclaveError
from enclave_app.nsm import Nsm
from enclave_app.policy import (
    PRINCIPAL_SCOPES,
    AccountFacts,
    Decision,
    Op,
    Permit,
    Policy,
    PolicyDeniedError,
    PolicyEngine,
    Principal,
    PrincipalKind,
    Request,
    Scope,
    authorize_create,
)
from enclave_app.policy.conditions import Payload

CREATE = "generate_account"


@dataclass(frozen=True)
class Gate:
    engine: PolicyEngine
    authenticator: Authenticator
    receipts: ReceiptChain
    denials: Counter[str] = field(default_factory=Counter, compare=False)
    """Policy refusals per deciding rule since boot (a bounded set: the policy's rule and
    limit names and the built-in ones), for ``stats`` and the relay's metrics."""
    _denials_lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def count_denial(self, rule: str) -> None:
        with self._denials_lock:
            self.denials[rule] += 1

    def describe(self) -> dict[str, object]:
        """The policy's identity and its refusals so far (``stats``' ``policy``)."""
        with self._denials_lock:
            denials = dict(sorted(self.denials.items()))
        policy = self.engine.policy
        return {
            "sha256": policy.sha256,
            "rules": len(policy.rules),
            "limits": len(policy.limits),
            "denials": denials,
        }

    @classmethod
    def boot(
        cls,
        policy: Policy,
        nsm: Nsm,
        clock: Callable[[], float] = time.monotonic,
        entropy: MixedEntropy | None = None,
    ) -> Gate:
        """The enclave's gate at start: the policy's engine (velocity windows used up, on
        ``clock``), fresh replay memories, and a new receipt segment attested by the NSM
        (its key drawn from ``entropy``: the OS and NSM sources mixed)."""
        return cls(
            PolicyEngine(policy, clock),
            Authenticator(StampVerifier(ReplayMemory()), ApprovalVerifier(ReplayMemory())),
            ReceiptChain.boot(nsm, entropy or MixedEntropy(nsm.get_random)),
        )

    def open(
        self,
        op: str,
        auth: object,
        items: Sequence[OpItem],
        account_keys: Mapping[str, StampKeyEntry] | None = None,
    ) -> Pass:
        """Authenticate a frame's items; :class:`EnclaveError` (recorded) if refused."""
        audit = self.receipts.reserve(len(items))
        try:
            result = self.authenticator.authenticate(
                auth,
                items,
                stamp_keys=self.engine.policy.stamp_keys,
                approvers=self.engine.policy.approvers,
                account_keys=account_keys,
            )
        except EnclaveError as exc:
            with audit:
                for item in items:
                    audit.record(_refusal(item, exc, principal=None, auth=None))
            raise
        frame = Pass(self, op, items, result, audit)
        try:
            frame.principal = self._principal(result)
        except EnclaveError as exc:
            self.count_denial(PRINCIPAL_SCOPES)
            frame.refuse_all(exc)
            frame.close()
            raise
        return frame

    def _principal(self, result: AuthResult) -> Principal:
        if result.principal_kind == "relay":
            return self.engine.policy.relay_principal(result.principal_id, result.scopes)
        scopes = frozenset(Scope(scope) for scope in result.scopes)
        return Principal(PrincipalKind.STAMP, result.principal_id, scopes, result.account_bound)


@dataclass
class Pass:
    """One authenticated frame: its principal, its approvals, its receipts."""

    gate: Gate
    op: str
    items: Sequence[OpItem]
    auth: AuthResult
    audit: Reservation
    principal: Principal = field(init=False)
    _recorded: set[int] = field(default_factory=set)
    _signed: int = 0
    _closed: bool = False

    @property
    def principal_name(self) -> str:
        return f"{self.auth.principal_kind}:{self.auth.principal_id}"

    def authorize(self, index: int, op: Op, account: SealedAccount, payload: Payload) -> Permit:
        """The policy's permit for item ``index``; a refusal is recorded and raised."""
        request = Request(
            op,
            self.principal,
            AccountFacts(
                account.account_id,
                bytes.fromhex(account.address[2:]),
                account.metadata.labels,
            ),
            payload,
            self.auth.approvers,
        )
        try:
            return self.gate.engine.authorize(request)
        except PolicyDeniedError as exc:
            self.failed(index, exc)
            raise

    def authorize_create(self, bound_key_scopes: Sequence[frozenset[Scope]]) -> Decision:
        """May this principal create the account (item 0)? Refusals recorded and raised."""
        decision = authorize_create(self.principal, bound_key_scopes)
        if not decision.allowed:
            error = decision.error()
            self.failed(0, error)
            raise error
        return decision

    def signed(self, index: int, rule: str, result: str, permit: Permit | None = None) -> None:
        """Item ``index`` produced its signature (or account): commit and record it."""
        if permit is not None:
            permit.commit()
        self._signed += 1
        item = self.items[index]
        self._recorded.add(index)
        self.audit.record(
            AuditDecision(
                op=item.op,
                allowed=True,
                rule=rule,
                principal=self.principal_name,
                approvers=self.auth.approvers,
                account_id=item.account_id,
                address=item.address or None,
                request_digest=self.auth.request_digest,
                result=result,
            )
        )

    def failed(self, index: int, error: EnclaveError, permit: Permit | None = None) -> None:
        """Item ``index`` produced nothing: give its velocity share back, record why (once:
        an item the policy refused is recorded already)."""
        if permit is not None:
            permit.release()
        if index not in self._recorded:
            self._recorded.add(index)
            decision = _policy_decision(error)
            if decision is not None:
                self.gate.count_denial(decision.rule)
            self.audit.record(_refusal(self.items[index], error, self.principal_name, self.auth))

    def refuse_all(self, error: EnclaveError) -> None:
        for index in range(len(self.items)):
            self.failed(index, error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._signed == 0:
            self.auth.release()
        self.audit.__exit__(None, None, None)

    def __enter__(self) -> Pass:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _refusal(
    item: OpItem, error: EnclaveError, principal: str | None, auth: AuthResult | None
) -> AuditDecision:
    decision = _policy_decision(error)
    return AuditDecision(
        op=item.op,
        allowed=False,
        rule=decision.rule if decision is not None else None,
        code=str(error.code),
        principal=principal,
        approvers=auth.approvers if auth is not None else frozenset(),
        account_id=item.account_id or None,
        address=item.address or None,
        request_digest=auth.request_digest if auth is not None else None,
        payload_digest=receipt_format.payload_digest(item.op, item.payload),
    )


def _policy_decision(error: EnclaveError) -> Decision | None:
    return error.decision if isinstance(error, PolicyDeniedError) else None
