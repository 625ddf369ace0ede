"""The key cache and the parsed-record cache: bounded, time-limited, and never a hit
for a record other than the one a key was unlocked from."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from enclave_app.key_cache import CacheKey, KeyCache
from enclave_app.signing import SigningKey
from tests.enclave_rig import EnclaveRig, error_code

MESSAGE = "0x" + b"cache test".hex()


def test_key_cache_is_bounded_in_size_and_time() -> None:
    now = [0.0]
    cache: KeyCache[bytes] = KeyCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    keys = [CacheKey.for_record(str(i), "0x1", "k", b"k", b"d") for i in range(3)]
    for i, key in enumerate(keys):
        cache.put(key, bytes([i]))
        now[0] += 1
    assert len(cache) == 2
    assert cache.get(keys[0]) is None  # the oldest went first
    assert cache.get(keys[2]) == b"\x02"
    now[0] = 11.5  # keys[1] (put at 1) expired, keys[2] (put at 2) not yet
    assert cache.get(keys[1]) is None
    assert len(cache) == 1  # expired entry dropped on access
    now[0] = 12.0
    cache.purge_expired()  # no access needed: an idle enclave forgets on time too
    assert len(cache) == 0
    disabled: KeyCache[bytes] = KeyCache(max_entries=0, ttl_seconds=10)
    disabled.put(keys[0], b"x")
    assert disabled.get(keys[0]) is None
    with pytest.raises(ValueError, match="negative"):
        KeyCache(max_entries=-1, ttl_seconds=10)


def test_holds_peeks_without_expiring_or_counting() -> None:
    now = [0.0]
    cache: KeyCache[str] = KeyCache(max_entries=10, ttl_seconds=10, clock=lambda: now[0])
    key, absent = (CacheKey.for_record(str(i), "0x1", "k", b"k", b"d") for i in range(2))
    cache.put(key, "a")  # expires at 10
    now[0] = 8.5
    assert cache.holds(key)
    assert cache.holds(key, for_seconds=1)
    assert not cache.holds(key, for_seconds=1.5)  # not for that long
    assert not cache.holds(absent)
    now[0] = 10
    assert not cache.holds(key)
    assert len(cache) == 1  # only read: nothing expired or counted
    assert cache.evictions() == {"capacity": 0, "ttl": 0}


def test_a_re_unlocked_key_starts_a_new_lifetime() -> None:
    now = [0.0]
    cache: KeyCache[str] = KeyCache(max_entries=10, ttl_seconds=10, clock=lambda: now[0])
    first, second = (CacheKey.for_record(str(i), "0x1", "k", b"k", b"d") for i in range(2))
    cache.put(first, "a")
    now[0] = 2
    cache.put(second, "b")  # expires at 12
    now[0] = 5
    cache.put(first, "a")  # unlocked again at 5: expires at 15, after second
    now[0] = 12
    cache.purge_expired()
    assert (cache.get(first), cache.get(second)) == ("a", None)


def test_cache_keys_change_with_any_byte_of_the_record() -> None:
    base = CacheKey.for_record("id", "0xab", "key-1", b"key", b"data")
    assert base == CacheKey.for_record("id", "0xAB", "key-1", b"key", b"data")
    assert base != CacheKey.for_record("id", "0xab", "key-1", b"key!", b"data")
    assert base != CacheKey.for_record("id", "0xab", "key-1", b"key", b"data!")
    assert base != CacheKey.for_record("id", "0xac", "key-1", b"key", b"data")
    assert base != CacheKey.for_record("id", "0xab", "key-2", b"key", b"data")
    assert base != CacheKey.for_record("id2", "0xab", "key-1", b"key", b"data")
    # Length-prefixed parts: moving a byte between fields is a different record.
    assert CacheKey.for_record("i", "d", "k", b"ab", b"c") != CacheKey.for_record(
        "i", "d", "k", b"a", b"bc"
    )


def test_the_cache_holds_key_objects_that_never_show_their_secret() -> None:
    secret = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    key = SigningKey(secret)
    assert key.address == Account.from_key(secret).address
    assert secret.hex() not in repr(key)
    assert "4c0883a6" not in repr(key)


# ------------------------------------------------------ through the real enclave


@pytest.fixture(scope="module")
def rig() -> Iterator[EnclaveRig]:
    root = Path(tempfile.mkdtemp(prefix="nwk-", dir="/tmp"))
    try:
        with EnclaveRig(root) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sign_message(rig: EnclaveRig, account: dict[str, Any]) -> dict[str, Any]:
    return rig.call(
        "sign_message", {"account": account, "credentials": rig.credentials, "message": MESSAGE}
    )


def recovered(result: dict[str, Any]) -> str:
    from eth_account.messages import encode_defunct

    message = encode_defunct(hexstr=MESSAGE)
    return str(Account.recover_message(message, signature=result["signature"]))


@pytest.mark.parametrize(
    ("field", "donor_field"),
    [
        ("encrypted_data_key", "encrypted_data_key"),
        ("encrypted_private_key", "encrypted_private_key"),
        ("address", "address"),
    ],
)
def test_a_warm_key_is_never_served_for_a_record_with_swapped_parts(
    rig: EnclaveRig, field: str, donor_field: str
) -> None:
    victim, donor = rig.create_account(), rig.create_account()
    assert recovered(sign_message(rig, victim)) == victim["address"]  # warm now
    rig.gate.reset()
    swapped = {**victim, field: donor[donor_field]}
    code = error_code(lambda: sign_message(rig, swapped))
    assert code in {"ciphertext_invalid", "address_mismatch"}
    assert rig.gate.calls["Decrypt"] == 1  # a cache miss: KMS was asked, and refused
    # The intact record is still warm and still signs as itself.
    rig.gate.reset()
    assert recovered(sign_message(rig, victim)) == victim["address"]
    assert rig.gate.calls["Decrypt"] == 0


def test_a_warm_key_is_never_served_under_another_kms_key_id(rig: EnclaveRig) -> None:
    account = rig.create_account()
    sign_message(rig, account)
    other = rig.key_arn.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    assert error_code(lambda: sign_message(rig, {**account, "key_id": other})) == (
        "kms_key_not_allowed"
    )


def test_a_byte_flipped_ciphertext_is_a_different_record(rig: EnclaveRig) -> None:
    account = rig.create_account()
    sign_message(rig, account)
    blob = bytearray(base64.b64decode(account["encrypted_private_key"]))
    blob[-1] ^= 1
    flipped = {**account, "encrypted_private_key": base64.b64encode(bytes(blob)).decode()}
    assert error_code(lambda: sign_message(rig, flipped)) == "ciphertext_invalid"
