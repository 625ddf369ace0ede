"""Verify an audit log written by the relay: every receipt, every seal, every segment.

What the log proves on its own (given the attestation root):

- each segment opens with a genesis receipt whose attestation document verifies against
  the root and binds the segment's receipt key in ``user_data``; every other key is
  refused;
- inside a segment the counters run 0, 1, 2, ... and each ``prev`` is the hash of the
  line before; every receipt is covered by a seal (an Ed25519 signature of the receipt
  key over a later receipt's hash, which commits to everything before it);
- segments appear in boot order (attestation time), and each later segment's ``link``
  receipt names the last receipt of the segment before it: a missing link is reported
  as a gap, a link that disagrees with the log is an error.

The first line that was removed, edited or reordered is named. Cutting the end of the
log cannot be seen from the log alone; ``head`` (a head statement signed by the
enclave for a fresh nonce, see ``ReceiptChain.head``) closes that hole.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_app import strict_json
from enclave_app.auth import receipt_format as fmt
from enclave_app.auth.canonical import b64url
from nitro_wallet.attestation import AttestationError, parse_unverified, verify_attestation

__all__ = ["AuditLogError", "AuditReport", "verify_log"]

MAX_LINE_BYTES = 64 * 1024
_COMMON = frozenset({"v", "seg", "n", "prev", "t", "kind"})
_FIELDS = {
    "genesis": _COMMON | {"key", "attestation"},
    "link": _COMMON | {"after"},
    "decision": _COMMON
    | {
        "op",
        "decision",
        "rule",
        "code",
        "principal",
        "approvers",
        "account",
        "address",
        "request",
        "payload",
        "result",
    },
}


class AuditLogError(Exception):
    """The log is not what the enclave wrote; ``line`` is the first line at fault."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass
class _Line:
    number: int
    receipt: dict[str, Any]
    sig: bytes | None
    digest: bytes


@dataclass
class _Segment:
    segment: str
    key: ed25519.Ed25519PublicKey
    attested_at: datetime
    pcr0: str
    lines: list[_Line] = field(default_factory=list)
    link: _Line | None = None


@dataclass
class AuditReport:
    lines: int
    segments: list[dict[str, Any]]
    gaps: list[str]
    decisions: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "lines": self.lines,
            "segments": self.segments,
            "gaps": self.gaps,
            "decisions": self.decisions,
        }


def verify_log(
    raw_lines: Sequence[bytes],
    roots: Iterable[str],
    *,
    expect_pcr0: bytes | None = None,
    head: Mapping[str, Any] | None = None,
) -> AuditReport:
    """Verify the log's lines (without their newlines); raise the ``AuditLogError`` of
    the first line at fault."""
    scan = _Scan(tuple(roots), expect_pcr0)
    scan.run(raw_lines)
    errors = scan.errors
    for segment in scan.segments:
        errors.extend(_authenticate(segment))
    gaps: list[str] = []
    errors.extend(_check_joins(scan.segments, gaps))
    if head is not None:
        errors.extend(_check_head(head, scan.segments, len(raw_lines)))
    if errors:
        raise min(errors, key=lambda error: error.line)
    decisions = {"allow": 0, "deny": 0}
    for segment in scan.segments:
        for line in segment.lines:
            if line.receipt["kind"] == "decision":
                decisions[line.receipt["decision"]] += 1
    return AuditReport(
        lines=len(raw_lines),
        segments=[_describe(segment) for segment in scan.segments],
        gaps=gaps,
        decisions=decisions,
    )


