"""Render and validate the KMS key policy (templates/kms_key_policy.json.j2).

The policy is the lock of the appliance. It comes in two modes:

``sealed`` (the default for AWS)
    The enclave statement pins PCR8, the measure of the release signing certificate
    (``kms:RecipientAttestation:PCR8``), optionally with a PCR0 list as well. No
    principal holds ``kms:PutKeyPolicy`` and an explicit Deny forbids
    ``kms:ScheduleKeyDeletion``, so the policy is applied once with the lockout safety
    check bypassed, on purpose. Administrators keep describe, tag, enable and disable.
    A new release signed with the same certificate decrypts with no policy change.
``pcr0``
    Explicit image pinning (``kms:RecipientAttestation:ImageSha384``). Administrators
    keep ``kms:PutKeyPolicy``, so they can rewrite the lock and decrypt: the validator
    says so in a warning. Only a separate break-glass principal may schedule deletion,
    and a Deny refuses a pending window shorter than 30 days.

Whoever rendered a policy (the Ansible kms_key_policy role, ``make dev``, an operator),
it is validated before it is applied. Each refusal names its rule:

``policy-shape``           not a policy document this validator can read
``open-principal``         an Allow for ``"*"``
``not-action``             NotAction/NotPrincipal in an Allow: too broad to audit
``unattested-data-keys``   an Allow of data-key actions without an attestation pin
``admin-enclave-overlap``  a principal both administers the key and decrypts with it
``missing-deny``           no Deny for every principal whose StringNotEqualsIgnoreCase
                           covers each measurement the enclave statement pins
``deny-mismatch``          the Deny and the enclave statement allow different values
``empty-allowed-list``     an attestation pin with no value
``bad-measurement``        a value that is not 96 hex digits
``debug-measurement``      the all-zero value of a debug-mode enclave (or an unsigned
                           image's PCR8), unless debug is explicitly allowed
``sealed-policy-holder``   sealed mode and some principal holds kms:PutKeyPolicy
                           (kms:*, kms:Put*, ... included)
``key-deletion``           sealed: deletion allowed or its Deny missing; pcr0:
                           deletion granted to anyone but a separate break-glass
                           principal, or without the 30-day window Deny
``mode-mismatch``          the policy is not in the mode the caller requires

Usable as a library, from the Ansible filter plugin, and as
``nitro-wallet key-policy validate FILE [--mode sealed|pcr0] [--allow-debug]``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_NAME = "kms_key_policy.json.j2"
# In the operator wheel the template is package data; in a checkout it is templates/.
_TEMPLATE_DIRS = (
    Path(__file__).resolve().parent / "templates",
    Path(__file__).resolve().parent.parent / "templates",
)
SEALED = "sealed"
PCR0 = "pcr0"
MODES = (SEALED, PCR0)
MIN_DELETION_WINDOW_DAYS = 30
ZERO_MEASUREMENT = "0" * 96

RULE_SHAPE = "policy-shape"
RULE_OPEN_PRINCIPAL = "open-principal"
RULE_NOT_ACTION = "not-action"
RULE_UNATTESTED = "unattested-data-keys"
RULE_OVERLAP = "admin-enclave-overlap"
RULE_MISSING_DENY = "missing-deny"
RULE_DENY_MISMATCH = "deny-mismatch"
RULE_EMPTY = "empty-allowed-list"
RULE_BAD_MEASUREMENT = "bad-measurement"
RULE_DEBUG = "debug-measurement"
RULE_POLICY_HOLDER = "sealed-policy-holder"
RULE_DELETION = "key-deletion"
RULE_MODE = "mode-mismatch"

DATA_KEY_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:CreateGrant",
    # A replica of a multi-Region key shares the key material under a policy that its
    # creator writes: as good as Decrypt.
    "kms:ReplicateKey",
    "kms:UpdatePrimaryRegion",
)
ATTESTABLE_ACTIONS = frozenset({"kms:decrypt", "kms:generatedatakey"})
# Actions that only read: granting them makes nobody an administrator.
READ_ONLY_ACTIONS = ("kms:Describe*", "kms:Get*", "kms:List*")
DELETION_ACTIONS = ("kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion")
ALLOW_OPERATORS = frozenset({"stringequals", "stringequalsignorecase"})
DENY_OPERATORS = frozenset({"stringnotequals", "stringnotequalsignorecase"})
WINDOW_KEY = "kms:schedulekeydeletionpendingwindowindays"
_ATTESTATION_KEY_RE = re.compile(
    r"\Akms:recipientattestation:(imagesha384|pcr([0-9]|[12][0-9]|3[01]))\Z"
)
_MEASUREMENT_RE = re.compile(r"\A[0-9a-fA-F]{96}\Z")


@dataclass(frozen=True)
class Problem:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


class KeyPolicyError(ValueError):
    """The policy must not be applied. ``problems`` lists every reason, rule first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.details = list(problems)
        self.problems = [str(p) for p in problems]
        self.rules = sorted({p.rule for p in problems})
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class KeyPolicySummary:
    """What a valid policy allows: mode, pinned measurements, who is who, warnings."""

    mode: str
    measurements: Mapping[str, list[str]]  # "PCR0"/"PCR8"/... -> allowed values
    admin_arns: list[str]
    enclave_arns: list[str]
    break_glass_arns: list[str]
    policy_holders: list[str]  # principals that hold kms:PutKeyPolicy
    warnings: list[str] = field(default_factory=list)

    @property
    def pcr0s(self) -> list[str]:
        return list(self.measurements.get("PCR0", []))

    @property
    def pcr8s(self) -> list[str]:
        return list(self.measurements.get("PCR8", []))

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "mode": self.mode,
            "pcr0s": self.pcr0s,
            "pcr8s": self.pcr8s,
            "measurements": {k: list(v) for k, v in sorted(self.measurements.items())},
            "admin_arns": self.admin_arns,
            "enclave_arns": self.enclave_arns,
            "break_glass_arns": self.break_glass_arns,
            "policy_holders": self.policy_holders,
            "warnings": self.warnings,
        }


