"""Ephemeral RSA-2048 keys for KMS ``Recipient``, generated ahead of use.

Every attested KMS call needs a fresh key pair, and generating one costs tens of
milliseconds of CPU: most of an account creation. The pool keeps up to ``size`` keys
ready; one background thread refills it. ``cryptography`` (50.x) releases the GIL
while OpenSSL generates the key, so the refiller runs beside request workers rather
than in front of them (``bench/enclave_recipient_keys.py`` measures it, pinned to one
CPU as well).

A key serves at most ``uses_per_key`` KMS calls within ``max_age_seconds`` of its
first use (``kms.recipient_key_uses`` and ``kms.recipient_key_max_age_seconds``;
1 use: single-use keys). Each call still gets its own attestation document, with its
own timestamp, embedding the key's public half; docs/performance.md ("Account
creation") gives the reasoning and AWS's precedent. While a key is current,
:meth:`RecipientKeyPool.take` hands it out under a lock and counts the use; once its
uses or its age run out it is dropped, never handed out again, and the next key is
taken from the pool. A key is only ever put in the pool by the thread that generated
it. When the pool is empty, ``take`` generates a key in the caller's thread, as before
the pool existed, so a burst never waits for the refiller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
#: Seconds the refiller waits before retrying after a failed generation.
_RETRY_SECONDS = 1.0


def generate_recipient_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)


class RecipientKeyPool:
    def __init__(
        self,
        size: int,
        generate: Callable[[], rsa.RSAPrivateKey] = generate_recipient_key,
        *,
        uses_per_key: int = 1,
        max_age_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 0:
            raise ValueError("the recipient key pool size must not be negative")
        if uses_per_key < 1:
            raise ValueError("a recipient key serves at least one call")
        if max_age_seconds <= 0:
            raise ValueError("the recipient key age bound must be positive")
        self._size = size
        self._generate = generate
        self._uses_per_key = uses_per_key
        self._max_age = max_age_seconds
        self._clock = clock
        # The key being shared (uses_per_key > 1): the key, its first use, uses left.
        self._current: tuple[rsa.RSAPrivateKey, float, int] | None = None
        self._keys: deque[rsa.RSAPrivateKey] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._refiller: threading.Thread | None = None
        self._generated_inline = 0  # takes that found the pool empty

    def start(self) -> RecipientKeyPool:
        """Start the refiller (nothing to do for a pool of size 0)."""
        if self._size and self._refiller is None:
            self._refiller = threading.Thread(
                target=self._refill, name="recipient-key-refill", daemon=True
            )
            self._refiller.start()
        return self

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._keys.clear()
            self._current = None
            self._changed.notify_all()
        if self._refiller is not None:
            self._refiller.join(timeout=10)

    def take(self) -> rsa.RSAPrivateKey:
        """A key for one KMS call: the current key while it has uses and age left, else
        the next one from the pool, or one generated now. A key handed out for the last
        time, or too old, is never handed out again."""
        with self._changed:
            key = self._take_current()
            if key is not None:
                return key
            key = self._keys.popleft() if self._keys else None
            if key is None:
                self._generated_inline += 1
            else:
                self._share(key)
            self._changed.notify_all()  # the refiller
        if key is None:
            key = self._generate()
            with self._changed:
                if self._current is None:  # takers that generated at once: one key is shared
                    self._share(key)
        return key

    def _share(self, key: rsa.RSAPrivateKey) -> None:
        """Make ``key``, just handed out once, the current key (under the lock)."""
        if self._uses_per_key > 1:
            self._current = (key, self._clock(), self._uses_per_key - 1)

    def _take_current(self) -> rsa.RSAPrivateKey | None:
        """One use of the current key, if it has uses and age left (under the lock)."""
        if self._current is None:
            return None
        key, first_use, uses_left = self._current
        if self._clock() - first_use >= self._max_age:
            self._current = None
            return None
        self._current = (key, first_use, uses_left - 1) if uses_left > 1 else None
        return key

    def ready(self) -> int:
        """Keys waiting in the pool."""
        with self._changed:
            return len(self._keys)

    def level(self) -> dict[str, int]:
        """For the stats op: keys ready, the pool's size, the calls one key serves, and the
        takes that found the pool empty (each paid for a key generation in the request's
        own thread)."""
        with self._changed:
            return {
                "ready": len(self._keys),
                "size": self._size,
                "uses_per_key": self._uses_per_key,
                "generated_inline": self._generated_inline,
            }

    def wait_full(self, timeout: float) -> bool:
        """Block until the pool holds ``size`` keys (tests, warm-up); False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._closed or len(self._keys) >= self._size, timeout
            )

    def _refill(self) -> None:
        while self._wait_for_room():
            try:
                key = self._generate()
            except Exception as exc:  # keep the pool alive; take() still generates inline
                log.error("recipient key generation failed: %s", type(exc).__name__)
                with self._changed:
                    self._changed.wait(_RETRY_SECONDS)
                continue
            with self._changed:
                if not self._closed:
                    self._keys.append(key)
                    self._changed.notify_all()

    def _wait_for_room(self) -> bool:
        """Wait until the pool has room for a key; False once the pool is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or len(self._keys) < self._size)
            return not self._closed
