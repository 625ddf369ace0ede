"""Account labels and bound stamp keys are sealed with the key (envelope version 2): a
record whose metadata the parent changed does not open, not even from the warm cache,
and version 1 records keep opening without metadata. New keys and their GCM nonces come
from the mixed OS + NSM entropy source."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from enclave_app import envelope
from enclave_app.account_metadata import AccountMetadata, parse_labels, parse_metadata
from enclave_app.accounts import (
    AccountVault,
    RandomSource,
    SealedAccount,
    additional_data_for,
    os_random,
)
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AwsCredentials, DataKey
from enclave_app.policy import Scope
from enclave_app.signing.keys import generate_private_key, private_key_to_address
from tests.policy_helpers import public_pem

ACCOUNT_ID = "6f1c2b1e-8d0a-4c5e-9b7a-1f2e3d4c5b6a"
CREDENTIALS = AwsCredentials("AKIAEXAMPLEEXAMPLE00", "secret")


class KmsDouble:
    """Stands in for AttestedKms in these unit tests (the stack tests use the simulated
    KMS): hands out one data key and counts the Decrypt calls, so a test can tell a warm
    cache hit from a trip to KMS."""

    def __init__(self) -> None:
        self.data_key = os.urandom(32)
        self.decrypts = 0
        self.generates = 0

    def generate_data_key(
        self, key_id: str, context: Mapping[str, str], credentials: AwsCredentials
    ) -> DataKey:
        self.generates += 1
        return DataKey(
            self.data_key, b"blob:" + context[envelope.ENCRYPTION_CONTEXT_KEY].encode(), key_id
        )

    def decrypt(
        self, blob: bytes, key_id: str, context: Mapping[str, str], credentials: AwsCredentials
    ) -> bytes:
        self.decrypts += 1
        return self.data_key


def vault(random: RandomSource = os_random) -> tuple[AccountVault, KmsDouble]:
    kms = KmsDouble()
    return AccountVault(kms, KeyCache(16, 600), random=random), kms  # type: ignore[arg-type]


def metadata(**record: Any) -> AccountMetadata:
    return parse_metadata(record)


LABELLED: dict[str, Any] = {
    "created_by": "stamp:ops",
    "labels": ["hot", "eu"],
    "stamp_keys": [{"id": "owner", "public_key": public_pem("p256", 7), "scopes": ["sign"]}],
}


def test_a_new_account_is_sealed_as_version_2_and_opens_with_its_metadata() -> None:
    accounts, kms = vault()
    account = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS, metadata(**LABELLED))
    assert account.encrypted_private_key[0] == envelope.ENVELOPE_V2
    assert account.metadata.labels == {"hot", "eu"}
    key = accounts.unlock(account, CREDENTIALS)
    assert key.address == account.address
    assert kms.decrypts == 0  # warm
    cold, cold_kms = vault()
    cold_kms.data_key = kms.data_key
    assert cold.unlock(account, CREDENTIALS).address == key.address
    assert cold_kms.decrypts == 1


OWNER_KEY = LABELLED["stamp_keys"][0]


@pytest.mark.parametrize(
    "change",
    [
        {"labels": ["hot", "eu", "treasury"]},
        {"labels": ["hot"]},
        {"labels": []},
        {"stamp_keys": []},
        {"stamp_keys": [{**OWNER_KEY, "scopes": ["sign", "create"]}]},
        {"stamp_keys": [{**OWNER_KEY, "id": "owner2"}]},
        {"stamp_keys": [{**OWNER_KEY, "public_key": public_pem("p256", 8)}]},
        {"created_by": "relay:bot"},
        {"created_by": ""},
    ],
)
def test_changed_metadata_does_not_open_cold_or_warm(change: dict[str, Any]) -> None:
    accounts, kms = vault()
    account = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS, metadata(**LABELLED))
    forged = replace(account, metadata=metadata(**{**LABELLED, **change}))
    with pytest.raises(EnclaveError) as error:
        accounts.unlock(forged, CREDENTIALS)  # the warm key must not answer for it
    assert error.value.code is ErrorCode.CIPHERTEXT_INVALID
    assert kms.decrypts == 1


def test_the_order_of_labels_in_a_record_does_not_matter() -> None:
    accounts, _ = vault()
    account = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS, metadata(labels=["b", "a"]))
    assert accounts.unlock(replace(account, metadata=metadata(labels=["a", "b"])), CREDENTIALS)
    assert account.metadata.to_record() == {"labels": ["a", "b"]}


def test_a_version_2_ciphertext_relabelled_version_1_is_refused() -> None:
    accounts, _ = vault()
    account = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS, metadata(labels=["hot"]))
    stripped = replace(
        account,
        encrypted_private_key=bytes([envelope.ENVELOPE_V1]) + account.encrypted_private_key[1:],
        metadata=AccountMetadata(),
    )
    cold, cold_kms = vault()
    cold_kms.data_key = accounts._kms.data_key  # type: ignore[attr-defined]
    with pytest.raises(EnclaveError) as error:
        cold.unlock(stripped, CREDENTIALS)
    assert error.value.code is ErrorCode.CIPHERTEXT_INVALID


def _version_1_account(data_key: bytes) -> SealedAccount:
    private_key = generate_private_key()
    address = private_key_to_address(private_key)
    sealed = envelope.seal(data_key, private_key, envelope.additional_data(ACCOUNT_ID, address))
    return SealedAccount(ACCOUNT_ID, address, "key", sealed, b"blob")


def test_a_version_1_account_keeps_opening_and_cannot_claim_labels() -> None:
    accounts, kms = vault()
    account = _version_1_account(kms.data_key)
    assert account.encrypted_private_key[0] == envelope.ENVELOPE_V1
    assert accounts.unlock(account, CREDENTIALS).address == account.address
    with pytest.raises(EnclaveError) as error:
        accounts.unlock(replace(account, metadata=metadata(labels=["treasury"])), CREDENTIALS)
    assert error.value.code is ErrorCode.CIPHERTEXT_INVALID
    assert "version 1 account" in error.value.message


def test_the_additional_data_names_its_version_and_binds_every_field() -> None:
    account = SealedAccount(
        ACCOUNT_ID, "0xAbC", "k", b"\x02" + bytes(40), b"d", metadata(labels=["x"])
    )
    assert additional_data_for(account) == (
        b"nitro-wallet/v2|"
        + ACCOUNT_ID.encode()
        + b'|0xabc|{"created_by":"","labels":["x"],"stamp_keys":[]}'
    )
    key = os.urandom(32)
    sealed = envelope.seal(key, b"secret", additional_data_for(account))
    with pytest.raises(EnclaveError):  # a v2 ciphertext with v1 additional data
        envelope.open_sealed(key, sealed, envelope.additional_data(ACCOUNT_ID, "0xabc"))


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"labels": "hot"}, "list of at most 16 labels"),
        ({"created_by": "root"}, "stamp:<id> or relay:<id>"),
        ({"created_by": "relay:a.b"}, "stamp:<id> or relay:<id>"),
        ({"created_by": 7}, "stamp:<id> or relay:<id>"),
        ({"labels": ["Hot"]}, "must match"),
        ({"labels": ["hot", "hot"]}, "repeats a label"),
        ({"labels": [f"l{i}" for i in range(17)]}, "at most 16"),
        ({"stamp_keys": [{"id": "k", "public_key": "nope", "scopes": ["sign"]}]}, "PEM"),
        ({"stamp_keys": [{"id": "k", "public_key": public_pem("p256", 1)}]}, "exactly id"),
        (
            {"stamp_keys": [{"id": "k", "public_key": public_pem("p256", 1), "scopes": ["root"]}]},
            "scopes",
        ),
        (
            {
                "stamp_keys": [
                    {"id": "k", "public_key": public_pem("p256", 1), "scopes": []},
                    {"id": "k", "public_key": public_pem("p256", 2), "scopes": []},
                ]
            },
            "repeats a key id",
        ),
    ],
)
def test_malformed_metadata_is_invalid_params(record: dict[str, Any], problem: str) -> None:
    with pytest.raises(EnclaveError, match=problem) as error:
        parse_metadata(record)
    assert error.value.code is ErrorCode.INVALID_PARAMS


def test_bound_keys_are_sorted_and_normalised() -> None:
    parsed = metadata(
        stamp_keys=[
            {"id": "z", "public_key": public_pem("ed25519", 1), "scopes": ["sign", "read"]},
            {"id": "a", "public_key": public_pem("p256", 1).replace("\n", "\r\n"), "scopes": []},
        ]
    )
    assert [key.id for key in parsed.stamp_keys] == ["a", "z"]
    assert parsed.stamp_key("z") is not None
    assert parsed.stamp_key("z").scopes == {Scope.SIGN, Scope.READ}  # type: ignore[union-attr]
    assert parsed.to_record()["stamp_keys"][0]["public_key"] == public_pem("p256", 1)  # type: ignore[index]
    assert parse_labels("labels", []) == frozenset()


# -- key material ---------------------------------------------------------------------------
def _constant(n: int) -> bytes:
    return b"\x07" * n


def _broken(n: int) -> bytes:
    raise OSError("the NSM device is gone")


@pytest.mark.parametrize(
    "entropy",
    [MixedEntropy(nsm_random=_constant), MixedEntropy(nsm_random=os.urandom, os_random=_constant)],
    ids=["NSM source stuck", "OS source stuck"],
)
def test_keys_and_nonces_still_differ_when_one_source_is_constant(entropy: MixedEntropy) -> None:
    accounts, _ = vault(entropy.random_bytes)
    first = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS)
    second = accounts.generate(ACCOUNT_ID, "key", CREDENTIALS)
    assert first.address != second.address
    nonce = slice(1, 1 + envelope.NONCE_BYTES)
    assert first.encrypted_private_key[nonce] != second.encrypted_private_key[nonce]


def test_no_key_is_generated_while_a_source_fails() -> None:
    accounts, kms = vault(MixedEntropy(nsm_random=_broken).random_bytes)
    with pytest.raises(EnclaveError) as error:
        accounts.generate(ACCOUNT_ID, "key", CREDENTIALS)
    assert error.value.code is ErrorCode.ENTROPY_UNAVAILABLE
    assert kms.generates == 0  # refused before any KMS call
