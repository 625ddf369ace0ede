"""``nitro-wallet token add|list|revoke``: the relay's bearer tokens.

    nitro-wallet token add --file TOKENS --name ci-bot --scopes sign,read
    nitro-wallet token list --file TOKENS
    nitro-wallet token revoke --file TOKENS --id TOKEN_ID

``add`` prints the token once: only its SHA-256 is stored. The relay re-reads the file
when it changes. ``--name`` is the relay-asserted principal the signing policy names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.commands.keygen import parse_scopes
from parent_app.tokens import TokenFileError, add_token, read_records, revoke_token


def register(groups: Any) -> None:
    parser = groups.add_parser("token", help="manage the relay's bearer tokens")
    commands = parser.add_subparsers(dest="token_command", required=True)
    add = commands.add_parser("add", help="create a token (printed once)")
    add.add_argument("--file", required=True, type=Path)
    add.add_argument("--name", required=True, help="principal name in the signing policy")
    add.add_argument("--scopes", required=True, help="comma-separated: create,sign,read")
    add.set_defaults(handler=run_add)
    listing = commands.add_parser("list", help="list tokens (never the tokens themselves)")
    listing.add_argument("--file", required=True, type=Path)
    listing.set_defaults(handler=run_list)
    revoke = commands.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("--file", required=True, type=Path)
    revoke.add_argument("--id", required=True, dest="token_id")
    revoke.set_defaults(handler=run_revoke)


def run_add(args: argparse.Namespace) -> int:
    try:
        record, token = add_token(args.file, args.name, frozenset(parse_scopes(args.scopes)))
    except (TokenFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"token {record.token_id} for {record.name} ({', '.join(sorted(record.scopes))}); "
        "shown once, store it now:",
        file=sys.stderr,
    )
    print(token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        records = read_records(args.file)
    except (TokenFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    listing = [
        {"id": r.token_id, "name": r.name, "scopes": sorted(r.scopes), "created": r.created}
        for r in records.values()
    ]
    print(json.dumps(listing, indent=2))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    try:
        record = revoke_token(args.file, args.token_id)
    except (TokenFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked token {record.token_id} ({record.name})")
    return 0
