"""Who and where a rule applies to (principals, accounts), scopes, approvals, and the
error a refusal becomes."""

from __future__ import annotations

from typing import Any

import pytest

from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.policy import (
    ACCOUNT_CREATION,
    DEFAULT_DENY,
    PRINCIPAL_SCOPES,
    Decision,
    Op,
    PolicyDeniedError,
    Principal,
    PrincipalKind,
    Request,
    Scope,
    authorize_create,
    evaluate,
)
from parent_app.errors import from_enclave, jsonrpc_code
from tests.policy_helpers import (
    OTHER_ACCOUNT_ID,
    account,
    message_request,
    policy,
    relay,
    rule,
    stamp,
    tx_request,
)

ANY_TX: dict[str, Any] = {"transaction": {}}


@pytest.mark.parametrize(
    ("who", "covered", "not_covered"),
    [
        ({"stamp_keys": ["ops"]}, [stamp("ops")], [stamp("treasurer"), relay("bot")]),
        ({"relay_identities": ["bot"]}, [relay("bot")], [relay("reader"), stamp("ops")]),
        ({"stamp_keys": "any"}, [stamp("ops"), stamp("treasurer")], [relay("bot")]),
        ({"relay_identities": "any"}, [relay("bot"), relay("reader")], [stamp("ops")]),
        (
            {"stamp_keys": ["treasurer"], "relay_identities": ["bot"]},
            [stamp("treasurer"), relay("bot")],
            [stamp("ops"), relay("reader")],
        ),
    ],
)
def test_a_rule_covers_exactly_the_principals_it_names(
    who: dict[str, object], covered: list[Principal], not_covered: list[Principal]
) -> None:
    rules = policy(rule("named", ANY_TX, who=who))
    for principal in covered:
        assert evaluate(rules, tx_request(principal)).rule == "named"
    for principal in not_covered:
        assert evaluate(rules, tx_request(principal)).rule == DEFAULT_DENY


def test_a_key_bound_to_the_account_matches_any_stamp_key_but_never_a_listed_id() -> None:
    """An account-bound key named like a policy key must not borrow its rights."""
    bound = Principal(PrincipalKind.STAMP, "ops", frozenset(Scope), account_bound=True)
    listed = policy(rule("ops-only", ANY_TX, who={"stamp_keys": ["ops"]}))
    assert evaluate(listed, tx_request(bound)).rule == DEFAULT_DENY
    anyone = policy(rule("any-key", ANY_TX, who={"stamp_keys": "any"}))
    assert evaluate(anyone, tx_request(bound)).rule == "any-key"


@pytest.mark.parametrize(
    ("accounts", "inside", "outside"),
    [
        ("all", account(()), None),
        ({"labels": ["hot"]}, account(("hot", "eu")), account(("cold",))),
        ({"labels": ["hot", "warm"]}, account(("warm",)), account(())),
        ({"account_id": OTHER_ACCOUNT_ID}, account(account_id=OTHER_ACCOUNT_ID), account(("hot",))),
    ],
)
def test_a_rule_covers_exactly_the_accounts_it_names(
    accounts: object, inside: object, outside: object
) -> None:
    rules = policy(rule("scoped", ANY_TX, accounts=accounts))
    assert evaluate(rules, tx_request(on=inside)).rule == "scoped"  # type: ignore[arg-type]
    if outside is not None:
        assert evaluate(rules, tx_request(on=outside)).rule == DEFAULT_DENY  # type: ignore[arg-type]


def test_a_deny_rule_scoped_to_a_label_spares_other_accounts() -> None:
    rules = policy(
        rule("allow", ANY_TX),
        rule("cold-never", ANY_TX, effect="deny", accounts={"labels": ["cold"]}),
    )
    assert evaluate(rules, tx_request(on=account(("cold",)))).rule == "cold-never"
    assert evaluate(rules, tx_request(on=account(("hot",)))).rule == "allow"


def test_a_principal_without_the_sign_scope_is_refused_before_any_rule() -> None:
    rules = policy(rule("allow", ANY_TX))
    reader = relay("reader", frozenset({Scope.READ}))
    decision = evaluate(rules, tx_request(reader))
    assert (decision.allowed, decision.rule, decision.code) == (
        False,
        PRINCIPAL_SCOPES,
        ErrorCode.SCOPE_DENIED,
    )
    assert "'sign' scope" in decision.message


def test_relay_identities_must_be_declared_and_the_relay_can_only_narrow_scopes() -> None:
    rules = policy()
    bot = rules.relay_principal("bot", frozenset({"sign", "read", "create"}))
    assert bot == Principal(PrincipalKind.RELAY, "bot", frozenset({Scope.SIGN, Scope.READ}))
    assert rules.relay_principal("bot", frozenset({"read"})).scopes == {Scope.READ}
    with pytest.raises(EnclaveError) as error:
        rules.relay_principal("mallory", frozenset({"sign"}))
    assert error.value.code is ErrorCode.PRINCIPAL_UNKNOWN


def test_stamp_principals_take_their_scopes_from_the_policy() -> None:
    rules = policy()
    assert rules.stamp_principal("treasurer").scopes == {Scope.SIGN}
    with pytest.raises(EnclaveError) as error:
        rules.stamp_principal("nobody")
    assert error.value.code is ErrorCode.PRINCIPAL_UNKNOWN