class _Scan:
    """One pass in file order: parse, split into segments, check counters. Stops at the
    first line that breaks the order (what follows it cannot be placed)."""

    def __init__(self, roots: tuple[str, ...], expect_pcr0: bytes | None) -> None:
        self.roots = roots
        self.expect_pcr0 = expect_pcr0
        self.errors: list[AuditLogError] = []
        self.segments: list[_Segment] = []

    def run(self, raw_lines: Sequence[bytes]) -> None:
        parsed: list[_Line] = []
        try:
            for number, raw in enumerate(raw_lines, start=1):
                parsed.append(_parse_line(number, raw))
        except AuditLogError as exc:
            self.errors.append(exc)
        positions = {(p.receipt["seg"], p.receipt["n"]): p.number for p in parsed}
        for line in parsed:
            try:
                self._place(line, positions)
            except AuditLogError as exc:
                self.errors.append(exc)
                return

    def _place(self, line: _Line, positions: Mapping[tuple[str, int], int]) -> None:
        receipt = line.receipt
        if receipt["kind"] == "genesis":
            self._open(line)
            return
        current = self.segments[-1] if self.segments else None
        if current is None:
            raise AuditLogError(line.number, "no genesis receipt before this line (lines removed)")
        if receipt["seg"] != current.segment:
            earlier = any(s.segment == receipt["seg"] for s in self.segments)
            raise AuditLogError(
                line.number,
                "this receipt belongs to an earlier segment (reordered)"
                if earlier
                else f"segment {receipt['seg']} has no genesis receipt (lines removed)",
            )
        expected = current.lines[-1].receipt["n"] + 1
        if receipt["n"] != expected:
            raise _counter_error(line, expected, positions)
        if receipt["kind"] == "link":
            if current.link is not None:
                raise AuditLogError(line.number, "a second link receipt in one segment")
            current.link = line
        current.lines.append(line)

    def _open(self, line: _Line) -> None:
        if any(s.segment == line.receipt["seg"] for s in self.segments):
            raise AuditLogError(line.number, "a segment starts twice (reordered)")
        segment = _open_segment(line, self.roots, self.expect_pcr0)
        if self.segments and segment.attested_at < self.segments[-1].attested_at:
            raise AuditLogError(
                line.number,
                "this segment was attested before the segment above it (segments reordered)",
            )
        segment.lines.append(line)
        self.segments.append(segment)


# -- lines ---------------------------------------------------------------------------


def _parse_line(number: int, raw: bytes) -> _Line:
    if not raw or len(raw) > MAX_LINE_BYTES:
        raise AuditLogError(number, f"a line must hold 1..{MAX_LINE_BYTES} bytes")
    try:
        document = strict_json.loads(raw, max_depth=8)
    except strict_json.StrictJsonError as exc:
        raise AuditLogError(number, f"not a receipt line ({exc})") from None
    if not isinstance(document, dict) or not {"receipt"} <= set(document) <= {"receipt", "sig"}:
        raise AuditLogError(number, 'a line must be {"receipt": {...}[, "sig": ...]}')
    if fmt.canonical_json(document) != raw:
        raise AuditLogError(number, "the line is not in the enclave's canonical form (edited)")
    receipt = document["receipt"]
    _check_receipt(number, receipt)
    sig = None
    if "sig" in document:
        sig = _b64url(number, document["sig"], "sig")
    return _Line(number, receipt, sig, fmt.receipt_hash(receipt))


def _check_receipt(number: int, receipt: object) -> None:
    if not isinstance(receipt, dict):
        raise AuditLogError(number, "receipt must be an object")
    kind = receipt.get("kind")
    if kind not in _FIELDS or set(receipt) != _FIELDS[kind]:
        raise AuditLogError(number, "the receipt's fields are not those of its kind (edited)")
    if receipt["v"] != fmt.VERSION:
        raise AuditLogError(number, f"unknown receipt version {receipt['v']!r}")
    if not _hex(receipt["seg"], fmt.SEGMENT_BYTES) or not _hex(receipt["prev"], 32):
        raise AuditLogError(number, "seg and prev must be lowercase hex")
    for name in ("n", "t"):
        if type(receipt[name]) is not int or receipt[name] < 0:
            raise AuditLogError(number, f"{name} must be a non-negative integer")
    if kind == "decision" and receipt["decision"] not in ("allow", "deny"):
        raise AuditLogError(number, "decision must be allow or deny")


