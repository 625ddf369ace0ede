"""``nitro-wallet key-policy validate FILE [--allow-debug]``: check a rendered KMS key
policy with the same rules the Ansible role and ``make dev`` apply."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.key_policy import KeyPolicyError, validate_key_policy


def register(groups: Any) -> None:
    parser = groups.add_parser("key-policy", help="validate KMS key policies")
    commands = parser.add_subparsers(dest="key_policy_command", required=True)
    check = commands.add_parser("validate", help="validate a rendered policy file")
    check.add_argument("file", type=Path)
    check.add_argument("--allow-debug", action="store_true")
    check.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    try:
        policy = json.loads(args.file.read_text())
        pcr0s = validate_key_policy(policy, allow_debug=args.allow_debug)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"key policy unreadable: {exc}", file=sys.stderr)
        return 1
    except KeyPolicyError as exc:
        for problem in exc.problems:
            print(f"key policy refused: {problem}", file=sys.stderr)
        return 1
    print(json.dumps({"valid": True, "pcr0s": pcr0s}))
    return 0