# ------------------------------------------------------------------------ rendering


def _normalized(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, str):
        raise KeyPolicyError([Problem(RULE_SHAPE, f"{what} must be a list, not a string")])
    items = list(values)
    if not all(isinstance(v, str) and v for v in items):
        raise KeyPolicyError([Problem(RULE_SHAPE, f"{what} must be non-empty strings")])
    return sorted(set(items))


def render_key_policy(
    *,
    admin_arns: Iterable[str],
    enclave_arns: Iterable[str],
    mode: str = SEALED,
    pcr8s: Iterable[str] = (),
    pcr0s: Iterable[str] = (),
    break_glass_arns: Iterable[str] = (),
    template_path: Path | None = None,
) -> dict[str, Any]:
    """Render the template (plain Jinja2, StrictUndefined) into a policy document.

    sealed needs ``pcr8s`` (``pcr0s`` optional, they pin images as well); pcr0 needs
    ``pcr0s`` and takes no ``pcr8s``; ``break_glass_arns`` exist in pcr0 mode only.
    The result still has to pass ``validate_key_policy``.
    """
    if mode not in MODES:
        raise KeyPolicyError([Problem(RULE_MODE, f"mode must be one of {MODES}, not {mode!r}")])
    pcr8_list = [v.lower() for v in _normalized(pcr8s, "pcr8s")]
    pcr0_list = [v.lower() for v in _normalized(pcr0s, "pcr0s")]
    glass = _normalized(break_glass_arns, "break_glass_arns")
    if mode == SEALED and not pcr8_list:
        raise KeyPolicyError(
            [Problem(RULE_EMPTY, "sealed mode needs the PCR8 of the release certificate")]
        )
    if mode == PCR0 and (pcr8_list or not pcr0_list):
        raise KeyPolicyError(
            [Problem(RULE_EMPTY, "pcr0 mode needs at least one PCR0 and takes no PCR8")]
        )
    if mode == SEALED and glass:
        raise KeyPolicyError(
            [Problem(RULE_DELETION, "sealed mode: nobody may schedule the key's deletion")]
        )
    template = template_path or next(
        (d / TEMPLATE_NAME for d in _TEMPLATE_DIRS if (d / TEMPLATE_NAME).is_file()),
        _TEMPLATE_DIRS[-1] / TEMPLATE_NAME,
    )
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders JSON, not HTML
        keep_trailing_newline=True,
    )
    text = environment.get_template(template.name).render(
        key_policy_mode=mode,
        key_policy_admin_arns=_normalized(admin_arns, "admin_arns"),
        key_policy_enclave_arns=_normalized(enclave_arns, "enclave_arns"),
        key_policy_pcr8s=sorted(set(pcr8_list)),
        key_policy_pcr0s=sorted(set(pcr0_list)),
        key_policy_break_glass_arns=glass,
    )
    policy = json.loads(text)
    if not isinstance(policy, dict):
        raise KeyPolicyError([Problem(RULE_SHAPE, "the template did not render a JSON object")])
    return policy


