"""Running the simulator's HTTP services: in a background thread (tests, the dev
stack) or in the foreground as a process until SIGTERM/SIGINT (systemd units)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from http.server import HTTPServer
from pathlib import Path
from types import FrameType
from typing import Self

#: How often serve_forever looks for a shutdown request: ``close()`` takes at most this.
POLL_SECONDS = 0.05


class BackgroundHttpServer:
    """An HTTP server serving from a daemon thread; ``.url``, ``.port``, ``.close()``."""

    url_suffix = ""

    def __init__(self, httpd: HTTPServer, name: str) -> None:
        self._httpd = httpd
        self.host = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"{name}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.url_suffix}"

    def close(self) -> None:
        """Stop accepting, let the requests in progress finish (a server that can
        ``drain``), close."""
        self._httpd.shutdown()
        self._httpd.server_close()
        drain = getattr(self._httpd, "drain", None)
        if drain is not None:
            drain()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_service_args(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    """--state-dir, --host, --port: the arguments every simulated service takes."""
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    return args


def serve_until_signalled(service: str, server: BackgroundHttpServer) -> int:
    """Print a one-line JSON banner (so --port 0 works), serve until SIGTERM/SIGINT."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(json.dumps({"service": service, "url": server.url, "port": server.port}), flush=True)
    stop.wait()
    server.close()
    return 0
