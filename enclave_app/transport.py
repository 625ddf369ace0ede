"""Stream sockets between the parent and the enclave, addressed by (CID, port).

On Nitro hardware this is AF_VSOCK. Under the simulator, vsock is modelled as
AF_UNIX stream sockets, one path per (CID, port) inside a shared directory. This
module is the one place that knows the mapping; the enclave, the relay and the
simulator's vsock-proxy all go through it. The choice is a deployment seam:
``Transport.vsock()`` or ``Transport.unix(directory)``, nothing else branches.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

PARENT_CID = 3
ANY_CID = 0xFFFFFFFF  # VMADDR_CID_ANY


@dataclass(frozen=True)
class Transport:
    """How (CID, port) addresses become sockets. ``unix_dir`` None means real vsock."""

    unix_dir: Path | None = None

    @classmethod
    def vsock(cls) -> Transport:
        return cls(None)

    @classmethod
    def unix(cls, directory: str | os.PathLike[str]) -> Transport:
        return cls(Path(directory))

    @classmethod
    def from_spec(cls, spec: str) -> Transport:
        """Parse ``vsock`` or ``unix:/path/to/dir`` (config files, CLI flags)."""
        if spec == "vsock":
            return cls.vsock()
        if spec.startswith("unix:") and len(spec) > len("unix:"):
            return cls.unix(spec[len("unix:") :])
        raise ValueError(f"transport must be 'vsock' or 'unix:DIR', not {spec!r}")

    @property
    def spec(self) -> str:
        return "vsock" if self.unix_dir is None else f"unix:{self.unix_dir}"

    def unix_path(self, cid: int, port: int) -> Path:
        if self.unix_dir is None:
            raise ValueError("unix_path() only applies to the simulated transport")
        return self.unix_dir / f"{cid}_{port}.sock"

    def listen(self, cid: int, port: int, backlog: int = 64) -> socket.socket:
        """Listen on (cid, port). Hardware listens on any CID; the simulator on cid's path."""
        _check_address(cid, port)
        if self.unix_dir is None:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.bind((ANY_CID, port))
        else:
            path = self.unix_path(cid, port)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o660)
        sock.listen(backlog)
        return sock

    def connect(self, cid: int, port: int, timeout: float) -> socket.socket:
        _check_address(cid, port)
        if self.unix_dir is None:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            address: tuple[int, int] | str = (cid, port)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = str(self.unix_path(cid, port))
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock


def _check_address(cid: int, port: int) -> None:
    if not 0 <= cid <= ANY_CID:
        raise ValueError(f"CID {cid} is out of range")
    if not 0 < port < 2**32:
        raise ValueError(f"vsock port {port} is out of range")


def pipe_both_ways(left: socket.socket, right: socket.socket, idle_timeout: float) -> None:
    """Copy bytes both ways until both directions end; half-closes are forwarded.

    Blocks the calling thread; one extra thread carries the right-to-left direction.
    Both sockets are closed on return.
    """
    left.settimeout(idle_timeout)
    right.settimeout(idle_timeout)

    def copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    backward = threading.Thread(target=copy, args=(right, left), daemon=True)
    backward.start()
    copy(left, right)
    backward.join(idle_timeout)
    left.close()
    right.close()
