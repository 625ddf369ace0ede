"""``nitro-wallet attestation verify``: check an attestation document offline.

    nitro-wallet attestation verify --document FILE [--root aws|PEMFILE]
        [--at ISO8601] [--expect-pcr0 HEX] [--expect-nonce HEX]

The document is raw CBOR or base64. ``--root aws`` (the default) pins the AWS Nitro
root G1; the simulator's root must be named explicitly (``--root sim-root.pem``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nitro_wallet.attestation import (
    AWS_NITRO_ROOT_G1_SHA256,
    MAX_DOCUMENT_BYTES,
    AttestationError,
    root_fingerprint,
    verify_attestation,
)


class UsageError(Exception):
    pass


def register(groups: Any) -> None:
    parser = groups.add_parser("attestation", help="verify Nitro attestation documents")
    commands = parser.add_subparsers(dest="attestation_command", required=True)
    verify = commands.add_parser("verify", help="verify an attestation document")
    verify.add_argument("--document", required=True, help="raw CBOR or base64 file")
    verify.add_argument("--root", default="aws", help="'aws' (pinned root G1) or a PEM file")
    verify.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    verify.add_argument("--expect-pcr0", help="required PCR0 (hex)")
    verify.add_argument("--expect-nonce", help="required nonce (hex)")
    verify.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    try:
        root = read_root(args.root)
        at = _parse_at(args.at) if args.at else None
        pcr0 = _parse_hex(args.expect_pcr0, "--expect-pcr0") if args.expect_pcr0 else None
        nonce = _parse_hex(args.expect_nonce, "--expect-nonce") if args.expect_nonce else None
        document = read_document(args.document)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AttestationError as exc:
        print(f"attestation invalid: {exc.reason}", file=sys.stderr)
        return 1
    try:
        parsed = verify_attestation(document, (root,), at)
        if pcr0 is not None and not hmac.compare_digest(parsed.pcrs.get(0, b""), pcr0):
            raise AttestationError(f"PCR0 is {parsed.pcr_hex(0)}, expected {pcr0.hex()}")
        if nonce is not None and not hmac.compare_digest(parsed.nonce or b"", nonce):
            raise AttestationError("nonce does not match --expect-nonce")
    except AttestationError as exc:
        print(f"attestation invalid: {exc.reason}", file=sys.stderr)
        return 1
    print(json.dumps(parsed.to_json(), indent=2))
    return 0


def read_document(path: str) -> bytes:
    """A document file as bytes: raw CBOR, or base64 (whitespace ignored)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > 4 * MAX_DOCUMENT_BYTES:
        raise AttestationError("document file too large")
    # A CBOR COSE_Sign1 starts with 0x84 (array of 4) or 0xd2 (tag 18): neither is a
    # base64 character, so the two encodings cannot be confused.
    if raw[:1] in (b"\x84", b"\xd2"):
        return raw
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError("document is neither CBOR nor base64") from exc


def read_root(spec: str) -> str:
    """``aws`` or a PEM/DER file, as the SHA-256 fingerprint the verifier pins."""
    if spec == "aws":
        return AWS_NITRO_ROOT_G1_SHA256
    try:
        data = Path(spec).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read root certificate {spec}: {exc.strerror}") from exc
    try:
        return root_fingerprint(data)
    except AttestationError as exc:
        raise UsageError(f"{spec}: {exc.reason}") from exc


def _parse_at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--at must be ISO 8601, not {text!r}") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_hex(text: str, option: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise UsageError(f"{option} must be hex") from exc
