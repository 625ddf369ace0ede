"""``nitro-wallet audit verify LOG [--root aws|PEM] [--expect-pcr0 HEX] [--head FILE]
[--strict]``: check an audit log written by the relay.

Prints a JSON summary and exits 0 when every receipt verifies; prints the first line
that was removed, edited or reordered and exits 1 otherwise. Gaps between segments
(a segment that does not name the one before it) are listed; ``--strict`` makes them
fatal. ``--head`` takes a head statement the enclave signed for a fresh nonce, to prove
the log was not cut at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.audit import AuditLogError, verify_log
from nitro_wallet.commands.attestation import UsageError, _parse_hex, read_root

MAX_LOG_BYTES = 4 << 30


def register(groups: Any) -> None:
    parser = groups.add_parser("audit", help="verify enclave audit logs")
    commands = parser.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser("verify", help="verify an audit log (JSON lines)")
    verify.add_argument("log", type=Path)
    verify.add_argument("--root", default="aws", help="'aws' (pinned root G1) or a PEM file")
    verify.add_argument("--expect-pcr0", help="required PCR0 of every segment (hex)")
    verify.add_argument("--head", type=Path, help="a signed head statement (JSON)")
    verify.add_argument("--strict", action="store_true", help="a gap between segments fails")
    verify.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    try:
        root = read_root(args.root)
        pcr0 = _parse_hex(args.expect_pcr0, "--expect-pcr0") if args.expect_pcr0 else None
        head = json.loads(args.head.read_text()) if args.head else None
        data = args.log.read_bytes()
    except (UsageError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(data) > MAX_LOG_BYTES:
        print("error: log too large", file=sys.stderr)
        return 2
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        print(f"audit log invalid: line {len(lines)}: the last line is incomplete", file=sys.stderr)
        return 1
    try:
        report = verify_log(lines, (root,), expect_pcr0=pcr0, head=head)
    except AuditLogError as exc:
        print(f"audit log invalid: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2))
    for gap in report.gaps:
        print(f"warning: {gap}", file=sys.stderr)
    return 1 if args.strict and report.gaps else 0
