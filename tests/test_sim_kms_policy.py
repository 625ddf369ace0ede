"""Key policy parsing and evaluation (nitro_sim.kms.policy), as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nitro_sim.kms.policy import (
    Condition,
    Decision,
    PolicyError,
    RequestContext,
    default_key_policy,
    evaluate,
    evaluate_condition,
    parse_policy,
)

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/nitro-wallet-parent"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/nitro-wallet-admin"
STRANGER = "arn:aws:iam::444455556666:role/attacker"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-4000-8000-000000000000"
GOOD = "a1" * 48
BAD = "b2" * 48
IMAGE = "kms:RecipientAttestation:ImageSha384"


def ctx(
    principal: str = ROLE,
    action: str = "kms:Decrypt",
    resource: str = KEY,
    pcr0: str | None = None,
    context: dict[str, str] | None = None,
    pcr8: str | None = None,
    extra: dict[str, str] | None = None,
) -> RequestContext:
    keys: dict[str, tuple[str, ...]] = {
        "aws:principalarn": (principal,),
        "kms:calleraccount": (principal.split(":")[4],),
    }
    if pcr0 is not None:
        keys["kms:recipientattestation:imagesha384"] = (pcr0,)
        keys["kms:recipientattestation:pcr0"] = (pcr0,)
    if pcr8 is not None:
        keys["kms:recipientattestation:pcr8"] = (pcr8,)
    for name, value in (extra or {}).items():
        keys[name.lower()] = (value,)
    for name, value in (context or {}).items():
        keys[f"kms:encryptioncontext:{name}".lower()] = (value,)
    if context:
        keys["kms:encryptioncontextkeys"] = tuple(context)
    return RequestContext(principal, action, resource, keys)


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any = None, action: Any = "kms:Decrypt", **extra: Any) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Principal": principal if principal is not None else {"AWS": ROLE},
        "Action": action,
        "Resource": extra.pop("Resource", "*"),
        **extra,
    }


def not_action(action: str) -> dict[str, Any]:
    statement = allow()
    del statement["Action"]
    return {**statement, "NotAction": action}


def deny(principal: Any = "*", action: Any = "kms:Decrypt", **extra: Any) -> dict[str, Any]:
    return {**allow(principal, action, **extra), "Effect": "Deny"}


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "nope",
        "[]",
        "{}",
        '{"Statement": []}',
        '{"Version": "2020-01-01", "Statement": [{}]}',
        '{"Statement": [], "Extra": 1}',
        doc({**allow(), "Effect": "allow"}),
        doc({k: v for k, v in allow().items() if k != "Principal"}),
        doc({k: v for k, v in allow().items() if k != "Resource"}),
        doc({k: v for k, v in allow().items() if k != "Action"}),
        doc({**allow(), "NotAction": "kms:Encrypt"}),
        doc({**allow(), "NotPrincipal": {"AWS": ROLE}}),
        doc(allow(principal={"AWS": "not-an-arn"})),
        doc(allow(principal={"AWS": []})),
        doc(allow(principal={"Federated": "x"})),
        doc(allow(principal="someone")),
        doc(allow(action="Decrypt")),
        doc(allow(action=5)),
        doc(allow(Condition={"StringEquals": "x"})),
        doc(allow(Condition={"StringEquals": {IMAGE: 5}})),
        doc(allow(Condition=[])),
        '{"Statement": [' + ",".join([json.dumps(allow())] * 65) + "]}",
        json.dumps({"Statement": [allow()], "Id": "x" * 40000}),
        '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": '
        "NaN}]}",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_parse_accepts_the_usual_shapes() -> None:
    single = json.dumps({"Statement": allow()})  # a lone statement object, Version omitted
    assert len(parse_policy(single).statements) == 1
    full = parse_policy(
        doc(
            allow(principal={"AWS": [ROLE, ADMIN, ACCOUNT]}, action=["kms:Decrypt", "kms:Gen*"]),
            {**deny(), "Sid": "x", "Condition": {"Bool": {"aws:SecureTransport": False}}},
            allow(principal={"Service": "ec2.amazonaws.com"}),
            not_action("kms:Encrypt"),
        )
    )
    first, second, service, negated = full.statements
    assert first.principals == (ROLE, ADMIN, ACCOUNT)
    assert second.conditions == (Condition("Bool", "aws:securetransport", ("false",)),)
    assert service.principals == ()
    assert negated.not_action
    assert negated.actions == ("kms:Encrypt",)


def test_default_key_policy_names_only_the_admin() -> None:
    policy = parse_policy(default_key_policy(ADMIN))
    assert evaluate(policy, ctx(ADMIN, "kms:PutKeyPolicy")) is Decision.ALLOW
    assert evaluate(policy, ctx(ADMIN, "kms:Decrypt")) is Decision.ALLOW
    assert evaluate(policy, ctx(ROLE, "kms:Decrypt")) is Decision.IMPLICIT_DENY
    assert "root" not in default_key_policy(ADMIN)


# --------------------------------------------------------------- evaluation

ATTESTED = {"StringEqualsIgnoreCase": {IMAGE: [GOOD]}}
NOT_ATTESTED = {"StringNotEqualsIgnoreCase": {IMAGE: [GOOD]}}

TABLE: list[tuple[str, list[dict[str, Any]], RequestContext, Decision]] = [
    ("empty policy", [allow(principal={"AWS": ADMIN})], ctx(), Decision.IMPLICIT_DENY),
    ("exact principal", [allow()], ctx(), Decision.ALLOW),
    ("star principal", [allow(principal="*")], ctx(STRANGER), Decision.ALLOW),
    ("AWS star principal", [allow(principal={"AWS": "*"})], ctx(STRANGER), Decision.ALLOW),
    (
        "root grants the account",
        [allow(principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"})],
        ctx(),
        Decision.ALLOW,
    ),
    (
        "bare account id grants the account",
        [allow(principal={"AWS": ACCOUNT})],
        ctx(ADMIN),
        Decision.ALLOW,
    ),
    (
        "root of another account",
        [allow(principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"})],
        ctx(STRANGER),
        Decision.IMPLICIT_DENY,
    ),
    ("other principal", [allow(principal={"AWS": ADMIN})], ctx(ROLE), Decision.IMPLICIT_DENY),
    ("action wildcard", [allow(action="kms:*")], ctx(), Decision.ALLOW),
    (
        "action prefix wildcard",
        [allow(action="kms:Generate*")],
        ctx(action="kms:GenerateDataKey"),
        Decision.ALLOW,
    ),
    ("action prefix wildcard miss", [allow(action="kms:Generate*")], ctx(), Decision.IMPLICIT_DENY),
    ("action case-insensitive", [allow(action="KMS:decrypt")], ctx(), Decision.ALLOW),
    ("action ? wildcard", [allow(action="kms:?ecrypt")], ctx(), Decision.ALLOW),
    ("global star action", [allow(action="*")], ctx(), Decision.ALLOW),
    ("NotAction excludes", [not_action("kms:Decrypt")], ctx(), Decision.IMPLICIT_DENY),
    ("NotAction includes others", [not_action("kms:Encrypt")], ctx(), Decision.ALLOW),
    ("resource is this key", [allow(Resource=KEY)], ctx(), Decision.ALLOW),
    ("resource is another key", [allow(Resource=OTHER_KEY)], ctx(), Decision.IMPLICIT_DENY),
    (
        "resource wildcard",
        [allow(Resource=f"arn:aws:kms:*:{ACCOUNT}:key/*")],
        ctx(),
        Decision.ALLOW,
    ),
    ("attested: no recipient", [allow(Condition=ATTESTED)], ctx(), Decision.IMPLICIT_DENY),
    ("attested: good", [allow(Condition=ATTESTED)], ctx(pcr0=GOOD), Decision.ALLOW),
    (
        "attested: uppercase in policy",
        [allow(Condition={"StringEqualsIgnoreCase": {IMAGE: GOOD.upper()}})],
        ctx(pcr0=GOOD),
        Decision.ALLOW,
    ),
    (
        "attested: case-sensitive StringEquals",
        [allow(Condition={"StringEquals": {IMAGE: GOOD.upper()}})],
        ctx(pcr0=GOOD),
        Decision.IMPLICIT_DENY,
    ),
    ("attested: bad pcr0", [allow(Condition=ATTESTED)], ctx(pcr0=BAD), Decision.IMPLICIT_DENY),
    (
        "attested: zero pcr0",
        [allow(Condition=ATTESTED)],
        ctx(pcr0="00" * 48),
        Decision.IMPLICIT_DENY,
    ),
    (
        "values ORed",
        [allow(Condition={"StringEquals": {IMAGE: [BAD, GOOD]}})],
        ctx(pcr0=GOOD),
        Decision.ALLOW,
    ),
    (
        "keys ANDed",
        [allow(Condition={"StringEquals": {IMAGE: GOOD, "kms:EncryptionContext:acct": "1"}})],
        ctx(pcr0=GOOD, context={"acct": "2"}),
        Decision.IMPLICIT_DENY,
    ),
    (
        "keys ANDed, both hold",
        [allow(Condition={"StringEquals": {IMAGE: GOOD, "kms:EncryptionContext:acct": "1"}})],
        ctx(pcr0=GOOD, context={"acct": "1"}),
        Decision.ALLOW,
    ),
    (
        "condition key case-insensitive",
        [allow(Condition={"StringEquals": {"KMS:RECIPIENTATTESTATION:IMAGESHA384": GOOD}})],
        ctx(pcr0=GOOD),
        Decision.ALLOW,
    ),
    (
        "StringLike",
        [allow(Condition={"StringLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/nitro-*"}})],
        ctx(),
        Decision.ALLOW,
    ),
    (
        "StringLike miss",
        [allow(Condition={"StringLike": {"aws:PrincipalArn": "*:user/*"}})],
        ctx(),
        Decision.IMPLICIT_DENY,
    ),
    (
        "StringNotEquals on absent key holds",
        [allow(Condition={"StringNotEquals": {IMAGE: BAD}})],
        ctx(),
        Decision.ALLOW,
    ),
    (
        "StringEqualsIfExists on absent key holds",
        [allow(Condition={"StringEqualsIfExists": {IMAGE: GOOD}})],
        ctx(),
        Decision.ALLOW,
    ),
    (
        "StringEqualsIfExists on present key compares",
        [allow(Condition={"StringEqualsIfExists": {IMAGE: GOOD}})],
        ctx(pcr0=BAD),
        Decision.IMPLICIT_DENY,
    ),
    ("Null true on absent", [allow(Condition={"Null": {IMAGE: "true"}})], ctx(), Decision.ALLOW),
    (
        "Null true on present",
        [allow(Condition={"Null": {IMAGE: "true"}})],
        ctx(pcr0=GOOD),
        Decision.IMPLICIT_DENY,
    ),
    (
        "Null false on present",
        [allow(Condition={"Null": {IMAGE: False}})],
        ctx(pcr0=GOOD),
        Decision.ALLOW,
    ),
    (
        "Bool",
        [allow(Condition={"Bool": {"kms:GrantIsForAWSResource": True}})],
        ctx(),
        Decision.IMPLICIT_DENY,
    ),
    (
        "CallerAccount",
        [allow(principal="*", Condition={"StringEquals": {"kms:CallerAccount": ACCOUNT}})],
        ctx(STRANGER),
        Decision.IMPLICIT_DENY,
    ),
    (
        "ViaService is absent",
        [allow(Condition={"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}})],
        ctx(),
        Decision.IMPLICIT_DENY,
    ),
    (
        "ForAnyValue context keys",
        [allow(Condition={"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["acct"]}})],
        ctx(context={"acct": "1", "x": "2"}),
        Decision.ALLOW,
    ),
    (
        "ForAllValues context keys",
        [allow(Condition={"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["acct"]}})],
        ctx(context={"acct": "1", "x": "2"}),
        Decision.IMPLICIT_DENY,
    ),
    (
        "ForAllValues holds",
        [
            allow(
                Condition={
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["acct", "x"]}
                }
            )
        ],
        ctx(context={"acct": "1", "x": "2"}),
        Decision.ALLOW,
    ),
    (
        "unknown operator never allows",
        [allow(Condition={"BinaryEquals": {IMAGE: GOOD}})],
        ctx(pcr0=GOOD),
        Decision.IMPLICIT_DENY,
    ),
    (
        "unknown qualifier never allows",
        [allow(Condition={"ForSomeValues:StringEquals": {IMAGE: GOOD}})],
        ctx(pcr0=GOOD),
        Decision.IMPLICIT_DENY,
    ),
    (
        "Null with bad value never allows",
        [allow(Condition={"Null": {IMAGE: "maybe"}})],
        ctx(),
        Decision.IMPLICIT_DENY,
    ),
    (
        "unknown operator in a deny matches",
        [allow(), deny(Condition={"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}})],
        ctx(),
        Decision.EXPLICIT_DENY,
    ),
    ("explicit deny wins", [allow(), deny()], ctx(), Decision.EXPLICIT_DENY),
    (
        "deny wins whatever the order",
        [deny(), allow(action="kms:*")],
        ctx(),
        Decision.EXPLICIT_DENY,
    ),
    (
        "deny for other action does not apply",
        [allow(), deny(action="kms:Encrypt")],
        ctx(),
        Decision.ALLOW,
    ),
    (
        "deny unattested hits plain call",
        [allow(), deny(Condition=NOT_ATTESTED)],
        ctx(),
        Decision.EXPLICIT_DENY,
    ),
    (
        "deny unattested hits bad pcr0",
        [allow(), deny(Condition=NOT_ATTESTED)],
        ctx(pcr0=BAD),
        Decision.EXPLICIT_DENY,
    ),
    (
        "deny unattested spares good pcr0",
        [allow(), deny(Condition=NOT_ATTESTED)],
        ctx(pcr0=GOOD),
        Decision.ALLOW,
    ),
    (
        "deny for a named principal only",
        [allow(principal="*"), deny(principal={"AWS": ADMIN})],
        ctx(ROLE),
        Decision.ALLOW,
    ),
]


@pytest.mark.parametrize(
    ("statements", "request_ctx", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_policy_decision_table(
    statements: list[dict[str, Any]], request_ctx: RequestContext, expected: Decision
) -> None:
    assert evaluate(parse_policy(doc(*statements)), request_ctx) is expected


def test_evaluate_condition_reports_unknown_operators() -> None:
    keys = {"k": ("v",)}
    assert evaluate_condition(Condition("StringEquals", "k", ("v",)), keys) is True
    assert evaluate_condition(Condition("StringEquals", "k", ("w",)), keys) is False
    assert evaluate_condition(Condition("ArnLike", "k", ("v",)), keys) is None
    assert evaluate_condition(Condition("ArnLike", "absent", ("v",)), keys) is None
    assert evaluate_condition(Condition("NullIfExists", "k", ("true",)), keys) is None
    assert evaluate_condition(Condition("ForAnyValue:Bool", "k", ("true",)), keys) is None


def test_wildcards_do_not_behave_as_regex() -> None:
    policy = parse_policy(
        doc(allow(Condition={"StringLike": {"kms:EncryptionContext:acct": "a.c[1]*"}}))
    )
    assert evaluate(policy, ctx(context={"acct": "a.c[1]-x"})) is Decision.ALLOW
    assert evaluate(policy, ctx(context={"acct": "abc1-x"})) is Decision.IMPLICIT_DENY


# ------------------------------------------------- sealed mode and deletion window

PCR8_KEY = "kms:RecipientAttestation:PCR8"
RELEASE = "c3" * 48
OTHER_RELEASE = "d4" * 48
SEALED_DENY = deny(
    action=["kms:Decrypt", "kms:GenerateDataKey*"],
    Condition={"StringNotEqualsIgnoreCase": {PCR8_KEY: [RELEASE]}},
)
SEALED_ALLOW = allow(
    action=["kms:Decrypt", "kms:GenerateDataKey"],
    Condition={"StringEqualsIgnoreCase": {PCR8_KEY: [RELEASE]}},
)


@pytest.mark.parametrize(
    ("label", "context", "expected"),
    [
        ("release certificate", ctx(pcr0=GOOD, pcr8=RELEASE.upper()), Decision.ALLOW),
        ("another certificate", ctx(pcr0=GOOD, pcr8=OTHER_RELEASE), Decision.EXPLICIT_DENY),
        ("unsigned image (zero PCR8)", ctx(pcr0=GOOD, pcr8="00" * 48), Decision.EXPLICIT_DENY),
        ("no attestation", ctx(), Decision.EXPLICIT_DENY),
        (
            "no attestation, admin holding kms:*",
            ctx(principal=ADMIN, action="kms:Decrypt"),
            Decision.EXPLICIT_DENY,
        ),
    ],
)
def test_the_sealed_deny_covers_a_missing_and_a_wrong_pcr8(
    label: str, context: RequestContext, expected: Decision
) -> None:
    policy = parse_policy(
        doc(SEALED_ALLOW, allow(principal={"AWS": ADMIN}, action="kms:*"), SEALED_DENY)
    )
    assert evaluate(policy, context) is expected, label


WINDOW = "kms:ScheduleKeyDeletionPendingWindowInDays"


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("7", Decision.EXPLICIT_DENY),
        ("29", Decision.EXPLICIT_DENY),
        ("30", Decision.ALLOW),
        (None, Decision.ALLOW),
    ],
)
def test_numeric_conditions_guard_the_deletion_window(days: str | None, expected: Decision) -> None:
    policy = parse_policy(
        doc(
            allow(action="kms:ScheduleKeyDeletion"),
            deny(action="kms:ScheduleKeyDeletion", Condition={"NumericLessThan": {WINDOW: 30}}),
        )
    )
    extra = {} if days is None else {WINDOW: days}
    assert evaluate(policy, ctx(action="kms:ScheduleKeyDeletion", extra=extra)) is expected


@pytest.mark.parametrize(
    ("operator", "value", "request_value", "holds"),
    [
        ("NumericEquals", "30", "30", True),
        ("NumericNotEquals", "30", "30", False),
        ("NumericLessThanEquals", "30", "30", True),
        ("NumericGreaterThan", "7", "30", True),
        ("NumericGreaterThanEquals", "31", "30", False),
        ("NumericLessThan", "30", "not-a-number", False),
    ],
)
def test_numeric_operators(operator: str, value: str, request_value: str, holds: bool) -> None:
    condition = Condition(operator, WINDOW.lower(), (value,))
    assert evaluate_condition(condition, {WINDOW.lower(): (request_value,)}) is holds
    assert evaluate_condition(condition, {}) is False
    assert (
        evaluate_condition(Condition(operator + "IfExists", WINDOW.lower(), (value,)), {}) is True
    )


def test_numeric_conditions_need_numbers() -> None:
    with pytest.raises(PolicyError, match="needs numbers"):
        parse_policy(doc(allow(Condition={"NumericLessThan": {WINDOW: "thirty"}})))


def test_an_attestation_key_kms_does_not_define_fails_closed() -> None:
    made_up = "kms:RecipientAttestation:PCR99"
    assert evaluate_condition(Condition("StringEquals", made_up.lower(), (GOOD,)), {}) is None
    allowing = parse_policy(doc(allow(Condition={"StringEquals": {made_up: GOOD}})))
    assert evaluate(allowing, ctx(pcr0=GOOD, extra={made_up: GOOD})) is Decision.IMPLICIT_DENY
    denying = parse_policy(doc(allow(), deny(Condition={"StringEquals": {made_up: "nothing"}})))
    assert evaluate(denying, ctx(pcr0=GOOD)) is Decision.EXPLICIT_DENY