def _counter_error(line: _Line, expected: int, positions: Mapping[tuple[str, int], int]) -> Any:
    n, seg = line.receipt["n"], line.receipt["seg"]
    if n < expected:
        return AuditLogError(
            line.number, f"receipt n={n} comes after n={expected - 1} (reordered or duplicated)"
        )
    elsewhere = positions.get((seg, expected))
    if elsewhere is not None:
        return AuditLogError(
            line.number,
            f"out of order: receipt n={expected} should come here (it is at line {elsewhere})",
        )
    missing = f"n={expected}" if n == expected + 1 else f"n={expected}..{n - 1}"
    return AuditLogError(line.number, f"receipt(s) {missing} removed just before this line")


# -- segments ------------------------------------------------------------------------


def _open_segment(line: _Line, roots: tuple[str, ...], expect_pcr0: bytes | None) -> _Segment:
    receipt = line.receipt
    if receipt["n"] != 0 or receipt["prev"] != fmt.GENESIS_PREV:
        raise AuditLogError(line.number, "a genesis receipt must have n=0 and no prev")
    document = _b64url(line.number, receipt["attestation"], "attestation")
    key_bytes = _b64url(line.number, receipt["key"], "key")
    try:
        attested_at = parse_unverified(document).timestamp
        attestation = verify_attestation(document, roots, at=attested_at)
        key = ed25519.Ed25519PublicKey.from_public_bytes(key_bytes)
    except AttestationError as exc:
        raise AuditLogError(
            line.number, f"the attestation document does not verify: {exc.reason}"
        ) from None
    except ValueError:
        raise AuditLogError(line.number, "the receipt key is not an Ed25519 key") from None
    binding = fmt.key_binding(bytes.fromhex(receipt["seg"]), key_bytes)
    if attestation.user_data is None or not hmac.compare_digest(attestation.user_data, binding):
        raise AuditLogError(
            line.number, "the attestation document does not bind this receipt key and segment"
        )
    pcr0 = attestation.pcrs.get(0, b"")
    if expect_pcr0 is not None and not hmac.compare_digest(pcr0, expect_pcr0):
        raise AuditLogError(line.number, f"the segment's PCR0 is {pcr0.hex()}, not the expected")
    if line.sig is None:
        raise AuditLogError(line.number, "the genesis receipt is not sealed")
    return _Segment(receipt["seg"], key, attestation.timestamp, pcr0.hex())


def _authenticate(segment: _Segment) -> list[AuditLogError]:
    """Every seal verifies, and every receipt is committed to by a seal after it."""
    errors: list[AuditLogError] = []
    lines = segment.lines
    sealed = [index for index, line in enumerate(lines) if line.sig is not None]
    covered = sealed[-1] if sealed else -1
    for index in reversed(sealed):
        line = lines[index]
        try:
            segment.key.verify(line.sig or b"", fmt.seal_message(line.digest))
        except Exception:
            errors.append(
                AuditLogError(
                    line.number,
                    "the seal does not verify against the segment's attested key "
                    "(edited, or signed by another key)",
                )
            )
            continue
        for j in range(index - 1, -1, -1):
            if lines[j + 1].receipt["prev"] != lines[j].digest.hex():
                errors.append(
                    AuditLogError(
                        lines[j].number,
                        "edited: its hash is not the one the sealed receipts after it commit to",
                    )
                )
                break
            if lines[j].sig is not None:
                break  # from here the earlier seal vouches
    if covered < len(lines) - 1:
        first, last = lines[covered + 1].number, lines[-1].number
        errors.append(
            AuditLogError(
                last + 1,
                f"the seal covering lines {first}..{last} is missing: the line that sealed them "
                "was removed here (or the log was cut)",
            )
        )
    return errors


