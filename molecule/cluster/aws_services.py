"""The cluster scenario's shared AWS edges, on the controller: one simulated account, one KMS
and one DynamoDB-compatible store (moto) for every test host.

    python aws_services.py start --dir DIR --kms-port P --dynamodb-port Q --table NAME
    python aws_services.py stop --dir DIR

``start`` creates DIR/principals.json and DIR/ca/ (``nitro-sim init``; the hosts get a copy,
so their IMDS issues credentials this KMS knows and their simulated NSM signs attestations
it trusts), runs the KMS (``nitro-sim kms``) and moto's DynamoDB server as detached
processes (pid files in DIR), waits until both answer, and creates the accounts table with
the relay's own schema (``DynamoDbStorage.create_table_if_missing``). ``stop`` ends the
processes it started, by their pid files. Both are idempotent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nitro_sim.statedir import process_matches

REGION = "us-east-1"
START_TIMEOUT = 60.0
SERVICES = ("kms", "dynamodb")


def _pid_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.pid"


def _marker(directory: Path, name: str) -> str:
    """What the service's command line holds: a recycled pid in a stale pid file is not ours."""
    return str(directory) if name == "kms" else "serve-dynamodb"


def _running(directory: Path, name: str) -> int | None:
    path = _pid_file(directory, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_matches(pid, _marker(directory, name)) else None


def _spawn(directory: Path, name: str, argv: list[str]) -> None:
    if _running(directory, name) is not None:
        return
    with (directory / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=directory,
        )
    _pid_file(directory, name).write_text(f"{process.pid}\n")


def _wait_port(port: int, name: str, directory: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if _running(directory, name) is None:
            log = (directory / f"{name}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"aws_services: {name} exited during start:\n{log}")
        time.sleep(0.2)
    raise SystemExit(f"aws_services: {name} does not answer on port {port}")


def _create_table(port: int, table: str) -> None:
    from parent_app.credentials import Credentials, StaticCredentialSource  # noqa: PLC0415
    from parent_app.storage_dynamodb import DynamoDbStorage  # noqa: PLC0415

    # moto accepts any credentials; the relays use their instance role's from IMDS.
    credentials = StaticCredentialSource(Credentials("AKIACLUSTERSCENARIO01", "unused", None))
    storage = DynamoDbStorage(
        table, REGION, f"http://127.0.0.1:{port}", credentials_source=credentials
    )
    try:
        storage.create_table_if_missing()
    finally:
        storage.close()


def start(directory: Path, kms_port: int, dynamodb_port: int, table: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    subprocess.run(
        [python, "-m", "nitro_sim", "init", "--state-dir", str(directory)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    _spawn(
        directory,
        "kms",
        [
            python,
            "-m",
            "nitro_sim",
            "kms",
            "--state-dir",
            str(directory),
            "--host",
            "127.0.0.1",
            "--port",
            str(kms_port),
        ],
    )
    _spawn(
        directory, "dynamodb", [python, __file__, "serve-dynamodb", "--port", str(dynamodb_port)]
    )
    _wait_port(kms_port, "kms", directory)
    _wait_port(dynamodb_port, "dynamodb", directory)
    _create_table(dynamodb_port, table)
    print(f"aws_services: KMS on 127.0.0.1:{kms_port}, DynamoDB on 127.0.0.1:{dynamodb_port}")


def stop(directory: Path, names: Iterable[str] = SERVICES) -> None:
    for name in names:
        pid = _running(directory, name)
        marker = _marker(directory, name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process_matches(pid, marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_matches(pid, marker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        _pid_file(directory, name).unlink(missing_ok=True)


def serve_dynamodb(port: int) -> None:
    """moto's server app, one request at a time (its backends are not thread-safe)."""
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    server = make_server(
        "127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler
    )
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    started = commands.add_parser("start")
    started.add_argument("--dir", type=Path, required=True)
    started.add_argument("--kms-port", type=int, required=True)
    started.add_argument("--dynamodb-port", type=int, required=True)
    started.add_argument("--table", required=True)
    stopped = commands.add_parser("stop")
    stopped.add_argument("--dir", type=Path, required=True)
    served = commands.add_parser("serve-dynamodb")
    served.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        start(args.dir.resolve(), args.kms_port, args.dynamodb_port, args.table)
    elif args.command == "stop":
        stop(args.dir.resolve())
    else:
        serve_dynamodb(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
