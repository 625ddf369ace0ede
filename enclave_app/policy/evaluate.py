"""Evaluate one signing request against the policy: pure, and cheap per request.

Order (Turnkey's, minus the root quorum):
1. the principal needs the ``sign`` scope (else ``scope_denied``, rule
   ``principal-scopes``);
2. any deny rule that matches decides: ``policy_denied`` naming that rule;
3. the first allow rule (in document order) that matches and whose approvals are met
   decides: allowed, naming that rule;
4. allow rules matched but none has its approvals: ``approvals_required`` naming the
   first of them;
5. nothing matched: ``policy_denied`` by the implicit ``default-deny``.

A rule matches a request when it covers the principal and the account and its
condition judges the payload (see :mod:`enclave_app.policy.conditions`). Velocity
limits come after an allow (:mod:`enclave_app.policy.engine`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.policy.conditions import NO_MATCH, Payload, TypedDataFacts, Verdict
from enclave_app.policy.model import (
    ACCOUNT_CREATION,
    DEFAULT_DENY,
    PRINCIPAL_SCOPES,
    Op,
    Policy,
    Principal,
    PrincipalKind,
    Rule,
    Scope,
)
from enclave_app.signing import fields, typed_data
from enclave_app.signing.transactions import Authorization, Transaction

_PAYLOAD_TYPES: dict[Op, type] = {
    Op.SIGN_TRANSACTION: Transaction,
    Op.SIGN_MESSAGE: bytes,
    Op.SIGN_TYPED_DATA: TypedDataFacts,
    Op.SIGN_AUTHORIZATION: Authorization,
}


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """The account as the policy sees it. ``labels`` must come from the sealed record
    (opened and authenticated in the enclave), never from anything the relay says."""

    account_id: str
    address: bytes
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Request:
    """One signing request. ``payload`` is the enclave's own parsed value: a
    :class:`Transaction`, the message bytes, :class:`TypedDataFacts` (see
    :func:`typed_data_facts`) or an :class:`Authorization`. ``approvers`` holds the ids
    of approvers whose approvals were verified (distinct, fresh, not replayed)."""

    op: Op
    principal: Principal
    account: AccountFacts
    payload: Payload
    approvers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.payload, _PAYLOAD_TYPES[self.op]):
            raise TypeError(f"{self.op} takes a {_PAYLOAD_TYPES[self.op].__name__} payload")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and the rule that decided it (a built-in name when no written rule
    did). ``code`` is None when allowed."""

    allowed: bool
    rule: str
    code: ErrorCode | None
    message: str

    def error(self) -> PolicyDeniedError:
        return PolicyDeniedError(self)


class PolicyDeniedError(EnclaveError):
    """A policy refusal: its message starts ``policy rule '<name>':``."""

    def __init__(self, decision: Decision) -> None:
        if decision.code is None:
            raise ValueError("an allowed decision is not an error")
        super().__init__(decision.code, decision.message)
        self.decision = decision


def _allowed(rule: Rule) -> Decision:
    return Decision(True, rule.name, None, f"policy rule '{rule.name}': allowed")


def denied(rule: str, code: ErrorCode, reason: str) -> Decision:
    return Decision(False, rule, code, f"policy rule '{rule}': {reason}")


