"""The enclave's audit receipts: one per decision, chained, sealed once per frame.

At boot ``ReceiptChain.boot`` draws a receipt key (Ed25519, from ``MixedEntropy``)
and a segment id, asks the NSM for an attestation document whose ``user_data`` binds
both (``receipt_format.key_binding``), and writes the genesis receipt carrying that
document. A parent cannot forge a receipt: it never holds the key, and the key is only
trusted through the attested document.

Per frame the op reserves one slot per possible decision (``reserve``), records each
decision, and leaving the ``with`` block seals the chain's head: one Ed25519 signature
per frame, whatever the number of decisions, and before the answer leaves the enclave.
Recording a decision is a SHA-256 of a few hundred bytes.

The relay pulls receipts in counter order (``pull``): only sealed ones, at most
``limit`` per call. Its ``after`` acknowledges what it has written; acknowledged
receipts leave the ring. The ring holds at most ``capacity`` unacknowledged receipts;
when it is full, ``reserve`` refuses new decisions (``audit_backlog_full``, a retryable
503): no decision is made that could not reach the log (fail closed). An answer the
relay lost does not lose its receipt: the relay pulls it from the ring.

A relay starting on a new segment names the last receipt it holds of the previous one
(its ``after``); the enclave records that once as a ``link`` receipt, so the verifier
can tell how the segments join, and a later deletion of the old segment's tail shows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_app.auth import receipt_format as fmt
from enclave_app.auth.canonical import b64url
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.errors import EnclaveError, ErrorCode, invalid

__all__ = ["AuditDecision", "ReceiptChain", "Reservation", "audit_head_op", "audit_receipts_op"]

DEFAULT_CAPACITY = 65_536
MAX_PULL = 1000
MAX_PULL_BYTES = 512 * 1024
MAX_FIELD_CHARS = 256


class AttestingNsm(Protocol):
    def attest(
        self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes: ...


@dataclass(frozen=True)
class AuditDecision:
    """One decision as it goes into a receipt: ids and digests only, never secrets.

    An allowed signature carries ``result`` (the transaction hash or signed digest) and,
    for stamped or approved requests, ``request_digest``. ``payload_digest``
    (``receipt_format.payload_digest``) identifies what was asked when nothing was
    signed; computing it costs a JSON encoding, so the signing path leaves it out.
    """

    op: str
    allowed: bool
    rule: str | None = None
    code: str | None = None
    principal: str | None = None  # "stamp:<key id>" | "relay:<name>"
    approvers: frozenset[str] = frozenset()
    account_id: str | None = None
    address: str | None = None
    request_digest: bytes | None = None
    payload_digest: bytes | None = None
    result: str | None = None  # the transaction hash or the signed digest, 0x-hex

    def fields(self) -> dict[str, Any]:
        for name in ("op", "rule", "code", "principal", "account_id", "address", "result"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_FIELD_CHARS):
                raise ValueError(f"receipt field {name} must be a short string")
        return {
            "kind": "decision",
            "op": self.op,
            "decision": "allow" if self.allowed else "deny",
            "rule": self.rule,
            "code": self.code,
            "principal": self.principal,
            "approvers": sorted(self.approvers),
            "account": self.account_id,
            "address": self.address,
            "request": self.request_digest.hex() if self.request_digest else None,
            "payload": self.payload_digest.hex() if self.payload_digest else None,
            "result": self.result,
        }


@dataclass
class _Entry:
    n: int
    canonical: bytes
    """The receipt's canonical JSON: hashed once, and its log line built from it."""
    digest: bytes
    sig: str | None = None