def _check_joins(segments: list[_Segment], gaps: list[str]) -> list[AuditLogError]:
    errors: list[AuditLogError] = []
    for index, segment in enumerate(segments):
        first_line = segment.lines[0].number
        link = segment.link
        if index == 0:
            if link is not None:
                after = link.receipt["after"]
                gaps.append(
                    f"line {first_line}: the log starts after receipt n={after['n']} of segment "
                    f"{after['seg']} (an earlier log)"
                )
            continue
        before = segments[index - 1]
        tail = before.lines[-1]
        if link is None:
            gaps.append(
                f"gap before line {first_line}: segment {segment.segment} does not name the "
                f"receipt before it; receipts of segment {before.segment} after n="
                f"{tail.receipt['n']} (line {tail.number}) may be missing"
            )
            continue
        after = link.receipt["after"]
        if not isinstance(after, dict) or set(after) != {"seg", "n", "hash"}:
            errors.append(AuditLogError(link.number, "a link must name {seg, n, hash}"))
            continue
        if after["seg"] != before.segment:
            earlier = any(s.segment == after["seg"] for s in segments[:index])
            errors.append(
                AuditLogError(
                    first_line,
                    f"this segment joins segment {after['seg']}, "
                    + (
                        "which is further up (segments reordered)"
                        if earlier
                        else "which is not in the log (segments removed before this line)"
                    ),
                )
            )
        elif after["n"] > tail.receipt["n"]:
            errors.append(
                AuditLogError(
                    tail.number + 1,
                    f"receipts n={tail.receipt['n'] + 1}..{after['n']} of segment "
                    f"{before.segment} were removed (the link at line {link.number} names them)",
                )
            )
        elif after["n"] < tail.receipt["n"] or after["hash"] != tail.digest.hex():
            errors.append(
                AuditLogError(
                    link.number,
                    f"the link names receipt n={after['n']} of segment {before.segment}, which "
                    "does not match the log",
                )
            )
    return errors


def _check_head(
    head: Mapping[str, Any], segments: list[_Segment], line_count: int
) -> list[AuditLogError]:
    seg = head.get("seg")
    segment = next((s for s in segments if s.segment == seg), None)
    if segment is None:
        return [AuditLogError(line_count + 1, f"the head's segment {seg} is not in the log")]
    try:
        n, digest = int(head["n"]), bytes.fromhex(str(head["hash"]))
        nonce = bytes.fromhex(str(head["nonce"]))
        sig = base64.urlsafe_b64decode(str(head["sig"]) + "==")
        segment.key.verify(sig, fmt.head_message(bytes.fromhex(segment.segment), n, digest, nonce))
    except Exception:
        return [AuditLogError(line_count + 1, "the head statement does not verify")]
    tail = segment.lines[-1]
    if tail.receipt["n"] < n:
        return [
            AuditLogError(
                tail.number + 1,
                f"the enclave's head is n={n} but the segment ends at n={tail.receipt['n']}: "
                "receipts were removed from the end",
            )
        ]
    match = next((line for line in segment.lines if line.receipt["n"] == n), None)
    if match is None or match.digest != digest:
        return [AuditLogError(match.number if match else tail.number, "edited: not the head")]
    return []


def _describe(segment: _Segment) -> dict[str, Any]:
    return {
        "segment": segment.segment,
        "first_line": segment.lines[0].number,
        "last_line": segment.lines[-1].number,
        "receipts": len(segment.lines),
        "attested_at": segment.attested_at.isoformat().replace("+00:00", "Z"),
        "pcr0": segment.pcr0,
        "key": b64url(segment.key.public_bytes_raw()),
        "linked": segment.link is not None,
    }


def _b64url(number: int, value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise AuditLogError(number, f"{name} must be base64url text")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise AuditLogError(number, f"{name} is not base64url") from None
    if b64url(data) != value:
        raise AuditLogError(number, f"{name} is not canonical base64url")
    return data


def _hex(value: object, length: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 2 * length
        and all(c in "0123456789abcdef" for c in value)
    )
