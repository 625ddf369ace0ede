"""Render and validate the KMS key policy (templates/kms_key_policy.json.j2).

The policy is the lock of the appliance, so it is checked before it is applied,
whoever rendered it (Ansible's kms_key_policy role, ``make dev``, an operator):

- it is a JSON object with a Statement list;
- no Allow statement grants a data-key action (Decrypt, GenerateDataKey*, ReEncrypt*,
  CreateGrant, or any wildcard covering them) unless it is conditioned on the
  attested image (``kms:RecipientAttestation:ImageSha384`` or ``...:PCR0`` under
  StringEquals/StringEqualsIgnoreCase, never an ``IfExists`` form) and names its
  principals explicitly (no ``"*"``);
- every allowed PCR0 is 96 hex characters, and the all-zero PCR0 of a debug-mode
  enclave is refused unless debug is explicitly allowed.

Usable as a library, from the Ansible filter plugin, and as
``nitro-wallet key-policy validate FILE [--allow-debug]``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "kms_key_policy.json.j2"
ZERO_PCR0 = "0" * 96
ATTESTATION_KEYS = frozenset(
    {"kms:recipientattestation:imagesha384", "kms:recipientattestation:pcr0"}
)
ATTESTATION_OPERATORS = frozenset({"stringequals", "stringequalsignorecase"})
DATA_KEY_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:CreateGrant",
)
_PCR_RE = re.compile(r"^[0-9a-fA-F]{96}$")


class KeyPolicyError(ValueError):
    """The policy must not be applied. ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def render_key_policy(
    *,
    admin_arns: Iterable[str],
    enclave_arns: Iterable[str],
    pcr0s: Iterable[str],
    template_path: Path = TEMPLATE_PATH,
) -> dict[str, Any]:
    """Render the template (plain Jinja2, StrictUndefined) into a policy document."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders JSON, not HTML
        keep_trailing_newline=True,
    )
    text = environment.get_template(template_path.name).render(
        key_policy_admin_arns=sorted(set(admin_arns)),
        key_policy_enclave_arns=sorted(set(enclave_arns)),
        key_policy_pcr0s=sorted({p.lower() for p in pcr0s}),
    )
    policy = json.loads(text)
    if not isinstance(policy, dict):
        raise KeyPolicyError(["the template did not render a JSON object"])
    return policy


def validate_key_policy(policy: object, *, allow_debug: bool = False) -> list[str]:
    """Return the allowed PCR0 values, or raise KeyPolicyError with every problem."""
    if not isinstance(policy, dict):
        raise KeyPolicyError(["the policy is not a JSON object"])
    problems: list[str] = []
    if policy.get("Version") != "2012-10-17":
        problems.append('Version must be "2012-10-17"')
    statements = policy.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise KeyPolicyError([*problems, "Statement must be a non-empty list"])
    allowed_pcr0s: set[str] = set()
    for index, statement in enumerate(statements):
        allowed_pcr0s.update(_check_statement(statement, index, allow_debug, problems))
    if problems:
        raise KeyPolicyError(problems)
    if not allowed_pcr0s:
        raise KeyPolicyError(["no statement lets an attested enclave use the key"])
    return sorted(allowed_pcr0s)


def _check_statement(
    statement: object, index: int, allow_debug: bool, problems: list[str]
) -> list[str]:
    """Append the statement's problems; return the PCR0s it validly allows."""
    if not isinstance(statement, dict):
        problems.append(f"statement {index} is not an object")
        return []
    label = f"statement {statement.get('Sid', index)!r}"
    if statement.get("Effect") != "Allow":
        return []
    if "NotAction" in statement or "NotPrincipal" in statement:
        problems.append(f"{label}: NotAction/NotPrincipal in an Allow is too broad to audit")
        return []
    granted = [a for a in DATA_KEY_ACTIONS if _grants(statement.get("Action"), a)]
    if not granted:
        return []
    if _principal_is_open(statement.get("Principal")):
        problems.append(f"{label}: data-key actions {granted} granted to every principal")
    pcr0s = _attested_pcr0s(statement.get("Condition"))
    if pcr0s is None:
        problems.append(
            f"{label}: allows {granted} without an attestation condition "
            "(kms:RecipientAttestation:ImageSha384 under StringEquals[IgnoreCase])"
        )
        return []
    if any(a not in ("kms:Decrypt", "kms:GenerateDataKey") for a in granted):
        problems.append(f"{label}: only kms:Decrypt and kms:GenerateDataKey may be attested")
    allowed: list[str] = []
    for pcr0 in pcr0s:
        if not _PCR_RE.match(pcr0):
            problems.append(f"{label}: {pcr0!r} is not a 96-hex-digit PCR0")
        elif pcr0.lower() == ZERO_PCR0 and not allow_debug:
            problems.append(
                f"{label}: allows the all-zero PCR0 of a debug-mode enclave, whose memory "
                "the parent can read; set debug explicitly allowed only for development"
            )
        else:
            allowed.append(pcr0.lower())
    return allowed


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _grants(actions: object, action: str) -> bool:
    return any(
        isinstance(pattern, str) and fnmatch.fnmatchcase(action.lower(), pattern.lower())
        for pattern in _as_list(actions)
    )


def _principal_is_open(principal: object) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        return any(p == "*" for p in _as_list(principal.get("AWS")))
    return principal is None


def _attested_pcr0s(condition: object) -> list[str] | None:
    """The PCR0 values an Allow is limited to, or None if it is not limited."""
    if not isinstance(condition, Mapping):
        return None
    values: list[str] = []
    found = False
    for operator, clauses in condition.items():
        if not isinstance(operator, str) or not isinstance(clauses, Mapping):
            return None
        for key, value in clauses.items():
            if not isinstance(key, str) or key.lower() not in ATTESTATION_KEYS:
                continue
            if operator.lower() not in ATTESTATION_OPERATORS:
                return None
            found = True
            values.extend(str(v) for v in _as_list(value))
    return values if found else None
