"""Enclave building blocks: configuration, envelope, key cache, validators."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from enclave_app import envelope, validation
from enclave_app.config import ConfigError, EnclaveConfig
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_cache import CacheKey, KeyCache
from enclave_app.transport import Transport

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0d3c2b1a-0000-4000-8000-000000000001"


def config_text(**kms: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in kms.items())
    return f'[kms]\nallowed_key_ids = ["{KEY_ARN}"]\n{extra}'


def test_config_defaults_to_vsock_and_takes_the_simulator_seams_from_the_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "enclave.toml"
    path.write_text(config_text())
    hardware = EnclaveConfig.load(path, environ={})
    assert hardware.transport == Transport.vsock()
    assert hardware.kms_endpoint_url_template == "https://kms.us-east-1.amazonaws.com:{port}"
    simulated = EnclaveConfig.load(
        path, environ={"NITRO_SIM_VSOCK_DIR": "/tmp/v", "NITRO_SIM_ENCLAVE_CID": "21"}
    )
    assert simulated.transport == Transport.unix("/tmp/v")
    assert simulated.listen_cid == 21


@pytest.mark.parametrize(
    "text",
    [
        "[kms]\nallowed_key_ids = []\n",
        config_text(endpoint_scheme='"ftp"'),
        config_text(proxy_port="0"),
        config_text(proxy_port="true"),
        config_text(surprise="1"),
        '[other]\nx = 1\n[kms]\nallowed_key_ids = ["k"]\n',
        "not toml [",
    ],
)
def test_an_unusable_config_refuses_to_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "enclave.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        EnclaveConfig.load(path, environ={})


def test_envelope_binds_account_and_address() -> None:
    key = os.urandom(32)
    secret = os.urandom(32)
    aad = envelope.additional_data("a", "0xAbC")
    sealed = envelope.seal(key, secret, aad)
    assert envelope.open_sealed(key, sealed, envelope.additional_data("a", "0xabc")) == secret
    assert envelope.seal(key, secret, aad) != sealed  # fresh nonce every time
    for wrong_aad in (envelope.additional_data("b", "0xabc"), envelope.additional_data("a", "0x1")):
        with pytest.raises(EnclaveError) as error:
            envelope.open_sealed(key, sealed, wrong_aad)
        assert error.value.code is ErrorCode.CIPHERTEXT_INVALID
    with pytest.raises(EnclaveError):
        envelope.open_sealed(os.urandom(32), sealed, aad)
    with pytest.raises(EnclaveError):
        envelope.open_sealed(key, b"\x02" + sealed[1:], aad)
    with pytest.raises(EnclaveError):
        envelope.open_sealed(key, sealed[:20], aad)
    with pytest.raises(EnclaveError) as error:
        envelope.seal(b"short", secret, aad)
    assert error.value.code is ErrorCode.KMS_BAD_RESPONSE


def test_key_cache_is_bounded_in_size_and_time() -> None:
    now = [0.0]
    cache = KeyCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    keys = [CacheKey.for_record(str(i), "0x1", b"k", b"d") for i in range(3)]
    for i, key in enumerate(keys):
        cache.put(key, bytes([i]))
    assert len(cache) == 2
    assert cache.get(keys[0]) is None  # least recently used went first
    assert cache.get(keys[2]) == b"\x02"
    now[0] = 10.0
    assert cache.get(keys[2]) is None
    assert len(cache) == 1  # expired entry dropped on access
    disabled = KeyCache(max_entries=0, ttl_seconds=10)
    disabled.put(keys[0], b"x")
    assert disabled.get(keys[0]) is None


def test_cache_keys_change_with_any_byte_of_the_record() -> None:
    base = CacheKey.for_record("id", "0xab", b"key", b"data")
    assert base == CacheKey.for_record("id", "0xAB", b"key", b"data")
    assert base != CacheKey.for_record("id", "0xab", b"key!", b"data")
    assert base != CacheKey.for_record("id", "0xab", b"key", b"data!")
    assert base != CacheKey.for_record("id", "0xac", b"key", b"data")
    # Length-prefixed parts: moving a byte between fields is a different record.
    assert CacheKey.for_record("i", "d", b"ab", b"c") != CacheKey.for_record("i", "d", b"a", b"bc")


def test_validators_refuse_what_does_not_fit() -> None:
    good = str(uuid.uuid4())
    assert validation.account_id(good) == good
    for bad in (good.upper(), good.replace("-", ""), 5, None, "x"):
        with pytest.raises(EnclaveError):
            validation.account_id(bad)
    creds = validation.credentials(
        {
            "access_key_id": "ASIAEXAMPLEEXAMPLE12",
            "secret_access_key": "wJalrXUtnFEMI-secret",
            "session_token": "token-value-xyz",
        }
    )
    assert "wJalrXUtnFEMI-secret" not in repr(creds)
    assert "token-value-xyz" not in repr(creds)
    for bad_creds in (
        {"access_key_id": "lower-case", "secret_access_key": "s"},
        {"access_key_id": "ASIAEXAMPLEEXAMPLE12"},
        {"access_key_id": "ASIAEXAMPLEEXAMPLE12", "secret_access_key": "s", "extra": 1},
        {"access_key_id": "ASIAEXAMPLEEXAMPLE12", "secret_access_key": "", "session_token": None},
    ):
        with pytest.raises(EnclaveError):
            validation.credentials(bad_creds)
    assert validation.base64_bytes("AAE=", "f", 4) == b"\x00\x01"
    for bad_b64 in ("AAE", "!!!!", "AAAAAAAAAAAAAAAA", ""):
        with pytest.raises(EnclaveError):
            validation.base64_bytes(bad_b64, "f", 4)
