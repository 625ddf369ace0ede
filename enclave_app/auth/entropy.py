"""Key material from two independent sources: the OS CSPRNG and the NSM's RNG.

Enclaves have booted with an empty kernel entropy pool (aws-nitro-enclaves-sdk-c
issue 41); AWS's answer is the NSM's ``GetRandom``. Neither source is trusted alone:
each draw takes 32 bytes from both and feeds their concatenation to HKDF-SHA256
(RFC 5869: HMAC-SHA256 extract, then expand with a per-purpose label). The output is
unpredictable as long as either input is, so a stuck or hostile source cannot make
keys predictable on its own. If either source fails (raises, or returns the wrong
length), ``random_bytes`` raises ``entropy_unavailable`` and nothing is generated:
the enclave never falls back to one source.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["MixedEntropy"]

SEED_BYTES = 32
MAX_OUTPUT = 255 * 32  # HKDF-SHA256's limit
SALT = b"nitro-wallet/entropy/v1"


class MixedEntropy:
    def __init__(
        self,
        nsm_random: Callable[[int], bytes],
        os_random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._nsm_random = nsm_random
        self._os_random = os_random

    def random_bytes(self, n: int, purpose: str) -> bytes:
        """``n`` bytes for ``purpose`` (a label such as ``secp256k1-private-key``)."""
        if type(n) is not int or not 1 <= n <= MAX_OUTPUT:
            raise ValueError(f"n must be 1..{MAX_OUTPUT}")
        if not purpose or not purpose.isascii():
            raise ValueError("purpose must be a non-empty ASCII label")
        os_part = _draw(self._os_random, "the OS CSPRNG")
        nsm_part = _draw(self._nsm_random, "the NSM random source")
        return HKDF(
            algorithm=hashes.SHA256(), length=n, salt=SALT, info=purpose.encode("ascii")
        ).derive(os_part + nsm_part)


def _draw(source: Callable[[int], bytes], name: str) -> bytes:
    try:
        data = source(SEED_BYTES)
    except Exception as exc:  # any failure of a source means: generate nothing
        raise EnclaveError(
            ErrorCode.ENTROPY_UNAVAILABLE,
            f"{name} failed ({type(exc).__name__}); refusing to generate key material",
        ) from None
    if not isinstance(data, bytes) or len(data) != SEED_BYTES:
        raise EnclaveError(
            ErrorCode.ENTROPY_UNAVAILABLE,
            f"{name} returned {len(data) if isinstance(data, bytes) else 'no'} bytes, "
            f"expected {SEED_BYTES}; refusing to generate key material",
        )
    return data
