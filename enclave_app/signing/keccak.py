"""Keccak-256 (the pre-standard SHA-3 padding Ethereum uses), via pycryptodome.

pycryptodome's public ``keccak.new(...)`` spends about 3 us of Python per call
(keyword handling, a fresh state object and its finalizer) around 1 us of C; a
signature hashes twice, so that was a tenth of the signing time. This module drives
the same C functions pycryptodome loads (``Crypto.Hash.keccak._raw_keccak_lib``,
pinned with the rest of the enclave's dependencies in requirements/enclave.txt) with
one reusable state per thread, reset after each digest. A known-answer test and the
differential tests against eth-account guard the result.
"""

from __future__ import annotations

import threading
from typing import Any

# pycryptodome's type stubs cover its public API only.
from Crypto.Hash.keccak import _raw_keccak_lib  # type: ignore[attr-defined]
from Crypto.Util._raw_api import (  # type: ignore[attr-defined]
    SmartPointer,
    VoidPointer,
    c_size_t,
    c_ubyte,
    c_uint8_ptr,
    get_raw_buffer,
)
from Crypto.Util._raw_api import create_string_buffer as _create_string_buffer

create_string_buffer: Any = _create_string_buffer

DIGEST_BYTES = 32
#: Keccak capacity in bytes for a 256-bit digest (2 x digest).
_CAPACITY_BYTES = 2 * DIGEST_BYTES
#: Keccak-f[1600] rounds.
_ROUNDS = 24
#: Original Keccak padding (0x01), not SHA-3's (0x06).
_KECCAK_PADDING = 0x01


def _check(result: int) -> None:
    if result:
        raise RuntimeError(f"keccak failed in C with error {result}")


class _ThreadState(threading.local):
    """One Keccak state and output buffer per thread (states are not shareable)."""

    def __init__(self) -> None:
        pointer = VoidPointer()
        _check(
            _raw_keccak_lib.keccak_init(
                pointer.address_of(), c_size_t(_CAPACITY_BYTES), c_ubyte(_ROUNDS)
            )
        )
        # Freed by pycryptodome's destructor when the thread's locals go away.
        self.owner = SmartPointer(pointer.get(), _raw_keccak_lib.keccak_destroy)
        self.state: Any = self.owner.get()
        self.output: Any = create_string_buffer(DIGEST_BYTES)


_local = _ThreadState()


def keccak256(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest of ``data``."""
    local = _local
    state = local.state
    try:
        _check(_raw_keccak_lib.keccak_absorb(state, c_uint8_ptr(data), c_size_t(len(data))))
        _check(
            _raw_keccak_lib.keccak_digest(
                state, local.output, c_size_t(DIGEST_BYTES), c_ubyte(_KECCAK_PADDING)
            )
        )
        digest: bytes = get_raw_buffer(local.output)
        return digest
    finally:
        _check(_raw_keccak_lib.keccak_reset(state))
