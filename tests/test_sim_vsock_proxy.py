"""The simulated vsock-proxy: allowlist refusal and real byte round trips over
unix-socket vsock to a TCP echo server on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_app.transport import PARENT_CID, Transport
from nitro_sim.vsock_proxy import (
    AllowEntry,
    VsockProxyError,
    is_allowed,
    load_allowlist,
    serve_vsock_proxy,
)

REPO = Path(__file__).resolve().parent.parent


class EchoServer:
    """TCP echo on 127.0.0.1: echoes until the client half-closes, then closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def vsock_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="vp-", dir="/tmp"))
    yield directory / "vsock"
    shutil.rmtree(directory, ignore_errors=True)


def free_vsock_port() -> int:
    return 20000 + secrets.randbelow(40000)


def round_trip(transport: Transport, port: int, payload: bytes) -> bytes:
    with transport.connect(PARENT_CID, port, timeout=10) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        sender.join()
    return bytes(received)


def test_bytes_round_trip_through_the_proxy(echo: EchoServer, vsock_dir: Path) -> None:
    port = free_vsock_port()
    allowlist = [AllowEntry("127.0.0.1", echo.port)]
    with serve_vsock_proxy(vsock_dir, port, "127.0.0.1", echo.port, allowlist):
        transport = Transport.unix(vsock_dir)
        payload = secrets.token_bytes(1024 * 1024 + 7)
        assert round_trip(transport, port, payload) == payload
        assert round_trip(transport, port, b"x") == b"x"
    assert echo.connections == 2
    assert not Transport.unix(vsock_dir).unix_path(PARENT_CID, port).exists()


def test_not_allow_listed_destinations_are_refused(echo: EchoServer, vsock_dir: Path) -> None:
    allowlist = [AllowEntry("127.0.0.1", echo.port + 1), AllowEntry("localhost", echo.port)]
    with pytest.raises(VsockProxyError, match="not allowed"):
        serve_vsock_proxy(vsock_dir, free_vsock_port(), "127.0.0.1", echo.port, allowlist)
    assert not vsock_dir.exists() or not list(vsock_dir.iterdir())


def test_allowlist_matching() -> None:
    allowlist = [AllowEntry("KMS.us-east-1.amazonaws.com", 443), AllowEntry("[::1]", 8443)]
    assert is_allowed(allowlist, "kms.us-east-1.amazonaws.com", 443)
    assert is_allowed(allowlist, "kms.us-east-1.amazonaws.com.", 443)
    assert is_allowed(allowlist, "::1", 8443)
    assert is_allowed(allowlist, "0:0::1", 8443)
    assert not is_allowed(allowlist, "kms.us-east-1.amazonaws.com", 8443)
    assert not is_allowed(allowlist, "kms.us-west-2.amazonaws.com", 443)
    assert not is_allowed([], "kms.us-east-1.amazonaws.com", 443)


def test_the_worker_count_bounds_concurrent_connections(echo: EchoServer, vsock_dir: Path) -> None:
    port = free_vsock_port()
    allowlist = [AllowEntry("127.0.0.1", echo.port)]
    transport = Transport.unix(vsock_dir)
    with serve_vsock_proxy(vsock_dir, port, "127.0.0.1", echo.port, allowlist, workers=1):
        first = transport.connect(PARENT_CID, port, timeout=5)
        first.sendall(b"one")
        assert first.recv(3) == b"one"
        second = transport.connect(PARENT_CID, port, timeout=0.5)
        second.sendall(b"two")
        with pytest.raises(TimeoutError):
            second.recv(3)  # waits in the backlog while the only worker is busy
        first.close()
        second.settimeout(5)
        assert second.recv(3) == b"two"
        second.close()


def write_config(path: Path, entries: list[tuple[str, int]]) -> Path:
    lines = ["allowlist:"] + [f"- {{address: {a}, port: {p}}}" for a, p in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def proxy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nitro_sim.vsock_proxy", *args]


@pytest.mark.process
def test_cli_refuses_to_start_for_a_destination_not_in_the_allowlist(
    tmp_path: Path, vsock_dir: Path
) -> None:
    config = write_config(tmp_path / "proxy.yaml", [("127.0.0.1", 9443)])
    env = {**os.environ, "NITRO_SIM_DIR": str(vsock_dir.parent)}
    refused = subprocess.run(
        proxy_command("8000", "127.0.0.1", "9444", "--config", str(config)),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "not allowed" in refused.stderr
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("allowlist: [{address: 127.0.0.1, port: seventy}]\n")
    bad = subprocess.run(
        proxy_command("8000", "127.0.0.1", "9443", "--config", str(malformed)),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "port must be" in bad.stderr
    dispatched = subprocess.run(
        [sys.executable, "-m", "nitro_sim", "vsock-proxy", "8000", "127.0.0.1", "9444",
         "--config", str(config)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert dispatched.returncode == 1
    assert "not allowed" in dispatched.stderr


@pytest.mark.process
def test_cli_proxies_bytes_and_stops_on_sigterm(
    tmp_path: Path, vsock_dir: Path, echo: EchoServer
) -> None:
    config = write_config(tmp_path / "proxy.yaml", [("127.0.0.1", echo.port)])
    port = free_vsock_port()
    env = {**os.environ, "NITRO_SIM_DIR": str(vsock_dir.parent)}
    process = subprocess.Popen(
        proxy_command(str(port), "127.0.0.1", str(echo.port), "--config", str(config), "-w", "2"),
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        transport = Transport.unix(vsock_dir)
        path = transport.unix_path(PARENT_CID, port)
        deadline = time.monotonic() + 15
        while not path.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert path.exists()
        payload = secrets.token_bytes(200_000)
        assert round_trip(transport, port, payload) == payload
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
    assert not path.exists()


def test_load_allowlist_reads_the_real_format(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p.yaml", [("kms.eu-west-1.amazonaws.com", 443)])
    assert load_allowlist(config) == [AllowEntry("kms.eu-west-1.amazonaws.com", 443)]
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(VsockProxyError):
        load_allowlist(tmp_path / "empty.yaml")
    with pytest.raises(VsockProxyError):
        load_allowlist(tmp_path / "missing.yaml")
