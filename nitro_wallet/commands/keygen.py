"""``nitro-wallet keygen``: a stamp (API) key or an approver key.

    nitro-wallet keygen --id ops-1 --out ops-1.pem [--kind api|approver]
        [--algorithm ed25519|p256] [--scopes create,sign,read]

Writes the private key file (mode 0600, never overwriting) and prints the policy entry
for the public half (JSON: id, public key PEM, and scopes for an API key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitro_wallet.stamping import (
    ALGORITHMS,
    KEY_KINDS,
    KeyFile,
    KeyFileError,
    generate_key,
    public_key_pem,
    write_key_file,
)
from parent_app.tokens import SCOPES


def register(groups: Any) -> None:
    parser = groups.add_parser("keygen", help="create a stamp (API) or approver key")
    parser.add_argument("--id", required=True, dest="key_id", help="key id ([A-Za-z0-9_-]{1,64})")
    parser.add_argument("--out", required=True, type=Path, help="private key file to create")
    parser.add_argument("--kind", choices=KEY_KINDS, default="api")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ed25519")
    parser.add_argument("--scopes", default="sign,read", help="API keys: comma-separated")
    parser.set_defaults(handler=run)


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({scope.strip() for scope in text.split(",") if scope.strip()})
    if not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
    return scopes


def run(args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scopes) if args.kind == "api" else []
        key = KeyFile(args.key_id, args.kind, generate_key(args.algorithm))
        write_key_file(args.out, key)
    except (ValueError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    entry: dict[str, Any] = {"id": args.key_id, "public_key": public_key_pem(key.private_key)}
    if args.kind == "api":
        entry["scopes"] = scopes
    print(
        json.dumps(
            {"kind": args.kind, "algorithm": args.algorithm, "policy_entry": entry}, indent=2
        )
    )
    return 0
