"""The cold path: pre-generated RSA recipient keys (single-use, or serving a bounded
number of calls for a bounded time), bounded concurrent KMS calls, and one KMS Decrypt
per record however many requests want it at once."""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_account import Account

from enclave_app import envelope, validation
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.kms import AttestedKms
from enclave_app.nsm import SocketNsm
from enclave_app.recipient_keys import RecipientKeyPool, generate_recipient_key
from tests.enclave_rig import EnclaveRig
from tests.stack_helpers import eip1559


class CountingGenerator:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.made: list[rsa.RSAPrivateKey] = []

    def __call__(self) -> rsa.RSAPrivateKey:
        key = generate_recipient_key()
        with self.lock:
            self.made.append(key)
        return key


def test_pool_keys_are_each_handed_out_once() -> None:
    generator = CountingGenerator()
    pool = RecipientKeyPool(3, generate=generator).start()
    try:
        assert pool.wait_full(timeout=30)
        with ThreadPoolExecutor(max_workers=8) as takers:
            taken = list(takers.map(lambda _: pool.take(), range(24)))
        assert len({id(key) for key in taken}) == 24
        assert len({key.private_numbers().d for key in taken}) == 24
        assert pool.wait_full(timeout=30)  # refilled in the background
        # Every key generated is either handed out or waiting: none twice, none lost.
        with generator.lock:
            made = list(generator.made)
        assert len(made) == len(taken) + pool.ready()
        assert {id(k) for k in made} >= {id(k) for k in taken}
    finally:
        pool.close()


def test_an_empty_or_disabled_pool_generates_in_the_callers_thread() -> None:
    generator = CountingGenerator()
    disabled = RecipientKeyPool(0, generate=generator).start()
    first, second = disabled.take(), disabled.take()
    assert first is not second
    assert len(generator.made) == 2
    assert disabled.ready() == 0
    with pytest.raises(ValueError, match="negative"):
        RecipientKeyPool(-1)


def test_a_shared_key_serves_its_uses_then_is_never_handed_out_again() -> None:
    generator = CountingGenerator()
    pool = RecipientKeyPool(2, generate=generator, uses_per_key=3).start()
    try:
        assert pool.wait_full(timeout=30)
        taken = [pool.take() for _ in range(9)]
    finally:
        pool.close()
    assert [id(key) for key in taken[:3]] == [id(taken[0])] * 3
    runs = [taken[i : i + 3] for i in range(0, 9, 3)]
    assert all(len({id(key) for key in run}) == 1 for run in runs)
    assert len({id(run[0]) for run in runs}) == 3  # a spent key never comes back
    assert pool.level()["uses_per_key"] == 3


def test_concurrent_takers_never_exceed_a_keys_uses() -> None:
    generator = CountingGenerator()
    pool = RecipientKeyPool(2, generate=generator, uses_per_key=5).start()
    try:
        with ThreadPoolExecutor(max_workers=8) as takers:
            taken = list(takers.map(lambda _: pool.take(), range(80)))
    finally:
        pool.close()
    uses: dict[int, int] = {}
    for key in taken:
        uses[id(key)] = uses.get(id(key), 0) + 1
    assert max(uses.values()) <= 5
    assert len(uses) >= 16  # 80 calls at most 5 each


def test_a_shared_key_is_dropped_once_its_age_runs_out() -> None:
    now = [0.0]
    pool = RecipientKeyPool(0, uses_per_key=100, max_age_seconds=60, clock=lambda: now[0])
    first = pool.take()
    now[0] = 59.9
    assert pool.take() is first
    now[0] = 60.0
    second = pool.take()
    assert second is not first
    now[0] = 61.0
    assert pool.take() is second  # the new key's age counts from its own first use
    with pytest.raises(ValueError, match="at least one"):
        RecipientKeyPool(1, uses_per_key=0)
    with pytest.raises(ValueError, match="positive"):
        RecipientKeyPool(1, max_age_seconds=0)


@pytest.fixture(scope="module")
def rig() -> Iterator[EnclaveRig]:
    root = Path(tempfile.mkdtemp(prefix="nwc-", dir="/tmp"))
    try:
        with EnclaveRig(root, kms_concurrency=2, recipient_pool=2) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sign(rig: EnclaveRig, account: dict[str, Any]) -> str:
    result = rig.call(
        "sign_transaction",
        {"account": account, "credentials": rig.credentials, "transaction": eip1559()},
    )
    return str(Account.recover_transaction(result["raw_transaction"]))


