"""``nitro-wallet policy``: check and compile signing policies.

    nitro-wallet policy check FILE                 validate; print the rules in evaluation order
    nitro-wallet policy compile FILE -o OUT.json   write the canonical JSON the enclave loads

Both print the policy's SHA-256 (of the canonical JSON), the value to show next to
PCR0: the policy is built into the image, so a new policy is a new PCR0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.policy import CompiledPolicy, PolicyCompileError, compile_policy_text

_OPERATIONS = {
    "transaction": "sign_transaction",
    "message": "sign_message",
    "typed_data": "sign_typed_data",
    "authorization": "sign_authorization",
}


def register(groups: Any) -> None:
    parser = groups.add_parser("policy", help="check and compile signing policies")
    commands = parser.add_subparsers(dest="policy_command", required=True)
    check = commands.add_parser("check", help="validate a policy and show its evaluation order")
    check.add_argument("file", type=Path, help="the policy (YAML or JSON)")
    check.set_defaults(handler=run_check)
    build = commands.add_parser("compile", help="compile a policy into the enclave's JSON")
    build.add_argument("file", type=Path, help="the policy (YAML or JSON)")
    build.add_argument("-o", "--output", type=Path, required=True, help="canonical JSON output")
    build.set_defaults(handler=run_compile)


def _compile(path: Path) -> CompiledPolicy | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"policy unreadable: {exc}", file=sys.stderr)
        return None
    try:
        return compile_policy_text(text)
    except PolicyCompileError as exc:
        for problem in exc.problems:
            print(f"policy refused: {problem}", file=sys.stderr)
        return None


def run_check(args: argparse.Namespace) -> int:
    compiled = _compile(args.file)
    if compiled is None:
        return 1
    print("\n".join(describe(compiled)))
    return 0


def run_compile(args: argparse.Namespace) -> int:
    compiled = _compile(args.file)
    if compiled is None:
        return 1
    output: Path = args.output
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_bytes(compiled.canonical)
        tmp.replace(output)
    except OSError as exc:
        print(f"cannot write {output}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"output": str(output), "sha256": compiled.sha256}))
    return 0


def describe(compiled: CompiledPolicy) -> list[str]:
    """The policy as an operator reads it: hash, principals, rules in evaluation order."""
    document = compiled.document
    rules: list[dict[str, Any]] = document["rules"]
    limits: list[dict[str, Any]] = document.get("limits", [])
    principals = document["principals"]
    lines = [
        f"policy sha256: {compiled.sha256}",
        "principals: "
        + "; ".join(
            f"{kind.replace('_', ' ')}: {', '.join(entry['id'] for entry in principals[kind])}"
            for kind in ("stamp_keys", "relay_identities", "approvers")
            if principals.get(kind)
        )
        or "principals: none",
        "evaluation order:",
    ]
    ordered = [r for r in rules if r["effect"] == "deny"] + [
        r for r in rules if r["effect"] == "allow"
    ]
    position = 0
    for heading, effect in (
        ("deny rules (any match refuses the request):", "deny"),
        ("allow rules (the first match allows it, once its approvals are met):", "allow"),
    ):
        lines.append(f"  {heading}")
        for rule in (r for r in ordered if r["effect"] == effect):
            position += 1
            lines.extend(_describe_rule(position, rule))
    lines.append(f"  {position + 1}. default-deny (implicit): every other request is refused")
    if limits:
        lines.append("velocity limits (after an allow; per account, rolling window):")
        lines.extend(f"  - {_describe_limit(limit)}" for limit in limits)
    return lines


def _describe_rule(position: int, rule: dict[str, Any]) -> list[str]:
    condition: dict[str, Any] = rule["condition"]
    operations = ", ".join(_OPERATIONS[section] for section in condition)
    head = (
        f"    {position}. {rule['name']} [{rule['effect']}] {operations}; "
        f"{_who(rule['principals'])}; {_accounts(rule['accounts'])}"
    )
    if "approvals" in rule:
        approvals = rule["approvals"]
        head += f"; needs {approvals['threshold']} of {', '.join(approvals['approvers'])}"
    lines = [head]
    for section, checks in condition.items():
        text = json.dumps(checks, sort_keys=True) if checks else "{} (every request)"
        lines.append(f"       {section}: {text}")
    return lines


def _describe_limit(limit: dict[str, Any]) -> str:
    bounds = [f"{key} {limit[key]}" for key in ("max_value", "max_count") if key in limit]
    operations = ", ".join(limit.get("operations", list(_OPERATIONS.values())))
    who = _who(limit["principals"]) if "principals" in limit else "every principal"
    return (
        f"{limit['name']}: {' and '.join(bounds)} per {limit['window_seconds']} s; "
        f"{operations}; {who}; {_accounts(limit['accounts'])}"
    )


def _who(selector: dict[str, Any]) -> str:
    parts = []
    for kind in ("stamp_keys", "relay_identities"):
        if kind in selector:
            value = selector[kind]
            listed = "any" if value == "any" else ", ".join(value)
            parts.append(f"{kind.replace('_', ' ')}: {listed}")
    return " + ".join(parts)


def _accounts(scope: str | dict[str, Any]) -> str:
    if not isinstance(scope, dict):
        return "all accounts"
    if "labels" in scope:
        return "accounts labelled " + " or ".join(scope["labels"])
    return f"account {scope['account_id']}"