# ----------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Statement:
    label: str
    effect: str
    principals: tuple[str, ...]  # "*" for an open principal
    actions: tuple[str, ...]
    conditions: Mapping[str, Mapping[str, list[str]]]  # operator -> key -> values (lowered)
    not_action: bool
    resources: tuple[str, ...] = ("*",)

    def grants(self, action: str) -> bool:
        hit = any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in self.actions)
        return not hit if self.not_action else hit

    @property
    def open(self) -> bool:
        return "*" in self.principals

    @property
    def whole_key(self) -> bool:
        """In a key policy, Resource "*" is the key itself; anything else may miss it."""
        return "*" in self.resources

    def only_grants(self, allowed: Iterable[str]) -> bool:
        patterns = [a.lower() for a in allowed]
        return not self.not_action and all(
            any(fnmatch.fnmatchcase(a.lower(), p) for p in patterns) for a in self.actions
        )


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class _UnreadableError(Exception):
    """A statement this validator refuses to interpret (the problem says why)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _principals(principal: object, label: str) -> tuple[str, ...]:
    if principal == "*":
        return ("*",)
    if isinstance(principal, Mapping) and set(principal) <= {"AWS", "Service"}:
        return tuple(str(p) for p in _as_list(principal.get("AWS")))
    raise _UnreadableError(Problem(RULE_SHAPE, f'{label}: Principal must be "*" or {{"AWS": ...}}'))


def _conditions(condition: object, label: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(condition, Mapping):
        raise _UnreadableError(Problem(RULE_SHAPE, f"{label}: Condition must be an object"))
    conditions: dict[str, dict[str, list[str]]] = {}
    for operator, block in condition.items():
        if not isinstance(operator, str) or not isinstance(block, Mapping):
            raise _UnreadableError(Problem(RULE_SHAPE, f"{label}: malformed Condition"))
        conditions[operator.lower()] = {
            str(key).lower(): [str(v) for v in _as_list(values)] for key, values in block.items()
        }
    return conditions


def _parse_statement(raw: object, index: int) -> _Statement:
    if not isinstance(raw, dict):
        raise _UnreadableError(Problem(RULE_SHAPE, f"statement {index} is not an object"))
    label = f"statement {raw.get('Sid', index)!r}"
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _UnreadableError(Problem(RULE_SHAPE, f"{label}: Effect must be Allow or Deny"))
    if "NotPrincipal" in raw or ("NotAction" in raw and effect == "Allow"):
        raise _UnreadableError(
            Problem(RULE_NOT_ACTION, f"{label}: NotAction/NotPrincipal is too broad to audit")
        )
    actions = _as_list(raw.get("NotAction" if "NotAction" in raw else "Action"))
    if not actions or not all(isinstance(a, str) for a in actions):
        raise _UnreadableError(Problem(RULE_SHAPE, f"{label}: Action must be strings"))
    return _Statement(
        label=label,
        effect=str(effect),
        principals=_principals(raw.get("Principal"), label),
        actions=tuple(str(a) for a in actions),
        conditions=_conditions(raw.get("Condition", {}), label),
        not_action="NotAction" in raw,
        resources=tuple(str(r) for r in _as_list(raw.get("Resource"))),
    )


def _measure_name(key: str) -> str:
    """kms:recipientattestation:imagesha384 and :pcr0 both measure the image: PCR0."""
    suffix = key.rsplit(":", 1)[1]
    return "PCR0" if suffix == "imagesha384" else suffix.upper()


def _allow_pins(statement: _Statement) -> dict[str, list[str]] | None:
    """The measurements an Allow is limited to, or None if it is not (fully) limited."""
    pins: dict[str, list[str]] = {}
    for operator, block in statement.conditions.items():
        for key, values in block.items():
            if not _ATTESTATION_KEY_RE.match(key):
                continue
            if operator not in ALLOW_OPERATORS:
                return None  # IfExists, Like, negated, ForAnyValue: not a pin
            pins.setdefault(_measure_name(key), []).extend(values)
    return pins or None


def _deny_pins(statement: _Statement) -> tuple[str, list[str]] | None:
    """(measure, values) when the Deny refuses data keys to everyone unless one measure
    is in the list; any extra condition would weaken it, so it does not count."""
    if not (statement.open and statement.whole_key):
        return None
    if not all(statement.grants(a) for a in ATTESTABLE_ACTIONS) or len(statement.conditions) != 1:
        return None
    ((operator, block),) = statement.conditions.items()
    if operator not in DENY_OPERATORS or len(block) != 1:
        return None
    ((key, values),) = block.items()
    if not _ATTESTATION_KEY_RE.match(key):
        return None
    return _measure_name(key), values


def _unconditional_deny(statement: _Statement, action: str) -> bool:
    return (
        statement.open
        and statement.whole_key
        and not statement.conditions
        and statement.grants(action)
    )


def _window_deny(statement: _Statement) -> bool:
    if not (statement.open and statement.whole_key) or not statement.grants(
        "kms:ScheduleKeyDeletion"
    ):
        return False
    block = statement.conditions.get("numericlessthan", {})
    values = block.get(WINDOW_KEY, [])
    return len(statement.conditions) == 1 and values == [str(MIN_DELETION_WINDOW_DAYS)]


def _principal_covers(pattern: str, arn: str) -> bool:
    """Does a key-policy principal (ARN, account root, account id, glob) cover ``arn``?"""
    if pattern in ("*", arn):
        return True
    parts = arn.split(":")
    account = parts[4] if len(parts) > 5 else ""
    if pattern in (account, f"arn:aws:iam::{account}:root"):
        return True
    return "*" in pattern and fnmatch.fnmatchcase(arn, pattern)


def _overlap(admins: Iterable[str], enclaves: Iterable[str]) -> list[str]:
    admins, enclaves = list(admins), list(enclaves)
    return sorted(
        {e for e in enclaves for a in admins if _principal_covers(a, e) or _principal_covers(e, a)}
    )


@dataclass
class _Findings:
    enclave_pins: dict[str, set[str]] = field(default_factory=dict)
    enclave_arns: set[str] = field(default_factory=set)
    enclave_statements: int = 0
    sealed_statements: int = 0
    admin_arns: set[str] = field(default_factory=set)
    policy_holders: set[str] = field(default_factory=set)
    deletion: list[_Statement] = field(default_factory=list)
    deny_pins: dict[str, list[set[str]]] = field(default_factory=dict)
    deny_deletion: bool = False
    deny_short_window: bool = False


def _collect_allow(statement: _Statement, found: _Findings, problems: list[Problem]) -> None:
    if statement.open:
        problems.append(
            Problem(RULE_OPEN_PRINCIPAL, f"{statement.label}: allows {statement.actions} to '*'")
        )
    granted = [a for a in DATA_KEY_ACTIONS if statement.grants(a)]
    if statement.grants("kms:PutKeyPolicy"):
        found.policy_holders.update(statement.principals)
    if statement.grants("kms:ScheduleKeyDeletion"):
        found.deletion.append(statement)  # judged by _check_deletion
    # Administrators: whoever gets more than reading plus either data keys (the enclave
    # statement) or deletion (the break-glass statement).
    enclave_like = statement.only_grants((*READ_ONLY_ACTIONS, *DATA_KEY_ACTIONS))
    break_glass_like = statement.only_grants((*READ_ONLY_ACTIONS, *DELETION_ACTIONS))
    if not (enclave_like or break_glass_like):
        found.admin_arns.update(statement.principals)
    if granted:
        pins = _allow_pins(statement)
        if pins is None:
            problems.append(
                Problem(
                    RULE_UNATTESTED,
                    f"{statement.label}: allows {granted} without an attestation condition "
                    "(kms:RecipientAttestation:PCR8 or :ImageSha384 under "
                    "StringEquals[IgnoreCase])",
                )
            )
            return
        if any(a.lower() not in ATTESTABLE_ACTIONS for a in granted):
            problems.append(
                Problem(
                    RULE_UNATTESTED,
                    f"{statement.label}: only kms:Decrypt and kms:GenerateDataKey may be "
                    f"attested, not {granted}",
                )
            )
        found.enclave_statements += 1
        found.sealed_statements += "PCR8" in pins
        found.enclave_arns.update(statement.principals)
        for measure, values in pins.items():
            found.enclave_pins.setdefault(measure, set()).update(v.lower() for v in values)
            if not values:
                problems.append(
                    Problem(RULE_EMPTY, f"{statement.label}: the {measure} list is empty")
                )


def _collect_deny(statement: _Statement, found: _Findings) -> None:
    pins = _deny_pins(statement)
    if pins is not None:
        measure, values = pins
        found.deny_pins.setdefault(measure, []).append({v.lower() for v in values})
    found.deny_deletion |= _unconditional_deny(statement, "kms:ScheduleKeyDeletion")
    found.deny_short_window |= _window_deny(statement)


def _check_measurements(found: _Findings, allow_debug: bool, problems: list[Problem]) -> None:
    if not found.enclave_statements:
        problems.append(Problem(RULE_EMPTY, "no statement lets an attested enclave use the key"))
        return
    if not found.deny_pins:
        problems.append(
            Problem(
                RULE_MISSING_DENY,
                "no Deny refuses data keys to every principal whose attestation is missing "
                "or wrong (StringNotEqualsIgnoreCase on the pinned measurement)",
            )
        )
    for measure, allowed in sorted(found.enclave_pins.items()):
        denies = found.deny_pins.get(measure)
        if found.deny_pins and not denies:
            problems.append(
                Problem(RULE_MISSING_DENY, f"no Deny covers a missing or wrong {measure}")
            )
        elif denies and any(d != allowed for d in denies):
            problems.append(
                Problem(
                    RULE_DENY_MISMATCH,
                    f"the Deny on {measure} allows other values than the enclave statement",
                )
            )
        for value in sorted(allowed):
            if not _MEASUREMENT_RE.match(value):
                problems.append(
                    Problem(RULE_BAD_MEASUREMENT, f"{value!r} is not a 96-hex-digit {measure}")
                )
            elif value == ZERO_MEASUREMENT and not allow_debug:
                problems.append(
                    Problem(
                        RULE_DEBUG,
                        f"allows the all-zero {measure} of a debug-mode enclave (whose memory "
                        "the parent can read) or of an unsigned image; allow debug explicitly "
                        "only for development",
                    )
                )


def _check_deletion(mode: str, found: _Findings, problems: list[Problem]) -> None:
    if mode == SEALED:
        for statement in found.deletion:
            problems.append(
                Problem(RULE_DELETION, f"{statement.label}: sealed mode allows no key deletion")
            )
        if not found.deny_deletion:
            problems.append(
                Problem(
                    RULE_DELETION,
                    "sealed mode needs an explicit Deny of kms:ScheduleKeyDeletion for '*'",
                )
            )
        return
    for statement in found.deletion:
        if not statement.only_grants(("kms:Describe*", *DELETION_ACTIONS)):
            problems.append(
                Problem(
                    RULE_DELETION,
                    f"{statement.label}: key deletion must be granted alone, to a separate "
                    "break-glass principal",
                )
            )
        shared = _overlap(statement.principals, [*found.admin_arns, *found.enclave_arns])
        if shared or statement.open:
            problems.append(
                Problem(
                    RULE_DELETION,
                    f"{statement.label}: the break-glass principal must be separate from the "
                    "administrators and the enclave role",
                )
            )
    if found.deletion and not found.deny_short_window:
        problems.append(
            Problem(
                RULE_DELETION,
                "key deletion is granted without the Deny of a pending window under "
                f"{MIN_DELETION_WINDOW_DAYS} days (NumericLessThan "
                "kms:ScheduleKeyDeletionPendingWindowInDays)",
            )
        )


def _check_roles(found: _Findings, mode: str | None, problems: list[Problem]) -> str:
    """The policy's mode, after checking it against ``mode`` and who holds what."""
    sealed = found.enclave_statements > 0 and found.sealed_statements == found.enclave_statements
    actual = SEALED if sealed else PCR0
    if mode is not None and actual != mode:
        problems.append(
            Problem(RULE_MODE, f"the policy is in {actual} mode, {mode} mode is required")
        )
    overlap = _overlap(found.admin_arns, found.enclave_arns)
    if overlap:
        problems.append(
            Problem(RULE_OVERLAP, f"{overlap} both administer the key and decrypt with it")
        )
    if actual == SEALED and found.policy_holders:
        problems.append(
            Problem(
                RULE_POLICY_HOLDER,
                f"sealed mode, yet {sorted(found.policy_holders)} hold kms:PutKeyPolicy and "
                "could rewrite the lock",
            )
        )
    return actual


