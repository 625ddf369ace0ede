"""KMS key policy parsing and evaluation (pure functions, no I/O).

Semantics follow AWS where this simulator implements a feature, and fail closed where
it does not:

- An explicit Deny wins over any Allow; without a matching Allow the answer is an
  implicit deny.
- A statement applies when its Principal, Action (or NotAction), Resource and every
  Condition match.
- `arn:aws:iam::ACCOUNT:root` (or the bare account id) as principal grants every
  principal of that account, as if each had an IAM policy allowing `kms:*`: the worst
  case, on purpose, so that a policy relying on IAM for containment fails in tests.
- Condition keys are case-insensitive; values are case-sensitive unless the operator
  says otherwise. Several values for one key are ORed, several keys and operators ANDed.
- A key absent from the request context makes a positive operator false, a negated one
  (StringNotEquals, StringNotLike, ...) true, as AWS documents; `...IfExists` makes an
  absent key true; `Null` tests presence.
- Numeric operators (NumericEquals, NumericLessThan, ... and their IfExists forms)
  compare numbers; a policy value that is not a number is malformed.
- An operator this module does not know, or an attestation condition key it does not
  know (``kms:RecipientAttestation:`` other than ImageSha384 and PCR0..PCR31), makes
  the statement not match when it allows, and match when it denies (fail closed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_POLICY_BYTES = 32 * 1024
MAX_STATEMENTS = 64
_VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = frozenset(
    {"Sid", "Effect", "Principal", "Action", "NotAction", "Resource", "Condition"}
)
_PRINCIPAL_RE = re.compile(
    r"\A(\*|[0-9]{12}|arn:aws:iam::[0-9]{12}:(root|(user|role)/[A-Za-z0-9+=,.@_/*-]{1,128}))\Z"
)
_ACTION_RE = re.compile(r"\A(\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+)\Z")
_ATTESTATION_PREFIX = "kms:recipientattestation:"
_ATTESTATION_KEY_RE = re.compile(
    r"\Akms:recipientattestation:(imagesha384|pcr([0-9]|[12][0-9]|3[01]))\Z"
)
_NUMBER_RE = re.compile(r"\A-?[0-9]{1,18}(\.[0-9]{1,18})?\Z")


class PolicyError(ValueError):
    """The policy document is malformed (MalformedPolicyDocumentException)."""


class Effect(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


class Decision(StrEnum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit_deny"
    IMPLICIT_DENY = "implicit_deny"


@dataclass(frozen=True)
class Condition:
    operator: str  # as written, e.g. "ForAnyValue:StringEqualsIgnoreCase"
    key: str  # lowercased
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    effect: Effect
    principals: tuple[str, ...]  # "*" or ARNs / account ids; empty = service-only principal
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...]
    sid: str | None = None


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    version: str = "2012-10-17"


@dataclass(frozen=True)
class RequestContext:
    """What a request looks like to the policy evaluator.

    `condition_keys` maps lowercased condition key names to their values; a key that
    is absent from the mapping is absent from the request.
    """

    principal_arn: str
    action: str  # e.g. "kms:Decrypt"
    resource: str  # the key ARN, or "*" for account-level operations
    condition_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def principal_account(self) -> str:
        parts = self.principal_arn.split(":")
        return parts[4] if len(parts) > 5 else ""


# ---------------------------------------------------------------------------- parsing


def _strings(
    value: Any, what: str, *, allow_empty: bool = False, numbers: bool = False
) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise PolicyError(f"{what} must not be empty")
    if len(items) > 256:
        raise PolicyError(f"{what} has too many values")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif numbers and isinstance(item, int) and abs(item) < 10**18:
            out.append(str(item))
        elif isinstance(item, str) and 0 < len(item) <= 2048:
            out.append(item)
        else:
            raise PolicyError(f"{what} must be a string or a list of strings")
    return tuple(out)


def _parse_principal(raw: Any) -> tuple[str, ...]:
    if raw == "*":
        return ("*",)
    if not isinstance(raw, dict) or not raw:
        raise PolicyError('Principal must be "*" or an object such as {"AWS": ...}')
    principals: list[str] = []
    for kind, value in raw.items():
        if kind == "AWS":
            for arn in _strings(value, "Principal.AWS"):
                if not _PRINCIPAL_RE.match(arn):
                    raise PolicyError(
                        "Policy contains a statement with one or more invalid principals"
                    )
                principals.append(arn)
        elif kind == "Service":
            _strings(value, "Principal.Service")  # valid, but no simulated caller is a service
        else:
            raise PolicyError(f"unsupported principal type {kind!r}")
    return tuple(principals)


def _parse_conditions(raw: Any) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise PolicyError("Condition must be an object")
    out: list[Condition] = []
    for operator, block in raw.items():
        if not isinstance(operator, str) or not 0 < len(operator) <= 128:
            raise PolicyError("bad condition operator")
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"condition {operator} must map keys to values")
        for key, values in block.items():
            if not isinstance(key, str) or not 0 < len(key) <= 256:
                raise PolicyError("bad condition key")
            parsed = _parse_operator(operator)
            numeric = parsed is not None and parsed[1] in _NUMERIC_OPS
            strings = _strings(values, f"condition {key}", numbers=numeric)
            condition = Condition(operator, key.lower(), strings)
            if numeric and not all(_NUMBER_RE.match(v) for v in condition.values):
                raise PolicyError(f"condition {operator} on {key} needs numbers")
            out.append(condition)
    return tuple(out)


def _parse_statement(raw: Any) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError("each Statement must be an object")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyError(f"unsupported statement element(s): {', '.join(sorted(unknown))}")
    sid = raw.get("Sid")
    if sid is not None and not (isinstance(sid, str) and len(sid) <= 128):
        raise PolicyError("Sid must be a string")
    try:
        effect = Effect(str(raw.get("Effect")))
    except ValueError:
        raise PolicyError('Effect must be "Allow" or "Deny"') from None
    if "Principal" not in raw:
        raise PolicyError("a key policy statement needs a Principal")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError("a statement needs exactly one of Action and NotAction")
    not_action = "NotAction" in raw
    actions = _strings(raw["NotAction" if not_action else "Action"], "Action")
    for action in actions:
        if not _ACTION_RE.match(action):
            raise PolicyError(f"invalid action {action!r}")
    if "Resource" not in raw:
        raise PolicyError("a statement needs a Resource")
    return Statement(
        effect=effect,
        principals=_parse_principal(raw["Principal"]),
        actions=actions,
        not_action=not_action,
        resources=_strings(raw["Resource"], "Resource"),
        conditions=_parse_conditions(raw.get("Condition", {})),
        sid=sid,
    )


def parse_policy(text: str) -> Policy:
    """Parse and validate a key policy document; raise PolicyError if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("the policy must be a non-empty string")
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise PolicyError("the policy exceeds 32 KiB")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise PolicyError("the policy is not valid JSON") from None
    if not isinstance(raw, dict):
        raise PolicyError("the policy must be a JSON object")
    unknown = set(raw) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"unsupported policy element(s): {', '.join(sorted(unknown))}")
    version = raw.get("Version", "2008-10-17")
    if version not in _VERSIONS:
        raise PolicyError("unsupported policy Version")
    statements = raw.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not 0 < len(statements) <= MAX_STATEMENTS:
        raise PolicyError("Statement must be a non-empty list")
    return Policy(tuple(_parse_statement(s) for s in statements), str(version))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -------------------------------------------------------------------------- matching