class ReceiptChain:
    def __init__(
        self,
        signing_key: ed25519.Ed25519PrivateKey,
        segment: bytes,
        attestation: bytes,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(segment) != fmt.SEGMENT_BYTES:
            raise ValueError("segment must be 16 bytes")
        if type(capacity) is not int or capacity < 2:
            raise ValueError("capacity must be an integer >= 2")
        self._key = signing_key
        self.segment = segment
        self.public_key = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: deque[_Entry] = deque()
        self._reserved = 0
        self._next = 0
        self._last_digest = bytes.fromhex(fmt.GENESIS_PREV)
        self._sealed = -1
        self._sealed_digest = b""
        self._linked = False
        with self._lock:
            key = b64url(self.public_key)
            self._append({"kind": "genesis", "key": key, "attestation": b64url(attestation)})
        self.seal()

    @classmethod
    def boot(
        cls, nsm: AttestingNsm, entropy: MixedEntropy, capacity: int = DEFAULT_CAPACITY
    ) -> ReceiptChain:
        """A new segment: fresh key and id, bound by a fresh attestation document."""
        key = ed25519.Ed25519PrivateKey.from_private_bytes(
            entropy.random_bytes(32, "audit-receipt-key")
        )
        segment = entropy.random_bytes(fmt.SEGMENT_BYTES, "audit-segment-id")
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        document = nsm.attest(
            user_data=fmt.key_binding(segment, public), nonce=None, public_key=None
        )
        return cls(key, segment, document, capacity)

    # -- recording -----------------------------------------------------------------

    def reserve(self, count: int) -> Reservation:
        """Room for ``count`` decisions; ``audit_backlog_full`` when the ring has none."""
        if type(count) is not int or count < 1:
            raise ValueError("count must be a positive integer")
        with self._lock:
            if len(self._ring) + self._reserved + count > self._capacity:
                raise EnclaveError(
                    ErrorCode.AUDIT_BACKLOG_FULL,
                    "the audit receipt ring is full of receipts the relay has not collected; "
                    "retry once the relay's audit log writer catches up",
                )
            self._reserved += count
        return Reservation(self, count)

    def _record(self, decision: AuditDecision) -> int:
        fields = decision.fields()
        with self._lock:
            self._reserved -= 1
            return self._append(fields)

    def _unreserve(self, count: int) -> None:
        with self._lock:
            self._reserved -= count

    def _append(self, fields: Mapping[str, Any]) -> int:
        """Append under the lock; returns the counter."""
        receipt = {
            "v": fmt.VERSION,
            "seg": self.segment.hex(),
            "n": self._next,
            "prev": self._last_digest.hex(),
            "t": int(self._clock() * 1000),
            **fields,
        }
        canonical = fmt.canonical_json(receipt)
        digest = fmt.canonical_receipt_hash(canonical)
        self._ring.append(_Entry(self._next, canonical, digest))
        self._last_digest = digest
        self._next += 1
        return self._next - 1

    def seal(self) -> None:
        """Sign the head, unless it is sealed already (one signature covers all before)."""
        with self._lock:
            if not self._ring or self._ring[-1].n <= self._sealed:
                return
            head = self._ring[-1]
        sig = b64url(self._key.sign(fmt.seal_message(head.digest)))
        with self._lock:
            head.sig = sig
            if head.n > self._sealed:
                self._sealed, self._sealed_digest = head.n, head.digest

    # -- collection ------------------------------------------------------------------

    def pull(self, after: object, limit: int = MAX_PULL) -> dict[str, Any]:
        """Sealed receipts after ``after`` in counter order, at most ``limit``.

        ``after`` is ``{"seg", "n", "hash"}`` of the last receipt the relay has written,
        or None for an empty log. Of this segment, it acknowledges receipts up to ``n``
        (they leave the ring). Of another segment, it is recorded once as this segment's
        ``link`` and the answer starts at the genesis receipt.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_PULL:
            raise invalid(f"limit must be 1..{MAX_PULL}")
        start = 0
        if after is not None:
            seg, n, digest = _receipt_ref(after)
            if seg == self.segment.hex():
                if n > self._sealed:
                    raise invalid(f"after.n {n} is beyond the sealed head {self._sealed}")
                start = n + 1
            else:
                self._link(seg, n, digest)
        lines: list[str] = []
        size = 0
        with self._lock:
            while self._ring and self._ring[0].n < start:
                self._ring.popleft()
            for entry in self._ring:
                if entry.n < start:
                    continue
                if entry.n > self._sealed or len(lines) == limit:
                    break
                line = fmt.canonical_log_line(entry.canonical, entry.sig)
                if lines and size + len(line) > MAX_PULL_BYTES:
                    break
                lines.append(line)
                size += len(line) + 1
            return {
                "segment": self.segment.hex(),
                "receipts": lines,
                "sealed": self._sealed,
                "next": self._next,
            }

    def _link(self, seg: str, n: int, digest: str) -> None:
        with self._lock:
            if self._linked:
                return
            if len(self._ring) + self._reserved + 1 > self._capacity:
                raise EnclaveError(ErrorCode.AUDIT_BACKLOG_FULL, "the audit receipt ring is full")
            self._linked = True
            self._append({"kind": "link", "after": {"seg": seg, "n": n, "hash": digest}})
        self.seal()

    def head(self, nonce: bytes) -> dict[str, Any]:
        """The sealed head, signed together with the caller's nonce (fresh, unforgeable):
        ``audit verify --head`` checks that a log reaches it, so a cut tail shows."""
        if not isinstance(nonce, bytes) or not 16 <= len(nonce) <= 64:
            raise invalid("nonce must be 16..64 bytes")
        self.seal()
        with self._lock:
            sealed, digest = self._sealed, self._sealed_digest
        sig = self._key.sign(fmt.head_message(self.segment, sealed, digest, nonce))
        return {
            "seg": self.segment.hex(),
            "n": sealed,
            "hash": digest.hex(),
            "nonce": nonce.hex(),
            "sig": b64url(sig),
        }


def audit_receipts_op(chain: ReceiptChain, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit_receipts`` op: params ``{"after": {seg, n, hash} | null, "limit"?}``."""
    if not isinstance(params, Mapping) or not {"after"} <= set(params) <= {"after", "limit"}:
        raise invalid("audit_receipts takes {after, limit?}")
    return chain.pull(params["after"], params.get("limit", MAX_PULL))


def audit_head_op(chain: ReceiptChain, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit_head`` op: params ``{"nonce": hex}`` (16..64 bytes)."""
    nonce = params.get("nonce") if isinstance(params, Mapping) else None
    if set(params) != {"nonce"} or not isinstance(nonce, str) or len(nonce) > 128:
        raise invalid("audit_head takes {nonce: hex}")
    try:
        return chain.head(bytes.fromhex(nonce))
    except ValueError:
        raise invalid("nonce must be hex") from None


class Reservation:
    """Slots for one frame's decisions; leaving the ``with`` block seals the chain."""

    def __init__(self, chain: ReceiptChain, count: int) -> None:
        self._chain = chain
        self._left = count

    def record(self, decision: AuditDecision) -> int:
        if self._left == 0:
            raise RuntimeError("more decisions recorded than reserved")
        self._left -= 1
        return self._chain._record(decision)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._left:
            self._chain._unreserve(self._left)
            self._left = 0
        self._chain.seal()


def _receipt_ref(value: object) -> tuple[str, int, str]:
    if not isinstance(value, dict) or set(value) != {"seg", "n", "hash"}:
        raise invalid("after must be {seg, n, hash} of the relay's last receipt, or null")
    seg, n, digest = value["seg"], value["n"], value["hash"]
    if not (_is_hex(seg, fmt.SEGMENT_BYTES) and type(n) is int and n >= 0 and _is_hex(digest, 32)):
        raise invalid("after must be {seg: 32 hex, n: counter, hash: 64 hex}")
    return seg, n, digest


def _is_hex(value: object, length: int) -> bool:
    if not isinstance(value, str) or len(value) != 2 * length:
        return False
    return all(c in "0123456789abcdef" for c in value)
