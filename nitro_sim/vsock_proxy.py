"""Simulated ``vsock-proxy``: the same command line and allowlist as AWS's.

    vsock-proxy LOCAL_PORT REMOTE_ADDR REMOTE_PORT [--config FILE] [-w NUM_WORKERS]
                [--ipv4 | --ipv6]

It listens on vsock (CID 3, the parent, LOCAL_PORT) through
``Transport.unix($NITRO_SIM_DIR/vsock)`` and pipes every connection to
REMOTE_ADDR:REMOTE_PORT over TCP, both ways, forwarding half-closes. The config file
(default ``/etc/nitro_enclaves/vsock-proxy.yaml``) holds
``allowlist: [{address: HOST, port: N}, ...]``; the proxy refuses to start (exit 1)
unless (REMOTE_ADDR, REMOTE_PORT) is listed. At most NUM_WORKERS connections are
served at once; further ones wait in the listen backlog, as with the real workers.
NUM_WORKERS defaults to 4, the real tool's default; hosts (roles/vsock_proxy) and the
dev stack (``nitro_sim.stack.KMS_PROXY_WORKERS``) pass at least the enclave's KMS
concurrency instead, so no KMS call the enclave allows itself waits for a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import yaml

from enclave_app.transport import PARENT_CID, Transport, pipe_both_ways
from nitro_sim import statedir

DEFAULT_CONFIG = Path("/etc/nitro_enclaves/vsock-proxy.yaml")
DEFAULT_WORKERS = 4
MAX_WORKERS = 1024
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0
MAX_CONFIG_BYTES = 1024 * 1024


class VsockProxyError(Exception):
    """The proxy cannot start: bad configuration or a destination not allow-listed."""


@dataclass(frozen=True)
class AllowEntry:
    address: str
    port: int


def _normalize(address: str) -> str:
    text = address.strip().lower().rstrip(".")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text.strip("[]")))
    return text


def is_allowed(allowlist: Sequence[AllowEntry], address: str, port: int) -> bool:
    wanted = _normalize(address)
    return any(_normalize(e.address) == wanted and e.port == port for e in allowlist)


def load_allowlist(path: Path) -> list[AllowEntry]:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise VsockProxyError(f"config file {path} is too large")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VsockProxyError(f"cannot read config file {path}: {exc}") from exc
    items = raw.get("allowlist") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise VsockProxyError(f"config file {path} has no 'allowlist' list")
    entries: list[AllowEntry] = []
    for item in items:
        address = item.get("address") if isinstance(item, dict) else None
        port = item.get("port") if isinstance(item, dict) else None
        if not isinstance(address, str) or not address or len(address) > 253:
            raise VsockProxyError(f"allowlist entry {item!r}: address must be a host name or IP")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise VsockProxyError(f"allowlist entry {item!r}: port must be in [1, 65535]")
        entries.append(AllowEntry(address, port))
    return entries


class VsockProxyServer:
    """Accepts vsock connections in a background thread; ``close()`` stops everything."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        remote: tuple[str, int],
        family: socket.AddressFamily,
        workers: int,
        connect_timeout: float,
        idle_timeout: float,
        socket_path: Path | None,
    ) -> None:
        self._listener = listener
        self._remote = remote
        self._family = family
        self._slots = threading.BoundedSemaphore(workers)
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._socket_path = socket_path
        self._closed = threading.Event()
        self._active: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="vsock-proxy", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue  # all workers busy: the connection waits in the backlog
            try:
                conn, _ = self._listener.accept()
            except OSError:
                self._slots.release()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _connect_remote(self) -> socket.socket:
        host, port = self._remote
        infos = socket.getaddrinfo(host, port, self._family, socket.SOCK_STREAM)
        last: OSError = OSError(f"no {self._family.name} address for {host}")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self._connect_timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        raise last

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                upstream = self._connect_remote()
            except OSError as exc:
                print(f"vsock-proxy: cannot reach {self._remote}: {exc}", file=sys.stderr)
                conn.close()
                return
            with self._lock:
                self._active.update((conn, upstream))
            try:
                pipe_both_ways(conn, upstream, self._idle_timeout)
            finally:
                with self._lock:
                    self._active.difference_update((conn, upstream))
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            active = list(self._active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        if self._socket_path is not None:
            with contextlib.suppress(OSError):
                self._socket_path.unlink()

    def __enter__(self) -> VsockProxyServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def serve_vsock_proxy(
    vsock_dir: Path,
    local_port: int,
    remote_addr: str,
    remote_port: int,
    allowlist: Sequence[AllowEntry],
    *,
    workers: int = DEFAULT_WORKERS,
    family: socket.AddressFamily = socket.AF_INET,
    connect_timeout: float = CONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
) -> VsockProxyServer:
    """Start a proxy from vsock (CID 3, local_port) to remote_addr:remote_port."""
    if not 0 < remote_port < 65536:
        raise VsockProxyError(f"remote port {remote_port} is out of range")
    if not 0 < local_port < 2**32:
        raise VsockProxyError(f"local vsock port {local_port} is out of range")
    if not 1 <= workers <= MAX_WORKERS:
        raise VsockProxyError(f"number of workers must be in [1, {MAX_WORKERS}]")
    if not is_allowed(allowlist, remote_addr, remote_port):
        raise VsockProxyError(
            f"The given address and port are not allowed: {remote_addr}:{remote_port} "
            "is not in the allowlist"
        )
    transport = Transport.unix(vsock_dir)
    path = transport.unix_path(PARENT_CID, local_port)
    try:
        statedir.check_socket_path(path)
        listener = transport.listen(PARENT_CID, local_port)
    except (OSError, ValueError) as exc:
        raise VsockProxyError(f"cannot listen on vsock port {local_port}: {exc}") from exc
    return VsockProxyServer(
        listener,
        remote=(remote_addr, remote_port),
        family=family,
        workers=workers,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        socket_path=path,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vsock-proxy", description="Simulated vsock-proxy")
    parser.add_argument("local_port", type=int, metavar="LOCAL_PORT")
    parser.add_argument("remote_addr", metavar="REMOTE_ADDR")
    parser.add_argument("remote_port", type=int, metavar="REMOTE_PORT")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("-w", "--num_workers", type=int, default=DEFAULT_WORKERS)
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true")
    family.add_argument("-6", "--ipv6", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    family = socket.AF_INET6 if args.ipv6 else socket.AF_INET
    state = statedir.resolve()
    try:
        allowlist = load_allowlist(Path(args.config))
        server = serve_vsock_proxy(
            statedir.vsock_dir(state),
            args.local_port,
            args.remote_addr,
            args.remote_port,
            allowlist,
            workers=args.num_workers,
            family=family,
        )
    except VsockProxyError as exc:
        print(f"vsock-proxy: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"vsock-proxy: listening on vsock {PARENT_CID}:{args.local_port} -> "
        f"{args.remote_addr}:{args.remote_port}",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
