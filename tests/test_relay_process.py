"""The relay as a process: ``python -m parent_app --config``, durability across a crash,
clean SIGTERM/SIGINT, and nothing secret in its log even at DEBUG."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from parent_app.__main__ import main
from tests.fake_enclave import (
    KEY_ID,
    FakeEnclave,
    FakeImds,
    fake_address,
    http_call,
    remove_tree,
    short_tempdir,
)

ROOT = Path(__file__).resolve().parent.parent


class RelayProcess:
    def __init__(
        self,
        config: Path,
        command: Sequence[str] = (sys.executable, "-m", "parent_app"),
        cwd: Path = ROOT,
    ) -> None:
        self.process = subprocess.Popen(
            [*command, "--config", str(config)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(20) or self._port is None:
            self.process.kill()
            raise AssertionError("relay did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"relay listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self._port = int(found.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    @property
    def log(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def edges() -> Iterator[tuple[FakeEnclave, FakeImds]]:
    vsock = short_tempdir()
    enclave = FakeEnclave(vsock).start()
    imds = FakeImds().start()
    yield enclave, imds
    imds.stop()
    enclave.stop()
    remove_tree(vsock)


def write_config(tmp_path: Path, enclave: FakeEnclave, imds: FakeImds) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[relay]\nlisten_host = "127.0.0.1"\nlisten_port = 0\nlog_level = "DEBUG"\n'
        f'[enclave]\ntransport = "{enclave.transport_spec}"\ncid = 16\nport = 5000\n'
        f'[kms]\nkey_id = "{KEY_ID}"\n'
        f'[storage]\nsqlite_path = "{tmp_path / "db" / "accounts.db"}"\n'
        f'[credentials]\nimds_endpoint = "{imds.endpoint}"\n'
    )
    return config


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
    first.process.wait(10)

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
        assert second.process.wait(10) == 0
    time.sleep(0.1)
    log = first.log + second.log
    assert "relay stopped" in second.log
    assert f"POST /v1/accounts/{account_id}/sign/transaction 200" in log
    for secret in imds.state.secrets:
        assert secret not in log
    stored = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir())
    for secret in imds.state.secrets:
        assert secret.encode() not in stored


def test_sigint_stops_cleanly(tmp_path: Path, edges: tuple[FakeEnclave, FakeImds]) -> None:
    enclave, imds = edges
    relay = RelayProcess(write_config(tmp_path, enclave, imds))
    assert http_call(relay.port, "GET", "/healthz").status == 200
    relay.process.send_signal(signal.SIGINT)
    assert relay.process.wait(10) == 0


def test_bad_config_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[kms]\nkey_id = "alias/x"\n[relay]\nlisten_host = "0.0.0.0"\n')
    assert main(["--config", str(config)]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2


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