def _glob(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM wildcard match: `*` any run of characters, `?` exactly one."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    flags = re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL
    return re.fullmatch(regex, value, flags) is not None


def _principal_matches(statement: Statement, ctx: RequestContext) -> bool:
    for principal in statement.principals:
        if principal in ("*", ctx.principal_arn):
            return True
        account = principal if principal.isdigit() else None
        if principal.endswith(":root"):
            account = principal.split(":")[4]
        if account is not None and account == ctx.principal_account:
            return True
        if "*" in principal and _glob(principal, ctx.principal_arn, ignore_case=False):
            return True
    return False


def _action_matches(statement: Statement, ctx: RequestContext) -> bool:
    hit = any(_glob(a, ctx.action, ignore_case=True) for a in statement.actions)
    return not hit if statement.not_action else hit


def _resource_matches(statement: Statement, ctx: RequestContext) -> bool:
    return any(r == "*" or _glob(r, ctx.resource, ignore_case=False) for r in statement.resources)


_STRING_OPS: dict[str, tuple[bool, bool, bool]] = {
    # name: (negated, ignore_case, like)
    "stringequals": (False, False, False),
    "stringnotequals": (True, False, False),
    "stringequalsignorecase": (False, True, False),
    "stringnotequalsignorecase": (True, True, False),
    "stringlike": (False, False, True),
    "stringnotlike": (True, False, True),
    "bool": (False, True, False),
}


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    # name: compare(request value, policy value)
    "numericequals": lambda a, b: a == b,
    "numericnotequals": lambda a, b: a != b,
    "numericlessthan": lambda a, b: a < b,
    "numericlessthanequals": lambda a, b: a <= b,
    "numericgreaterthan": lambda a, b: a > b,
    "numericgreaterthanequals": lambda a, b: a >= b,
}