def evaluate(policy: Policy, request: Request) -> Decision:
    """Decide ``request`` (see the module docstring); never raises for a denial."""
    principal = request.principal
    if Scope.SIGN not in principal.scopes:
        return denied(
            PRINCIPAL_SCOPES,
            ErrorCode.SCOPE_DENIED,
            f"{principal.kind} principal {principal.id!r} lacks the 'sign' scope",
        )
    account = request.account
    for rule in policy.deny_rules[request.op]:
        if (
            rule.principals.covers(principal)
            and rule.accounts.covers(account.account_id, account.labels)
            and rule.condition.check(request.payload, allow=False) is not NO_MATCH
        ):
            return denied(rule.name, ErrorCode.POLICY_DENIED, "denied by this deny rule")
    wanting: Rule | None = None
    for rule in policy.allow_rules[request.op]:
        if (
            rule.principals.covers(principal)
            and rule.accounts.covers(account.account_id, account.labels)
            and rule.condition.check(request.payload, allow=True) is Verdict.MATCH
        ):
            if rule.approvals is None or (
                rule.approvals.count(request.approvers) >= rule.approvals.threshold
            ):
                return _allowed(rule)
            wanting = wanting or rule
    if wanting is not None and wanting.approvals is not None:
        approvals = wanting.approvals
        return denied(
            wanting.name,
            ErrorCode.APPROVALS_REQUIRED,
            f"needs {approvals.threshold} of the approvers {', '.join(approvals.approvers)}; "
            f"{approvals.count(request.approvers)} valid approval(s) given",
        )
    return denied(DEFAULT_DENY, ErrorCode.POLICY_DENIED, _default_deny_reason(request))


def authorize_create(
    principal: Principal, bound_key_scopes: Iterable[frozenset[Scope]]
) -> Decision:
    """May ``principal`` create an account binding stamp keys with these scopes?

    Creating needs the ``create`` scope. Binding stamp keys to the new account is
    reserved to stamp keys declared in the policy, and a bound key gets no scope its
    creator lacks: otherwise a compromised relay could create accounts (which may later
    hold funds) with a key of its own that ``stamp_keys: any`` rules trust.
    """
    if Scope.CREATE not in principal.scopes:
        return denied(
            PRINCIPAL_SCOPES,
            ErrorCode.SCOPE_DENIED,
            f"{principal.kind} principal {principal.id!r} lacks the 'create' scope",
        )
    scopes = list(bound_key_scopes)
    if scopes and (principal.kind is not PrincipalKind.STAMP or principal.account_bound):
        return denied(
            ACCOUNT_CREATION,
            ErrorCode.POLICY_DENIED,
            "only a stamp key declared in the policy may bind stamp keys to a new account",
        )
    for wanted in scopes:
        if not wanted <= principal.scopes:
            return denied(
                ACCOUNT_CREATION,
                ErrorCode.POLICY_DENIED,
                "a bound stamp key may not have a scope its creator lacks",
            )
    return Decision(True, ACCOUNT_CREATION, None, f"policy rule '{ACCOUNT_CREATION}': allowed")


def _default_deny_reason(request: Request) -> str:
    reason = f"no rule allows this {request.op} request"
    payload = request.payload
    chain_zero = (isinstance(payload, Authorization) and payload.chain_id == 0) or (
        isinstance(payload, Transaction)
        and any(a.authorization.chain_id == 0 for a in payload.authorization_list)
    )
    if chain_zero:
        reason += (
            "; an EIP-7702 authorization with chainId 0 is valid on every chain and is "
            "allowed only by a rule whose chain_id list names 0"
        )
    return reason


def typed_data_facts(data: Mapping[str, object]) -> TypedDataFacts:
    """The policy's view of typed data that :func:`typed_data.hash_typed_data` has
    already validated (call it first: this reads the fields without re-checking them)."""
    domain = data["domain"]
    primary = data["primaryType"]
    if not isinstance(domain, Mapping) or not isinstance(primary, str):
        raise TypeError("typed data must be validated before the policy reads it")
    name, version = domain.get("name"), domain.get("version")
    chain_id = domain.get("chainId")
    contract = domain.get("verifyingContract")
    return TypedDataFacts(
        primary_type=primary,
        name=name if isinstance(name, str) else None,
        version=version if isinstance(version, str) else None,
        chain_id=None if chain_id is None else typed_data.uint256("domain.chainId", chain_id),
        verifying_contract=(
            None if contract is None else fields.address("domain.verifyingContract", contract)
        ),
    )
