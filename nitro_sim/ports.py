"""Who listens on a local TCP port, read from Linux ``/proc``.

The dev stack and the demos use this to own their ports: they refuse to start when a
port is taken (naming the port and, where this user can see it, the process holding
it), and they accept a readiness answer only when the listening socket belongs to the
process they started, never to another stack that happens to hold the same port.

    python -m nitro_sim.ports check PORT [--what NAME] [--allow-pidns-of PID] [--held]

exits 0 when PORT is free, or held only by processes in the PID namespace of PID
(``make demo``: the container's relay), and 1 with a message naming the port
otherwise. With ``--held`` a free port fails too: something of ours must listen.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TCP_TABLES = ("net/tcp", "net/tcp6")
_LISTEN = "0A"
_MAX_COMMAND_CHARS = 160


@dataclass(frozen=True)
class Holder:
    """A process holding a listening socket (as far as this user can see)."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


class PortInUse(Exception):  # noqa: N818 - reads as a sentence: raise PortInUse(...)
    """The port is taken by a process other than the one meant to hold it."""

    def __init__(self, port: int, what: str, holders: Iterable[Holder]) -> None:
        self.port = port
        self.what = what
        self.holders = tuple(holders)
        by = ", ".join(str(h) for h in self.holders) or "a process this user cannot see"
        super().__init__(
            f"the {what} port {port} is already in use by {by}: stop it or choose another port"
        )


def listening_inodes(port: int, proc: Path = PROC) -> set[int]:
    """Socket inodes of every TCP listener on ``port`` (any address, IPv4 or IPv6)."""
    inodes: set[int] = set()
    for table in _TCP_TABLES:
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int, proc: Path = PROC) -> set[int]:
    """Inodes of the sockets ``pid`` has open (empty if it is gone or not ours to see)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in (proc / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def holders(port: int, proc: Path = PROC) -> list[Holder]:
    """The processes listening on ``port`` that this user may inspect."""
    wanted = listening_inodes(port, proc)
    found: list[Holder] = []
    if not wanted:
        return found
    for entry in proc.iterdir():
        if entry.name.isdigit() and socket_inodes(int(entry.name), proc) & wanted:
            found.append(Holder(int(entry.name), _command(entry)))
    return found


def owned_by(port: int, pid: int, proc: Path = PROC) -> bool:
    """True if something listens on ``port`` and every such listener is ``pid``'s."""
    listening = listening_inodes(port, proc)
    return bool(listening) and listening <= socket_inodes(pid, proc)


def free_port() -> int:
    """A port that was free a moment ago, for a child that cannot bind port 0 and report
    it (the stack's own services do that instead).

    Another process may take it before the child binds it: check with ``owned_by`` once
    the child answers, and start again on a clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise ``PortInUse`` unless ``port`` can be bound on ``host`` and nobody listens on it."""
    if listening_inodes(port):
        raise PortInUse(port, what, holders(port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(port, what, holders(port)) from None


def _command(process: Path) -> str:
    try:
        raw = (process / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    return text if len(text) <= _MAX_COMMAND_CHARS else text[: _MAX_COMMAND_CHARS - 3] + "..."


def _pid_namespace(pid: int, proc: Path = PROC) -> str | None:
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid")
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nitro_sim.ports")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="exit 1, naming the port, if it is taken")
    check.add_argument("port", type=int)
    check.add_argument("--what", default="TCP")
    check.add_argument("--held", action="store_true", help="fail if nothing listens")
    check.add_argument(
        "--allow-pidns-of",
        type=int,
        metavar="PID",
        help="listeners in this process's PID namespace (a container) are ours",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("PORT must be 1..65535")
    allowed = None if args.allow_pidns_of is None else _pid_namespace(args.allow_pidns_of)
    try:
        check_free(args.port, args.what)
    except PortInUse as taken:
        theirs = [h for h in taken.holders if allowed is None or _pid_namespace(h.pid) != allowed]
        if theirs or not taken.holders or allowed is None:
            print(f"error: {taken}", file=sys.stderr)
            return 1
        return 0
    if args.held:
        print(f"error: nothing listens on the {args.what} port {args.port}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