def _value_matches(policy_value: str, value: str, *, ignore_case: bool, like: bool) -> bool:
    if like:
        return _glob(policy_value, value, ignore_case=ignore_case)
    if ignore_case:
        return policy_value.casefold() == value.casefold()
    return policy_value == value


def _parse_operator(operator: str) -> tuple[str, str, bool] | None:
    """(qualifier, operator name, IfExists) in lowercase; None if not understood."""
    qualifier, _, name = operator.lower().rpartition(":")
    if qualifier not in ("", "foranyvalue", "forallvalues"):
        return None
    if_exists = name.endswith("ifexists")
    name = name.removesuffix("ifexists")
    if name == "null":
        return (qualifier, name, False) if not (qualifier or if_exists) else None
    if name in _NUMERIC_OPS:
        return (qualifier, name, if_exists) if not qualifier else None
    if name not in _STRING_OPS or (name == "bool" and qualifier):
        return None
    return qualifier, name, if_exists


def _evaluate_null(condition: Condition, present: bool) -> bool | None:
    if len(condition.values) != 1 or condition.values[0].lower() not in ("true", "false"):
        return None
    return (not present) == (condition.values[0].lower() == "true")


def evaluate_condition(condition: Condition, keys: Mapping[str, tuple[str, ...]]) -> bool | None:
    """True/False for a known operator, None for an operator this module does not know."""
    parsed = _parse_operator(condition.operator)
    unknown_key = condition.key.startswith(_ATTESTATION_PREFIX) and not (
        _ATTESTATION_KEY_RE.match(condition.key)
    )
    if parsed is None or unknown_key:
        return None  # an operator or attestation key KMS does not define: never a silent pass
    qualifier, name, if_exists = parsed
    present = condition.key in keys
    if name == "null":
        return _evaluate_null(condition, present)
    if name in _NUMERIC_OPS:
        return _evaluate_numeric(condition, name, keys, if_exists)
    negated, ignore_case, like = _STRING_OPS[name]
    if not present:
        # AWS: IfExists and ForAllValues hold on an absent key, and so does a negated
        # operator (except under ForAnyValue); everything else fails.
        return if_exists or qualifier == "forallvalues" or (negated and qualifier != "foranyvalue")

    def test(value: str) -> bool:
        hit = any(
            _value_matches(p, value, ignore_case=ignore_case, like=like) for p in condition.values
        )
        return not hit if negated else hit

    values = keys[condition.key]
    if qualifier == "forallvalues":
        return all(test(v) for v in values)
    # Single-valued keys and ForAnyValue: some context value passes.
    return any(test(v) for v in values)


def _evaluate_numeric(
    condition: Condition, name: str, keys: Mapping[str, tuple[str, ...]], if_exists: bool
) -> bool:
    """Absent key: only the IfExists form holds (AWS); a non-numeric value never matches."""
    if condition.key not in keys:
        return if_exists
    compare = _NUMERIC_OPS[name]
    for value in keys[condition.key]:
        if not _NUMBER_RE.match(value):
            return False
        if any(compare(float(value), float(p)) for p in condition.values):
            return True
    return False


def _conditions_hold(statement: Statement, ctx: RequestContext) -> bool:
    results = [evaluate_condition(c, ctx.condition_keys) for c in statement.conditions]
    if any(r is None for r in results):
        # Unknown operator: fail closed for this statement's effect.
        return statement.effect is Effect.DENY
    return all(results)


def statement_applies(statement: Statement, ctx: RequestContext) -> bool:
    return (
        _principal_matches(statement, ctx)
        and _action_matches(statement, ctx)
        and _resource_matches(statement, ctx)
        and _conditions_hold(statement, ctx)
    )


def evaluate(policy: Policy, ctx: RequestContext) -> Decision:
    """Explicit deny > allow > implicit deny."""
    allowed = False
    for statement in policy.statements:
        if not statement_applies(statement, ctx):
            continue
        if statement.effect is Effect.DENY:
            return Decision.EXPLICIT_DENY
        allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def default_key_policy(admin_arn: str) -> str:
    """The policy CreateKey installs without a Policy: the administrator gets kms:*.

    Unlike AWS's default this does NOT delegate to the account root, so nothing but
    the administrator can use the key until a real policy is put.
    """
    document = {
        "Version": "2012-10-17",
        "Id": "nitro-sim-default",
        "Statement": [
            {
                "Sid": "KeyAdministrator",
                "Effect": "Allow",
                "Principal": {"AWS": admin_arn},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    return json.dumps(document, indent=2)
