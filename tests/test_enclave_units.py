"""Enclave building blocks: configuration, envelope, validators (the key cache has
tests/test_key_cache.py)."""

from __future__ import annotations

import os
import resource
import uuid
from pathlib import Path

import pytest

from enclave_app import envelope, validation
from enclave_app.__main__ import RESERVED_DESCRIPTORS, allow_descriptors, server_limits
from enclave_app.config import ConfigError, EnclaveConfig
from enclave_app.errors import EnclaveError, ErrorCode
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
        *[
            f'[server]\n{key} = {value}\n[kms]\nallowed_key_ids = ["k"]\n'
            for key, value in (
                ("workers", 0),
                ("workers", 257),
                ("queue_depth", -1),
                ("max_connections", 0),
                ("idle_timeout_seconds", 0),
                ("frame_timeout_seconds", 601),
                ("max_frame_bytes", 1023),
                ("max_buffered_bytes", 1024),  # below the default 1 MiB frame cap
                ("workers", "true"),
            )
        ],
        config_text(max_concurrent_calls="0"),
        config_text(max_concurrent_calls="65"),
        config_text(recipient_key_pool="-1"),
        config_text(recipient_key_pool="257"),
        config_text(recipient_key_uses="0"),
        config_text(recipient_key_uses="1001"),
        config_text(recipient_key_max_age_seconds="0"),
        config_text(recipient_key_max_age_seconds="901"),
    ],
)
def test_an_unusable_config_refuses_to_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "enclave.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        EnclaveConfig.load(path, environ={})


def test_config_defaults_and_every_new_key(tmp_path: Path) -> None:
    path = tmp_path / "enclave.toml"
    path.write_text(config_text())
    defaults = EnclaveConfig.load(path, environ={})
    assert defaults.max_frame_bytes == 4 * 1024 * 1024  # a stamped request carries its body twice
    assert defaults.key_cache_max_entries >= 10_000
    assert (defaults.workers, defaults.queue_depth, defaults.kms_max_concurrent_calls) == (
        16,
        64,
        8,
    )
    path.write_text(
        "[server]\nworkers = 4\nqueue_depth = 0\nmax_connections = 100\n"
        "idle_timeout_seconds = 5\nframe_timeout_seconds = 2\n"
        "max_frame_bytes = 4096\nmax_buffered_bytes = 8192\n"
        + config_text(
            max_concurrent_calls="3",
            recipient_key_pool="0",
            recipient_key_uses="1",
            recipient_key_max_age_seconds="5",
        )
    )
    config = EnclaveConfig.load(path, environ={})
    assert (config.workers, config.queue_depth, config.max_connections) == (4, 0, 100)
    assert (config.idle_timeout_seconds, config.frame_timeout_seconds) == (5, 2)
    assert (config.max_frame_bytes, config.max_buffered_bytes) == (4096, 8192)
    assert (config.kms_max_concurrent_calls, config.kms_recipient_key_pool) == (3, 0)
    assert (config.kms_recipient_key_uses, config.kms_recipient_key_max_age_seconds) == (1, 5)
    assert (defaults.kms_recipient_key_uses, defaults.kms_recipient_key_max_age_seconds) == (
        100,
        60,
    )


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


def test_the_connection_bound_fits_the_open_file_limit(tmp_path: Path) -> None:
    path = tmp_path / "enclave.toml"
    path.write_text(config_text())
    config = EnclaveConfig.load(path, environ={})
    roomy = server_limits(config, config.max_connections + RESERVED_DESCRIPTORS)
    assert roomy.max_connections == config.max_connections
    assert roomy.workers == config.workers
    assert server_limits(config, RESERVED_DESCRIPTORS + 1000).max_connections == 1000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert allow_descriptors(16) == soft  # enough already: nothing changes
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