def test_every_kms_call_uses_its_own_pool_key(
    rig: EnclaveRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_out: list[rsa.RSAPrivateKey] = []
    take = rig.recipient_keys.take

    def recording_take() -> rsa.RSAPrivateKey:
        key = take()
        handed_out.append(key)
        return key

    monkeypatch.setattr(rig.recipient_keys, "take", recording_take)
    rig.gate.reset()
    accounts = [rig.create_account() for _ in range(3)]
    rig.forget_keys()
    for account in accounts:
        assert sign(rig, account) == account["address"]
    assert rig.gate.calls["GenerateDataKey"] == 3
    assert rig.gate.calls["Decrypt"] == 3
    assert len(handed_out) == 6
    assert len({key.private_numbers().d for key in handed_out}) == 6


def test_concurrent_kms_calls_stay_within_the_bound(rig: EnclaveRig) -> None:
    accounts = [rig.create_account() for _ in range(6)]
    rig.forget_keys()
    rig.gate.reset()
    rig.gate.delay = 0.3
    try:
        with ThreadPoolExecutor(max_workers=6) as signers:
            recovered = list(signers.map(lambda account: sign(rig, account), accounts))
    finally:
        rig.gate.delay = 0.0
    assert recovered == [account["address"] for account in accounts]
    assert rig.gate.calls["Decrypt"] == 6
    assert rig.gate.max_in_flight == 2


def test_kms_calls_reuse_their_connections(rig: EnclaveRig) -> None:
    rig.gate.reset()
    accounts = [rig.create_account() for _ in range(3)]
    rig.forget_keys()
    for account in accounts:
        assert sign(rig, account) == account["address"]
    assert rig.gate.calls["GenerateDataKey"] + rig.gate.calls["Decrypt"] == 6
    assert rig.gate.connections <= 1  # six calls one after the other, one connection at most


def test_a_cold_record_wanted_by_many_requests_is_decrypted_once(rig: EnclaveRig) -> None:
    account = rig.create_account()
    rig.forget_keys()
    rig.gate.reset()
    rig.gate.delay = 0.3
    try:
        with ThreadPoolExecutor(max_workers=8) as signers:
            recovered = list(signers.map(lambda _: sign(rig, account), range(8)))
    finally:
        rig.gate.delay = 0.0
    assert recovered == [account["address"]] * 8
    assert rig.gate.calls["Decrypt"] == 1


def test_a_kms_call_that_gets_no_slot_in_time_is_server_busy(rig: EnclaveRig) -> None:
    kms = AttestedKms(
        SocketNsm(rig.root / "nsm.sock"),
        endpoint_url=rig.kms.url,
        region="us-east-1",
        allowed_key_ids=(rig.key_arn,),
        timeout_seconds=1,
        max_concurrent_calls=1,
    )
    account = rig.create_account()
    credentials = validation.credentials(rig.credentials)
    outcomes: list[object] = []

    def decrypt() -> None:
        try:
            kms.decrypt(
                base64.b64decode(account["encrypted_data_key"]),
                rig.key_arn,
                envelope.encryption_context(account["account_id"]),
                credentials,
            )
            outcomes.append("ok")
        except EnclaveError as exc:
            outcomes.append(exc.code)

    rig.gate.open.clear()
    try:
        holder = threading.Thread(target=decrypt)
        holder.start()
        while rig.gate.in_flight == 0:
            time.sleep(0.05)
        decrypt()  # no slot for 1 s
    finally:
        rig.gate.open.set()
    holder.join()
    assert ErrorCode.SERVER_BUSY in outcomes


def test_a_shared_key_gets_a_new_attestation_for_every_kms_call(rig: EnclaveRig) -> None:
    """KMS accepts one recipient key in several calls, each with its own attestation
    document, and every answer unwraps to the right data key."""
    nsm = SocketNsm(rig.root / "nsm.sock")
    documents: list[bytes] = []
    attest = nsm.attest

    def recording_attest(**kwargs: Any) -> bytes:
        document = attest(**kwargs)
        documents.append(document)
        return document

    nsm.attest = recording_attest  # type: ignore[method-assign]
    generator = CountingGenerator()
    kms = AttestedKms(
        nsm,
        endpoint_url=rig.kms.url,
        region="us-east-1",
        allowed_key_ids=(rig.key_arn,),
        recipient_keys=RecipientKeyPool(0, generate=generator, uses_per_key=4),
    )
    credentials = validation.credentials(rig.credentials)
    context = envelope.encryption_context("acct-shared-recipient")
    made = [kms.generate_data_key(rig.key_arn, context, credentials) for _ in range(2)]
    unwrapped = [
        kms.decrypt(key.ciphertext_blob, rig.key_arn, context, credentials) for key in made
    ]
    assert unwrapped == [key.plaintext for key in made]
    assert made[0].plaintext != made[1].plaintext
    assert len(generator.made) == 1  # four calls, one RSA key
    assert len(documents) == 4
    assert len(set(documents)) == 4
