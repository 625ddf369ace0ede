"""``nitro-wallet key-policy``: render and check KMS key policies with the same rules the
Ansible role and ``make dev`` apply, and measure a release certificate.

    nitro-wallet key-policy validate FILE [--mode sealed|pcr0] [--allow-debug]
    nitro-wallet key-policy render --admin-arn ARN... --enclave-arn ARN...
        (--release-certificate PEM... | --pcr8 HEX...) [--pcr0 HEX...]     # sealed
        | --mode pcr0 --pcr0 HEX... [--break-glass-arn ARN...]            # pcr0
    nitro-wallet key-policy pcr8 CERTIFICATE

``validate`` prints a JSON summary on stdout (mode, allowed measurements, principals,
warnings) and each warning again on stderr; a refused policy prints one line per
broken rule on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.key_policy import (
    MODES,
    SEALED,
    KeyPolicyError,
    KeyPolicySummary,
    render_key_policy,
    validate_key_policy,
)
from nitro_wallet.pcr import CertificateError, pcr8_of_certificate


def register(groups: Any) -> None:
    parser = groups.add_parser("key-policy", help="render and validate KMS key policies")
    commands = parser.add_subparsers(dest="key_policy_command", required=True)

    check = commands.add_parser("validate", help="validate a rendered policy file")
    check.add_argument("file", type=Path)
    check.add_argument("--mode", choices=MODES, help="require this mode")
    check.add_argument("--allow-debug", action="store_true")
    check.set_defaults(handler=run_validate)

    render = commands.add_parser("render", help="render and validate a policy")
    render.add_argument("--mode", choices=MODES, default=SEALED)
    render.add_argument("--admin-arn", action="append", required=True, default=[])
    render.add_argument("--enclave-arn", action="append", required=True, default=[])
    render.add_argument("--release-certificate", action="append", type=Path, default=[])
    render.add_argument("--pcr8", action="append", default=[])
    render.add_argument("--pcr0", action="append", default=[])
    render.add_argument("--break-glass-arn", action="append", default=[])
    render.add_argument("--allow-debug", action="store_true")
    render.set_defaults(handler=run_render)

    measure = commands.add_parser("pcr8", help="PCR8 of an image signed with a certificate")
    measure.add_argument("certificate", type=Path)
    measure.set_defaults(handler=run_pcr8)


def _validated(policy: object, args: argparse.Namespace) -> KeyPolicySummary | None:
    """The summary (warnings printed on stderr), or None after printing the refusal."""
    try:
        summary = validate_key_policy(policy, allow_debug=args.allow_debug, mode=args.mode)
    except KeyPolicyError as exc:
        for problem in exc.problems:
            print(f"key policy refused: {problem}", file=sys.stderr)
        return None
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return summary


def run_validate(args: argparse.Namespace) -> int:
    try:
        policy = json.loads(args.file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"key policy unreadable: {exc}", file=sys.stderr)
        return 1
    summary = _validated(policy, args)
    if summary is None:
        return 1
    print(json.dumps(summary.to_json()))
    return 0


def run_render(args: argparse.Namespace) -> int:
    try:
        pcr8s = list(args.pcr8)
        pcr8s += [pcr8_of_certificate(path.read_bytes()) for path in args.release_certificate]
        policy = render_key_policy(
            mode=args.mode,
            admin_arns=args.admin_arn,
            enclave_arns=args.enclave_arn,
            pcr8s=pcr8s,
            pcr0s=args.pcr0,
            break_glass_arns=args.break_glass_arn,
        )
    except (OSError, CertificateError) as exc:
        print(f"cannot read the release certificate: {exc}", file=sys.stderr)
        return 1
    except KeyPolicyError as exc:
        for problem in exc.problems:
            print(f"key policy refused: {problem}", file=sys.stderr)
        return 1
    if _validated(policy, args) is None:
        return 1
    print(json.dumps(policy, indent=2))
    return 0


def run_pcr8(args: argparse.Namespace) -> int:
    try:
        print(pcr8_of_certificate(args.certificate.read_bytes()))
    except (OSError, CertificateError) as exc:
        print(f"cannot measure {args.certificate}: {exc}", file=sys.stderr)
        return 1
    return 0