# -- approvals ----------------------------------------------------------------------------
APPROVED = rule(
    "two-of-three",
    ANY_TX,
    approvals={"threshold": 2, "approvers": ["alice", "bob", "carol"]},
)


@pytest.mark.parametrize(
    ("approvers", "allowed"),
    [
        (frozenset(), False),
        (frozenset({"alice"}), False),
        (frozenset({"alice", "mallory"}), False),
        (frozenset({"alice", "carol"}), True),
        (frozenset({"alice", "bob", "carol"}), True),
    ],
)
def test_an_allow_rule_with_approvals_needs_its_threshold_of_listed_approvers(
    approvers: frozenset[str], allowed: bool
) -> None:
    decision = evaluate(policy(APPROVED), tx_request(approvers=approvers))
    assert decision.allowed is allowed
    assert decision.rule == "two-of-three"
    if not allowed:
        assert decision.code is ErrorCode.APPROVALS_REQUIRED
        valid = len(approvers & {"alice", "bob", "carol"})
        assert f"{valid} valid approval(s) given" in decision.message


def test_a_rule_without_approvals_that_also_matches_allows_without_them() -> None:
    rules = policy(APPROVED, rule("small", {"transaction": {"value": {"max": 10**17}}}))
    assert evaluate(rules, tx_request()).rule == "small"
    decision = evaluate(rules, tx_request(value=10**18))
    assert (decision.rule, decision.code) == ("two-of-three", ErrorCode.APPROVALS_REQUIRED)


def test_approvals_never_override_a_deny_rule() -> None:
    rules = policy(APPROVED, rule("never", ANY_TX, effect="deny"))
    decision = evaluate(rules, tx_request(approvers=frozenset({"alice", "bob", "carol"})))
    assert (decision.rule, decision.code) == ("never", ErrorCode.POLICY_DENIED)


# -- the error ----------------------------------------------------------------------------
def test_a_denial_becomes_an_enclave_error_with_the_code_and_the_rule_in_the_message() -> None:
    decision = evaluate(policy(rule("never", ANY_TX, effect="deny")), tx_request())
    error = decision.error()
    assert isinstance(error, EnclaveError)
    assert error.code is ErrorCode.POLICY_DENIED
    assert error.message == "policy rule 'never': denied by this deny rule"
    assert error.decision is decision
    with pytest.raises(ValueError, match="not an error"):
        PolicyDeniedError(evaluate(policy(rule("ok", ANY_TX)), tx_request()))


def test_a_request_payload_must_fit_its_operation() -> None:
    with pytest.raises(TypeError, match="sign_message takes a bytes payload"):
        Request(Op.SIGN_MESSAGE, stamp(), account(), tx_request().payload)
    assert message_request().payload == b"hello"


# -- account creation ---------------------------------------------------------------------
SIGN_ONLY = frozenset({Scope.SIGN})


def test_creating_an_account_needs_the_create_scope() -> None:
    assert authorize_create(stamp(), []).allowed
    assert authorize_create(relay("bot"), []).rule == ACCOUNT_CREATION
    decision = authorize_create(relay("bot", SIGN_ONLY), [])
    assert (decision.allowed, decision.rule, decision.code) == (
        False,
        PRINCIPAL_SCOPES,
        ErrorCode.SCOPE_DENIED,
    )


@pytest.mark.parametrize(
    "creator",
    [relay("bot"), Principal(PrincipalKind.STAMP, "owner", frozenset(Scope), account_bound=True)],
    ids=["relay identity", "account-bound key"],
)
def test_only_a_policy_stamp_key_may_bind_stamp_keys_to_a_new_account(creator: Principal) -> None:
    assert authorize_create(creator, []).allowed
    decision = authorize_create(creator, [SIGN_ONLY])
    assert (decision.allowed, decision.rule, decision.code) == (
        False,
        ACCOUNT_CREATION,
        ErrorCode.POLICY_DENIED,
    )
    assert authorize_create(stamp("ops"), [SIGN_ONLY, frozenset(Scope)]).allowed


def test_a_bound_key_gets_no_scope_its_creator_lacks() -> None:
    creator = stamp("ops", frozenset({Scope.CREATE, Scope.SIGN}))
    assert authorize_create(creator, [frozenset({Scope.SIGN})]).allowed
    decision = authorize_create(creator, [frozenset({Scope.SIGN, Scope.READ})])
    assert not decision.allowed
    assert "scope its creator lacks" in decision.message


@pytest.mark.parametrize(
    ("code", "status", "jsonrpc"),
    [
        (ErrorCode.POLICY_DENIED, 403, -32003),
        (ErrorCode.APPROVALS_REQUIRED, 403, -32003),
        (ErrorCode.SCOPE_DENIED, 403, -32003),
        (ErrorCode.PRINCIPAL_UNKNOWN, 403, -32003),
        (ErrorCode.VELOCITY_EXCEEDED, 429, -32005),
    ],
)
def test_the_relay_passes_a_refusal_through_with_its_code_and_rule(
    code: ErrorCode, status: int, jsonrpc: int
) -> None:
    refusal = PolicyDeniedError(Decision(False, "some-rule", code, "policy rule 'some-rule': no"))
    relayed = from_enclave(refusal)
    assert (relayed.status, relayed.code, relayed.message) == (
        status,
        code.value,
        "policy rule 'some-rule': no",
    )
    assert jsonrpc_code(relayed.code) == jsonrpc