def validate_key_policy(
    policy: object, *, allow_debug: bool = False, mode: str | None = None
) -> KeyPolicySummary:
    """Return what the policy allows, or raise KeyPolicyError naming every broken rule.

    ``mode`` (sealed|pcr0) makes the policy's mode a requirement; by default it is read
    from the policy: sealed when every enclave statement pins PCR8.
    """
    if mode is not None and mode not in MODES:
        raise KeyPolicyError([Problem(RULE_MODE, f"mode must be one of {MODES}, not {mode!r}")])
    if not isinstance(policy, dict):
        raise KeyPolicyError([Problem(RULE_SHAPE, "the policy is not a JSON object")])
    problems: list[Problem] = []
    if policy.get("Version") != "2012-10-17":
        problems.append(Problem(RULE_SHAPE, 'Version must be "2012-10-17"'))
    raw_statements = policy.get("Statement")
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise KeyPolicyError([*problems, Problem(RULE_SHAPE, "Statement must be a non-empty list")])
    found = _Findings()
    for index, raw in enumerate(raw_statements):
        try:
            statement = _parse_statement(raw, index)
        except _UnreadableError as exc:
            problems.append(exc.problem)
            continue
        if statement.effect == "Allow":
            _collect_allow(statement, found, problems)
        else:
            _collect_deny(statement, found)
    _check_measurements(found, allow_debug, problems)
    actual = _check_roles(found, mode, problems)
    _check_deletion(actual, found, problems)
    if problems:
        raise KeyPolicyError(problems)
    glass = sorted({p for s in found.deletion for p in s.principals})
    warnings = []
    if actual == PCR0:
        holders = sorted(found.policy_holders) or ["(nobody today)"]
        warnings.append(
            "pcr0 mode: the principals that hold kms:PutKeyPolicy "
            f"({', '.join(holders)}) can rewrite this policy, allow themselves Decrypt and "
            "read every account's data key. Use sealed mode so that nobody can."
        )
    return KeyPolicySummary(
        mode=actual,
        measurements={k: sorted(v) for k, v in found.enclave_pins.items()},
        admin_arns=sorted(found.admin_arns),
        enclave_arns=sorted(found.enclave_arns),
        break_glass_arns=glass,
        policy_holders=sorted(found.policy_holders),
        warnings=warnings,
    )


__all__ = [
    "MODES",
    "PCR0",
    "SEALED",
    "KeyPolicyError",
    "KeyPolicySummary",
    "Problem",
    "render_key_policy",
    "validate_key_policy",
]
