"""Stamp verification with real Ed25519 and P-256 keys, and the replay memory."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_app.auth import canonical
from enclave_app.auth.canonical import Stamp
from enclave_app.auth.replay import ReplayMemory, ReplayMemoryFullError
from enclave_app.auth.stamps import StampVerifier
from enclave_app.errors import EnclaveError, ErrorCode
from nitro_wallet.stamping import make_stamp
from tests.authhelpers import Clock, entry, key_file

PATH = "/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/message"
BODY = b'{"message":"hello"}'
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> StampVerifier:
    return StampVerifier(ReplayMemory(capacity=8, clock=clock), window_seconds=60, clock=clock)


@pytest.mark.parametrize("algorithm", ["ed25519", "p256"])
def test_a_stamp_made_by_the_cli_helper_verifies(
    verifier: StampVerifier, clock: Clock, algorithm: str
) -> None:
    key = key_file("ops-1", algorithm)
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    verified = verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(key)})
    assert verified.key_id == "ops-1"
    assert verified.scopes == {"create", "sign", "read"}
    assert not verified.account_bound
    assert verified.request_digest == canonical.request_digest("POST", PATH, BODY)


def test_a_p256_stamp_checks_out_with_cryptography_directly(clock: Clock) -> None:
    key = key_file("ops-1", "p256")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    stamp = canonical.parse_stamp(header)
    message = canonical.stamp_message(
        "ops-1", stamp.timestamp, stamp.nonce, canonical.request_digest("POST", PATH, BODY)
    )
    der = encode_dss_signature(
        int.from_bytes(stamp.signature[:32], "big"), int.from_bytes(stamp.signature[32:], "big")
    )
    public = key.private_key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, message, ec.ECDSA(hashes.SHA256()))  # raises if wrong


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", PATH, BODY),
        ("POST", PATH.replace("6f1c", "7f1c"), BODY),
        ("POST", PATH + "?x=1", BODY),
        ("POST", PATH, b'{"message":"hellO"}'),
        ("POST", PATH, BODY + b" "),
        ("POST", PATH, b""),
    ],
)
def test_a_stamp_for_another_method_path_or_body_is_refused(
    verifier: StampVerifier, clock: Clock, method: str, path: str, body: bytes
) -> None:
    key = key_file("ops-1")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, method, path, body, {"ops-1": entry(key)})
    assert caught.value.code == ErrorCode.STAMP_SIGNATURE_INVALID


def test_an_altered_stamp_is_refused(verifier: StampVerifier, clock: Clock) -> None:
    key = key_file("ops-1")
    stamp = canonical.parse_stamp(make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now)))
    for altered in (
        Stamp(stamp.key_id, stamp.timestamp + 1, stamp.nonce, stamp.signature),
        Stamp(stamp.key_id, stamp.timestamp, bytes(16), stamp.signature),
        Stamp(stamp.key_id, stamp.timestamp, stamp.nonce, bytes(64)),
    ):
        with pytest.raises(EnclaveError) as caught:
            verifier.verify(
                canonical.format_stamp(altered), "POST", PATH, BODY, {"ops-1": entry(key)}
            )
        assert caught.value.code == ErrorCode.STAMP_SIGNATURE_INVALID


def test_a_stamp_signed_by_another_key_under_a_registered_id_is_refused(
    verifier: StampVerifier, clock: Clock
) -> None:
    registered, impostor = key_file("ops-1"), key_file("ops-1")
    header = make_stamp(impostor, "POST", PATH, BODY, timestamp=int(clock.now))
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(registered)})
    assert caught.value.code == ErrorCode.STAMP_SIGNATURE_INVALID


def test_an_unregistered_key_is_refused(verifier: StampVerifier, clock: Clock) -> None:
    key = key_file("stranger")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(key_file("ops-1"))})
    assert caught.value.code == ErrorCode.STAMP_KEY_UNKNOWN


def test_an_account_bound_key_verifies_and_says_so(verifier: StampVerifier, clock: Clock) -> None:
    key = key_file("acct-key")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    verified = verifier.verify(
        header, "POST", PATH, BODY, {}, {"acct-key": entry(key, frozenset({"sign"}))}
    )
    assert verified.account_bound
    assert verified.scopes == {"sign"}


def test_an_id_in_both_the_policy_and_the_account_is_refused(
    verifier: StampVerifier, clock: Clock
) -> None:
    key = key_file("ops-1")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(key)}, {"ops-1": entry(key)})
    assert caught.value.code == ErrorCode.STAMP_KEY_UNKNOWN
    assert "ambiguous" in caught.value.message


@pytest.mark.parametrize("offset", [-61, 61, -10_000])
def test_a_stamp_outside_the_window_is_expired(
    verifier: StampVerifier, clock: Clock, offset: int
) -> None:
    key = key_file("ops-1")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now) + offset)
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(key)})
    assert caught.value.code == ErrorCode.STAMP_EXPIRED


@pytest.mark.parametrize("offset", [-60, 60])
def test_a_stamp_at_the_edge_of_the_window_is_fresh(
    verifier: StampVerifier, clock: Clock, offset: int
) -> None:
    key = key_file("ops-1")
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now) + offset)
    verifier.verify(header, "POST", PATH, BODY, {"ops-1": entry(key)})


def test_a_replayed_stamp_is_refused_until_it_is_released(
    verifier: StampVerifier, clock: Clock
) -> None:
    key = key_file("ops-1")
    keys = {"ops-1": entry(key)}
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    first = verifier.verify(header, "POST", PATH, BODY, keys)
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, "POST", PATH, BODY, keys)
    assert caught.value.code == ErrorCode.STAMP_REPLAYED
    verifier.release(first)  # the request failed before anything was signed
    verifier.verify(header, "POST", PATH, BODY, keys)


def test_a_malleated_p256_signature_is_the_same_stamp(
    verifier: StampVerifier, clock: Clock
) -> None:
    key = key_file("ops-1", "p256")
    keys = {"ops-1": entry(key)}
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    verifier.verify(header, "POST", PATH, BODY, keys)
    stamp = canonical.parse_stamp(header)
    s = int.from_bytes(stamp.signature[32:], "big")
    twin = stamp.signature[:32] + (P256_N - s).to_bytes(32, "big")
    malleated = canonical.format_stamp(Stamp(stamp.key_id, stamp.timestamp, stamp.nonce, twin))
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(malleated, "POST", PATH, BODY, keys)
    assert caught.value.code == ErrorCode.STAMP_REPLAYED  # valid signature, same message


def test_two_stamps_of_the_same_request_in_the_same_second_are_both_accepted(
    verifier: StampVerifier, clock: Clock
) -> None:
    key = key_file("ops-1")  # Ed25519 is deterministic: only the nonce tells them apart
    keys = {"ops-1": entry(key)}
    for _ in range(2):
        header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
        verifier.verify(header, "POST", PATH, BODY, keys)


def test_a_full_replay_memory_refuses_new_stamps_until_old_ones_expire(clock: Clock) -> None:
    verifier = StampVerifier(ReplayMemory(capacity=2, clock=clock), window_seconds=60, clock=clock)
    key = key_file("ops-1")
    keys = {"ops-1": entry(key)}
    for _ in range(2):
        verifier.verify(
            make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now)), "POST", PATH, BODY, keys
        )
    clock.now += 30
    header = make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now))
    with pytest.raises(ReplayMemoryFullError) as caught:
        verifier.verify(header, "POST", PATH, BODY, keys)
    assert caught.value.code == ErrorCode.REPLAY_MEMORY_FULL
    assert caught.value.retry_after == 30
    clock.now += 31  # the first two are now outside the window: their slots free up
    verifier.verify(header, "POST", PATH, BODY, keys)


def test_forged_stamps_never_take_a_replay_slot(clock: Clock) -> None:
    memory = ReplayMemory(capacity=1, clock=clock)
    verifier = StampVerifier(memory, window_seconds=60, clock=clock)
    key, forger = key_file("ops-1"), key_file("ops-1")
    keys = {"ops-1": entry(key)}
    for _ in range(5):
        with pytest.raises(EnclaveError):
            verifier.verify(
                make_stamp(forger, "POST", PATH, BODY, timestamp=int(clock.now)),
                "POST",
                PATH,
                BODY,
                keys,
            )
    assert len(memory) == 0
    verifier.verify(
        make_stamp(key, "POST", PATH, BODY, timestamp=int(clock.now)), "POST", PATH, BODY, keys
    )


def test_replay_memory_refuses_a_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReplayMemory(capacity=0)
