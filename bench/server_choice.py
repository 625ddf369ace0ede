"""Which HTTP server carries the relay: the measurement behind docs/performance.md.

    .venv/bin/pip install granian==2.8.7 hypercorn==0.18.0 waitress==3.0.2
    .venv/bin/python -m bench.server_choice [--seconds 3] [--rounds 2]

The same ``RelayApi`` (routes, JSON, envelope checks) is served by each candidate in
its own process with one worker: uvicorn with uvloop and httptools (as the relay runs
it: ``parent_app.http_server.RelayServer``, hardening included), granian (ASGI,
Rust/hyper), hypercorn (ASGI, uvloop worker) and waitress (WSGI, threads). The load
comes from ``bench.loadgen`` in another process, over keep-alive connections, on two
requests that isolate the server's own cost: ``GET /healthz`` and a JSON-RPC
``eth_chainId`` POST (a body read, strict JSON parse and answer; no enclave). The
candidates are interleaved round by round; the table gives the median per candidate.
Candidates that are not installed are skipped. Only the relay's choice is a
dependency of the project; the others are installed for this measurement alone.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from enclave_app.transport import Transport
from parent_app.asgi_app import ExecutionSlots, RelayAsgiApp
from parent_app.auth import RelayAuth
from parent_app.config import RelaySettings
from parent_app.credentials import CredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.http_envelope import Recorder, header_map, response_headers
from parent_app.metrics import RelayMetrics
from parent_app.routes import Body, Call, RelayApi, Response, error_response
from parent_app.service import WalletService
from parent_app.storage import SqliteStorage
from parent_app.tokens import TokenFile, add_token

ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID_BODY = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
#: The relay refuses a call without credentials: main() makes a token file with one
#: token (read scope) and hands both to the servers it starts through the environment.
TOKENS_ENV = "NITRO_WALLET_BENCH_TOKENS_FILE"
TOKEN_ENV = "NITRO_WALLET_BENCH_TOKEN"  # noqa: S105 - a variable name
CONCURRENCY = (1, 8, 32)


def _api() -> RelayApi:
    """A RelayApi whose enclave and IMDS are never called by the measured requests."""
    storage = SqliteStorage(Path(tempfile.mkdtemp(prefix="nw-choice-")) / "accounts.db")
    enclave = EnclaveClient(Transport.unix(tempfile.mkdtemp()), 16, 5000, 1.0)
    credentials: CredentialSource = _NoCredentials()
    service = WalletService(storage, enclave, credentials, "alias/bench", RelayMetrics())
    auth = RelayAuth(TokenFile(Path(os.environ[TOKENS_ENV])), {}, StampVerifier(ReplayMemory()))
    return RelayApi(service, auth, chain_id=1)


class _NoCredentials:
    def get(self) -> Any:
        raise RuntimeError("not used by the measured requests")


def asgi_app() -> RelayAsgiApp:
    """The relay's ASGI application (granian and hypercorn load this factory)."""
    api = _api()
    settings = RelaySettings()
    executor = ThreadPoolExecutor(settings.max_concurrent_requests)
    slots = ExecutionSlots(settings.max_concurrent_requests, api.metrics.in_flight)
    return RelayAsgiApp(api, settings, executor, Recorder(api.metrics), slots)


def wsgi_app() -> Callable[..., Iterable[bytes]]:
    """The same API behind a minimal WSGI adapter (waitress)."""
    api = _api()

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raw_headers = [
            (key[5:].replace("_", "-").lower().encode(), str(value).encode())
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        headers = header_map(raw_headers)
        try:
            match = api.router.resolve(environ["REQUEST_METHOD"], environ["PATH_INFO"])
            raw = b""
            if match.endpoint.body is not Body.NONE:
                raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            response = match.endpoint.handler(Call(match.params, {}, None, raw, headers=headers))
        except Exception as exc:  # the measured requests never fail
            response = error_response(exc)  # type: ignore[arg-type]
        return _wsgi_answer(start_response, response)

    return application


def _wsgi_answer(start_response: Callable[..., Any], response: Response) -> list[bytes]:
    head = [(n.decode(), v.decode()) for n, v in response_headers(response, "bench")]
    start_response(f"{response.status} X", head)
    return [response.body]


# -- the candidates ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _relay_server(port: int) -> list[str]:
    code = (
        "import sys; from bench.server_choice import _api; "
        "from dataclasses import replace; from parent_app.config import RelaySettings; "
        "from parent_app.http_server import RelayServer; "
        f"RelayServer(_api(), replace(RelaySettings(), listen_port={port})).serve_forever()"
    )
    return [sys.executable, "-c", code]


CANDIDATES: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "uvicorn (uvloop, httptools)": ("uvicorn", _relay_server),
    "granian (ASGI)": (
        "granian",
        lambda port: [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--no-ws", "--log-level", "warning",
            "bench.server_choice:asgi_app",
        ],
    ),
    "hypercorn (uvloop)": (
        "hypercorn",
        lambda port: [
            sys.executable, "-m", "hypercorn", "--worker-class", "uvloop", "--workers", "1",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "bench.server_choice:asgi_app()",
        ],
    ),
    "waitress (WSGI)": (
        "waitress",
        lambda port: [
            sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}",
            "--threads", "8", "--call", "bench.server_choice:wsgi_app",
        ],
    ),
}  # fmt: skip


def _requests() -> dict[str, bytes]:
    post = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + os.environ[TOKEN_ENV].encode() + b"\r\n"
        b"Content-Length: " + str(len(CHAIN_ID_BODY)).encode() + b"\r\n\r\n" + CHAIN_ID_BODY
    )
    return {"GET /healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "POST eth_chainId": post}


def _load(port: int, request: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    job = {
        "port": port,
        "requests": [base64.b64encode(request).decode()],
        "concurrency": concurrency,
        "duration": seconds,
        "warmup": 0.5,
        "keep_bodies": 1,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(job).encode(),
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=seconds + 60,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _wait_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tokens_file = Path(tempfile.mkdtemp(prefix="nw-choice-")) / "tokens.json"
    _, token = add_token(tokens_file, "bench", frozenset({"read"}))
    os.environ[TOKENS_ENV], os.environ[TOKEN_ENV] = str(tokens_file), token
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    available = {
        name: command
        for name, (module, command) in CANDIDATES.items()
        if importlib.util.find_spec(module) is not None
    }
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for name, command in available.items():
            port = _free_port()
            process = subprocess.Popen(
                command(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                _wait_serving(port, process)
                for label, request in _requests().items():
                    for concurrency in CONCURRENCY:
                        run = _load(port, request, concurrency, args.seconds)
                        results.setdefault((name, label, concurrency), []).append(run)
            finally:
                process.terminate()
                process.wait(10)
    print("| server | request | c | requests/s | p50 ms | p99 ms | non-200 |")
    print("|---|---|---|---|---|---|---|")
    for (name, label, concurrency), runs in results.items():
        rps = statistics.median(run["rps"] for run in runs)
        p50 = statistics.median(run["p50_ms"] for run in runs)
        p99 = statistics.median(run["p99_ms"] for run in runs)
        bad = sum(n for run in runs for code, n in run["statuses"].items() if code != "200")
        print(f"| {name} | {label} | {concurrency} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {bad} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
