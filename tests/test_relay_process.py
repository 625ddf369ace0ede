"""The relay as a process: ``python -m parent_app --config``, durability across a crash,
clean SIGTERM/SIGINT, and nothing secret in its log even at DEBUG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parent_app.__main__ import main
from tests.fake_enclave import (
    FakeEnclave,
    FakeImds,
    fake_address,
    http_call,
)
from tests.relay_process import ROOT, RelayProcess, fake_edges, write_config


@pytest.fixture
def edges() -> Iterator[tuple[FakeEnclave, FakeImds]]:
    with fake_edges() as running:
        yield running


@pytest.mark.process
def test_answered_account_survives_a_crash_and_sigterm_stops_cleanly(
    tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]
) -> None:
    enclave, imds = edges
    config = write_config(tmp_path, enclave, imds)
    first = RelayProcess(config)
    created = http_call(first.port, "POST", "/v1/accounts", {})
    assert created.status == 201
    account_id = created.json()["account_id"]
    first.process.send_signal(signal.SIGKILL)  # no chance to flush anything
    first.wait(10)

    second = RelayProcess(config)
    try:
        answer = http_call(second.port, "GET", f"/v1/accounts/{account_id}")
        assert answer.status == 200
        assert answer.json()["address"] == fake_address(account_id)
        signed = http_call(
            second.port,
            "POST",
            f"/v1/accounts/{account_id}/sign/transaction",
            {"transaction": {"nonce": 1}},
        )
        assert signed.status == 200
    finally:
        second.process.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    log = first.log + second.log
    assert "relay stopped" in second.log
    assert f"POST /v1/accounts/{account_id}/sign/transaction 200" in log
    for secret in imds.state.secrets:
        assert secret not in log
    stored = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir())
    for secret in imds.state.secrets:
        assert secret.encode() not in stored


@pytest.mark.process
def test_sigint_stops_cleanly(tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]) -> None:
    enclave, imds = edges
    relay = RelayProcess(write_config(tmp_path, enclave, imds))
    assert http_call(relay.port, "GET", "/healthz").status == 200
    relay.process.send_signal(signal.SIGINT)
    assert relay.wait(10) == 0
    assert "relay stopped" in relay.log


def test_bad_config_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[kms]\nkey_id = "alias/x"\n[relay]\nlisten_host = "0.0.0.0"\n')
    assert main(["--config", str(config)]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.process
def test_unusable_database_exits_1(tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]) -> None:
    enclave, imds = edges
    config = write_config(tmp_path, enclave, imds)
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "accounts.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "parent_app", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 1
    assert "cannot" in result.stderr


@pytest.mark.process
def test_sigusr1_drains_and_sigusr2_resumes(
    tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]
) -> None:
    enclave, imds = edges
    relay = RelayProcess(write_config(tmp_path, enclave, imds))
    try:
        account_id = http_call(relay.port, "POST", "/v1/accounts", {}).json()["account_id"]
        enclave.delay_seconds = 1.0
        in_flight: list[int] = []
        signer = threading.Thread(
            target=lambda: in_flight.append(
                http_call(
                    relay.port,
                    "POST",
                    f"/v1/accounts/{account_id}/sign/transaction",
                    {"transaction": {"nonce": 1}},
                ).status
            )
        )
        signer.start()
        time.sleep(0.3)  # admitted and waiting on the enclave
        relay.process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        refused = http_call(relay.port, "POST", "/v1/accounts", {})
        assert refused.status == 503
        assert refused.error_code == "draining"
        assert refused.headers["Retry-After"]
        assert http_call(relay.port, "GET", "/healthz").status == 200
        ready = http_call(relay.port, "GET", "/readyz")
        assert (ready.status, ready.json()["status"]) == (503, "draining")
        metrics = http_call(relay.port, "GET", "/metrics").body.decode()
        assert "nitro_wallet_relay_draining 1.0" in metrics.splitlines()
        signer.join(10)
        assert in_flight == [200]  # the request admitted before the drain finished
        enclave.delay_seconds = 0
        relay.process.send_signal(signal.SIGUSR2)
        time.sleep(0.3)
        assert http_call(relay.port, "POST", "/v1/accounts", {}).status == 201
        assert http_call(relay.port, "GET", "/readyz").status == 200
    finally:
        enclave.delay_seconds = 0
        relay.process.send_signal(signal.SIGTERM)
        assert relay.process.wait(10) == 0
