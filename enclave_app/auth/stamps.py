"""Stamp verification: a registered key, a fresh timestamp, a valid signature over the
exact request, and no replay.

Checks run cheapest first and the replay memory is written last, so only a genuine,
fresh stamp can occupy a slot: a hostile parent cannot fill the memory with forgeries.
A stamp is fresh when ``|now - timestamp| <= window``; it is remembered until
``timestamp + window``, after which freshness alone refuses it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from enclave_app.auth import canonical, signatures
from enclave_app.auth.keys import AmbiguousKeyError, StampKeyEntry, lookup_stamp_key
from enclave_app.auth.replay import ReplayMemory
from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["DEFAULT_WINDOW_SECONDS", "StampVerifier", "VerifiedStamp"]

DEFAULT_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 600


@dataclass(frozen=True)
class VerifiedStamp:
    key_id: str
    scopes: frozenset[str]
    account_bound: bool
    request_digest: bytes
    replay_key: bytes


class StampVerifier:
    def __init__(
        self,
        replay: ReplayMemory,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if type(window_seconds) is not int or not 1 <= window_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"window_seconds must be 1..{MAX_WINDOW_SECONDS}")
        self._replay = replay
        self._window = window_seconds
        self._clock = clock

    def verify(
        self,
        header: object,
        method: str,
        target: str,
        body: bytes,
        policy_keys: Mapping[str, StampKeyEntry],
        account_keys: Mapping[str, StampKeyEntry] | None = None,
    ) -> VerifiedStamp:
        """The verified stamp; a typed ``EnclaveError`` for each way it can fail.

        On success the stamp is remembered: the caller ``release``s it when the request
        fails before anything is signed.
        """
        stamp = canonical.parse_stamp(header)
        try:
            found = lookup_stamp_key(stamp.key_id, policy_keys, account_keys or {})
        except AmbiguousKeyError:
            raise EnclaveError(
                ErrorCode.STAMP_KEY_UNKNOWN,
                f"stamp key {stamp.key_id!r} is registered both in the policy and with the "
                "account; refusing an ambiguous key",
            ) from None
        if found is None:
            raise EnclaveError(
                ErrorCode.STAMP_KEY_UNKNOWN, f"stamp key {stamp.key_id!r} is not registered"
            )
        entry, account_bound = found
        now = self._clock()
        if abs(now - stamp.timestamp) > self._window:
            raise EnclaveError(
                ErrorCode.STAMP_EXPIRED,
                f"stamp timestamp {stamp.timestamp} is outside the {self._window} s window "
                f"around the enclave's clock ({int(now)})",
            )
        digest = canonical.request_digest(method, target, body)
        message = canonical.stamp_message(stamp.key_id, stamp.timestamp, stamp.nonce, digest)
        if not signatures.verify(entry.public_key, message, stamp.signature):
            raise EnclaveError(
                ErrorCode.STAMP_SIGNATURE_INVALID,
                "the stamp's signature does not verify for this key and this exact request "
                "(method, path, body)",
            )
        replay_key = hashlib.sha256(message).digest()[:16]
        self._replay.claim(
            replay_key, stamp.timestamp + self._window, ErrorCode.STAMP_REPLAYED, "stamp"
        )
        return VerifiedStamp(
            key_id=stamp.key_id,
            scopes=frozenset(entry.scopes),
            account_bound=account_bound,
            request_digest=digest,
            replay_key=replay_key,
        )

    def release(self, stamp: VerifiedStamp) -> None:
        self._replay.release(stamp.replay_key)
