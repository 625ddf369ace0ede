"""N-of-M approvals: approver signatures over the request digest, each with an expiry.

``verify`` returns the ids of the approvers whose approvals are valid; the policy
evaluator counts them against the rule's threshold (too few is its
``approvals_required``). Every other failure refuses the whole request with its own
code, because a bad approval means someone is tampering, not that one is missing:

- ``approval_malformed``: the header does not parse, or an expiry lies further ahead
  than ``max_lifetime_seconds`` (which also bounds the replay memory);
- ``approval_unknown_approver``: the id is not an approver in the policy;
- ``approval_duplicate``: the same approver twice in one request;
- ``approval_expired``: ``expires`` is in the past;
- ``approval_signature_invalid``: the signature does not verify (forged, or for another
  request);
- ``approval_replayed``: this approval was already used for a request that was signed.

Approvals are remembered only once all of them verified; ``release`` forgets them again
when the request fails before anything is signed, so a denial does not burn them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from enclave_app.auth import canonical, signatures
from enclave_app.auth.keys import ApproverKeyEntry
from enclave_app.auth.replay import ReplayMemory
from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["ApprovalVerifier", "VerifiedApprovals"]

DEFAULT_MAX_LIFETIME_SECONDS = 3600
MAX_LIFETIME_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class VerifiedApprovals:
    approvers: frozenset[str]
    replay_keys: tuple[bytes, ...]


class ApprovalVerifier:
    def __init__(
        self,
        replay: ReplayMemory,
        max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if type(max_lifetime_seconds) is not int or not (
            1 <= max_lifetime_seconds <= MAX_LIFETIME_SECONDS
        ):
            raise ValueError(f"max_lifetime_seconds must be 1..{MAX_LIFETIME_SECONDS}")
        self._replay = replay
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock

    def verify(
        self, header: object, digest: bytes, approvers: Mapping[str, ApproverKeyEntry]
    ) -> VerifiedApprovals:
        approvals = canonical.parse_approvals(header)
        now = self._clock()
        seen: set[str] = set()
        messages: list[tuple[canonical.Approval, bytes]] = []
        for approval in approvals:
            who = approval.approver_id
            entry = approvers.get(who)
            if entry is None:
                raise EnclaveError(
                    ErrorCode.APPROVAL_UNKNOWN_APPROVER, f"{who!r} is not an approver in the policy"
                )
            if who in seen:
                raise EnclaveError(
                    ErrorCode.APPROVAL_DUPLICATE, f"approver {who!r} appears more than once"
                )
            seen.add(who)
            if approval.expires < now:
                raise EnclaveError(
                    ErrorCode.APPROVAL_EXPIRED,
                    f"the approval of {who!r} expired at {approval.expires} "
                    f"(enclave clock {int(now)})",
                )
            if approval.expires > now + self._max_lifetime:
                raise EnclaveError(
                    ErrorCode.APPROVAL_MALFORMED,
                    f"the approval of {who!r} expires more than {self._max_lifetime} s ahead",
                )
            message = canonical.approval_message(who, approval.expires, digest)
            if not signatures.verify(entry.public_key, message, approval.signature):
                raise EnclaveError(
                    ErrorCode.APPROVAL_SIGNATURE_INVALID,
                    f"the approval of {who!r} does not verify for this exact request",
                )
            messages.append((approval, message))
        claimed: list[bytes] = []
        try:
            for approval, message in messages:
                key = hashlib.sha256(message).digest()[:16]
                self._replay.claim(key, approval.expires, ErrorCode.APPROVAL_REPLAYED, "approval")
                claimed.append(key)
        except EnclaveError:
            for key in claimed:
                self._replay.release(key)
            raise
        return VerifiedApprovals(frozenset(seen), tuple(claimed))

    def release(self, verified: VerifiedApprovals) -> None:
        for key in verified.replay_keys:
            self._replay.release(key)
