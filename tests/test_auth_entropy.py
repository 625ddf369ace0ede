"""Key material mixes the OS CSPRNG with the NSM's random source (HKDF-SHA256)."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from enclave_app.auth.entropy import SALT, MixedEntropy
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.nsm import SocketNsm
from nitro_sim.nsm import SimulatedNsm
from tests.simhelpers import make_ca


def constant(n: int) -> bytes:
    return b"\x42" * n


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869, written out with hmac: the oracle for the mixing."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_the_output_is_hkdf_of_both_sources() -> None:
    a, b = os.urandom(32), os.urandom(32)
    entropy = MixedEntropy(nsm_random=lambda n: b[:n], os_random=lambda n: a[:n])
    assert entropy.random_bytes(48, "label") == hkdf_sha256(a + b, SALT, b"label", 48)


@pytest.mark.parametrize("stuck", ["os", "nsm"])
def test_a_key_still_differs_when_one_source_returns_constant_bytes(stuck: str) -> None:
    def make() -> MixedEntropy:
        if stuck == "os":
            return MixedEntropy(nsm_random=os.urandom, os_random=constant)
        return MixedEntropy(nsm_random=constant, os_random=os.urandom)

    keys = {make().random_bytes(32, "secp256k1-private-key") for _ in range(16)}
    assert len(keys) == 16


def test_both_sources_stuck_is_what_makes_keys_repeat() -> None:
    # The same test with both sources constant: the check above could not pass by luck.
    entropy = MixedEntropy(nsm_random=constant, os_random=constant)
    assert entropy.random_bytes(32, "k") == entropy.random_bytes(32, "k")


def test_the_purpose_separates_outputs() -> None:
    entropy = MixedEntropy(nsm_random=constant, os_random=constant)
    assert entropy.random_bytes(32, "a") != entropy.random_bytes(32, "b")


def broken(n: int) -> bytes:
    raise OSError("no entropy")


@pytest.mark.parametrize(
    ("nsm", "osr"),
    [
        (broken, os.urandom),
        (os.urandom, broken),
        (lambda n: b"\x00" * (n - 1), os.urandom),
        (os.urandom, lambda n: b""),
    ],
)
def test_nothing_is_generated_while_either_source_fails(nsm: object, osr: object) -> None:
    entropy = MixedEntropy(nsm_random=nsm, os_random=osr)  # type: ignore[arg-type]
    with pytest.raises(EnclaveError) as caught:
        entropy.random_bytes(32, "secp256k1-private-key")
    assert caught.value.code == ErrorCode.ENTROPY_UNAVAILABLE


def test_the_simulated_nsm_feeds_it_over_its_socket(tmp_path: Path) -> None:
    sim = SimulatedNsm(make_ca(tmp_path), {}, "i-0sim-enc0sim")
    with sim.serve(tmp_path / "nsm.sock"):
        entropy = MixedEntropy(SocketNsm(tmp_path / "nsm.sock").get_random)
        assert entropy.random_bytes(32, "k") != entropy.random_bytes(32, "k")
    with pytest.raises(EnclaveError) as caught:  # the NSM is gone: refuse
        entropy.random_bytes(32, "k")
    assert caught.value.code == ErrorCode.ENTROPY_UNAVAILABLE
