"""nitro_sim.ports: who listens on a port, read from /proc, with real sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from nitro_sim import ports


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_a_listener_of_this_process_is_found_and_owned(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert ports.listening_inodes(port)
    assert ports.owned_by(port, os.getpid())
    assert not ports.owned_by(port, os.getppid())
    held = ports.holders(port)
    assert [holder.pid for holder in held] == [os.getpid()]
    assert "python" in held[0].command or "pytest" in held[0].command


def test_a_taken_port_is_refused_with_its_number_and_holder(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ports.PortInUse) as taken:
        ports.check_free(port, "relay")
    assert taken.value.port == port
    assert f"the relay port {port} is already in use by pid {os.getpid()} (" in str(taken.value)


def test_an_ipv6_listener_counts_too() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    with server:
        port = server.getsockname()[1]
        with pytest.raises(ports.PortInUse):
            ports.check_free(port, "KMS")


def test_a_port_nobody_listens_on_is_owned_by_nobody() -> None:
    with socket.socket() as bound:  # bound, never listening: held, so nobody else takes it
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert ports.listening_inodes(port) == set()
        assert not ports.owned_by(port, os.getpid())
        assert ports.holders(port) == []


def test_the_cli_names_the_port_unless_its_holder_is_in_the_allowed_namespace(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    assert ports.main(["check", str(port), "--what", "relay"]) == 1
    assert f"error: the relay port {port} is already in use" in capsys.readouterr().err
    assert ports.main(["check", str(port), "--allow-pidns-of", str(os.getpid())]) == 0


def test_the_cli_with_held_fails_on_a_free_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as bound:  # bound with SO_REUSEADDR, never listening: "free"
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert ports.main(["check", str(port)]) == 0
        assert ports.main(["check", str(port), "--what", "demo relay", "--held"]) == 1
    assert f"nothing listens on the demo relay port {port}" in capsys.readouterr().err
