"""``nitro-wallet stamp`` and ``nitro-wallet approve``: header values for curl.

    nitro-wallet stamp --key KEYFILE --method POST --path /v1/... [--body FILE|-]
    nitro-wallet approve --key KEYFILE --method POST --path /v1/... [--body FILE|-]
        [--expires-in SECONDS]

``stamp`` prints the ``X-Stamp`` value (valid for the enclave's freshness window, one
use); ``approve`` prints one approval, to be joined with commas into ``X-Approvals``,
expiring at most an hour ahead (the enclave refuses a later expiry as malformed).
The body file must hold exactly the bytes curl sends (``curl --data-binary @FILE``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from enclave_app.auth.approvals import DEFAULT_MAX_LIFETIME_SECONDS
from enclave_app.errors import EnclaveError
from nitro_wallet.stamping import KeyFileError, load_key_file, make_approval, make_stamp

MAX_BODY_BYTES = 1 << 20


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", required=True, type=Path, help="key file (nitro-wallet keygen)")
    parser.add_argument("--method", required=True, help="HTTP method, e.g. POST")
    parser.add_argument("--path", required=True, help="path and query, e.g. /v1/accounts")
    parser.add_argument("--body", help="file with the exact body bytes, or - for stdin")


def register(groups: Any) -> None:
    stamp = groups.add_parser("stamp", help="print an X-Stamp header value for a request")
    _common(stamp)
    stamp.set_defaults(handler=run_stamp)
    approve = groups.add_parser("approve", help="print an approval of a request")
    _common(approve)
    approve.add_argument(
        "--expires-in",
        type=int,
        default=600,
        help=f"seconds, 1..{DEFAULT_MAX_LIFETIME_SECONDS} (default 600)",
    )
    approve.set_defaults(handler=run_approve)


def read_body(spec: str | None) -> bytes:
    if spec is None:
        return b""
    data = sys.stdin.buffer.read(MAX_BODY_BYTES + 1) if spec == "-" else Path(spec).read_bytes()
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return data


def run_stamp(args: argparse.Namespace) -> int:
    return _run(args, "api", lambda key, body: make_stamp(key, args.method, args.path, body))


def run_approve(args: argparse.Namespace) -> int:
    # The enclave refuses an expiry further ahead than this (approval_malformed).
    if not 1 <= args.expires_in <= DEFAULT_MAX_LIFETIME_SECONDS:
        print(
            f"error: --expires-in must be 1..{DEFAULT_MAX_LIFETIME_SECONDS} seconds "
            "(the enclave refuses an approval expiring later)",
            file=sys.stderr,
        )
        return 2
    expires = int(time.time()) + args.expires_in
    return _run(
        args,
        "approver",
        lambda key, body: make_approval(key, args.method, args.path, body, expires),
    )


def _run(args: argparse.Namespace, kind: str, produce: Any) -> int:
    try:
        key = load_key_file(args.key)
        if key.kind != kind:
            raise KeyFileError(f"{args.key} is an {key.kind} key; this needs an {kind} key")
        body = read_body(args.body)
        print(produce(key, body))
    except (KeyFileError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnclaveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0
