"""Ephemeral RSA-2048 keys for KMS ``Recipient``, generated ahead of use.

Every attested KMS call needs a fresh key pair, and generating one costs tens of
milliseconds of CPU: most of an account creation. The pool keeps up to ``size`` keys
ready; one background thread refills it. ``cryptography`` (50.x) releases the GIL
while OpenSSL generates the key, so the refiller runs beside request workers rather
than in front of them (``bench/enclave_recipient_keys.py`` measures it, pinned to one
CPU as well).

Each key is handed out exactly once: :meth:`RecipientKeyPool.take` removes it from the
pool under a lock, and a key is only ever put in the pool by the thread that generated
it. When the pool is empty, ``take`` generates a key in the caller's thread, as before
the pool existed, so a burst never waits for the refiller.
"""

from __future__ import annotations

import logging
import threading
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
    ) -> None:
        if size < 0:
            raise ValueError("the recipient key pool size must not be negative")
        self._size = size
        self._generate = generate
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
            self._changed.notify_all()
        if self._refiller is not None:
            self._refiller.join(timeout=10)

    def take(self) -> rsa.RSAPrivateKey:
        """A key no one else has or will get: from the pool, or generated now."""
        with self._changed:
            key = self._keys.popleft() if self._keys else None
            if key is None:
                self._generated_inline += 1
            self._changed.notify_all()  # the refiller
        return key if key is not None else self._generate()

    def ready(self) -> int:
        """Keys waiting in the pool."""
        with self._changed:
            return len(self._keys)

    def level(self) -> dict[str, int]:
        """For the stats op: keys ready, the pool's size, and the takes that found it empty
        (each paid for a key generation in the request's own thread)."""
        with self._changed:
            return {
                "ready": len(self._keys),
                "size": self._size,
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
