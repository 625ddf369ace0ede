"""The detached supervisor of one simulated enclave (started by ``nitro-cli run-enclave``).

    python -m nitro_sim.enclave_runner --state-dir D --enclave-id ID [--isolation MODE]

It reads ``enclaves/<id>/state.json`` (written by nitro-cli), serves the simulated NSM
on ``enclaves/<id>/nsm.sock`` with the measured PCRs (all zero in debug mode), and
runs the image's own code: ``python -m enclave_app --config <image>/enclave.toml``
with the image directory as cwd and first on ``sys.path`` (``-E -s``: no PYTHON*
variables, no user site), a clean environment (PATH, LANG and the simulator seams
only) and stdout/stderr to ``console.log``. Where the OS allows, the process gets no
network of its own (``unshare --user --map-root-user --net``, loopback brought up).

It marks the enclave RUNNING once it answers a health frame on its vsock port. SIGTERM
stops the enclave and removes its sockets and directory (exit 0). If the enclave
process dies or never answers, the runner exits non-zero after moving the console log
to ``<state>/logs/<id>.console.log`` and removing the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from enclave_app import wire
from enclave_app.errors import EnclaveError
from enclave_app.transport import Transport
from nitro_sim import statedir
from nitro_sim.ca import SimCa
from nitro_sim.nsm import SimulatedNsm

ISOLATION_MODES = ("auto", "netns", "none")
DEFAULT_BOOT_TIMEOUT = 30.0
STOP_GRACE_SECONDS = 5.0
PROBE_INTERVAL = 0.1
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENCLAVE_CID_ENV = "NITRO_SIM_ENCLAVE_CID"

EXIT_TERMINATED = 0
EXIT_ENCLAVE_DIED = 1
EXIT_BOOT_FAILED = 2
EXIT_SETUP_FAILED = 3


class RunnerError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_SETUP_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def netns_supported() -> bool:
    """Can this user create a user + network namespace? (checked once per enclave)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run(
            [unshare, "--user", "--map-root-user", "--net", "--", sys.executable, "-c", ""],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def enclave_command(image_dir: Path, isolation: str) -> list[str]:
    python = [
        sys.executable,
        "-E",
        "-s",
        "-u",
        "-B",
        "-m",
        "enclave_app",
        "--config",
        str(image_dir / "enclave.toml"),
    ]
    if isolation != "netns":
        return python
    unshare = shutil.which("unshare") or "unshare"
    prefix = [unshare, "--user", "--map-root-user", "--net", "--"]
    ip = shutil.which("ip", path=CLEAN_PATH)
    if ip is None:
        return prefix + python
    # "$0" is ip, "$@" the enclave command: bring loopback up, then become the enclave.
    return [*prefix, "/bin/sh", "-c", '"$0" link set lo up && exec "$@"', ip, *python]


def enclave_environment(state: Path, nsm_socket: Path, cid: int) -> dict[str, str]:
    """Only what the enclave needs; nothing of the parent's (no AWS_*, no PYTHON*)."""
    return {
        "PATH": CLEAN_PATH,
        "LANG": "C.UTF-8",
        "NITRO_SIM_VSOCK_DIR": str(statedir.vsock_dir(state)),
        "NITRO_SIM_NSM_SOCKET": str(nsm_socket),
        ENCLAVE_CID_ENV: str(cid),
    }


def probe(transport: Transport, cid: int, port: int) -> bool:
    """True once something on (cid, port) answers a health frame with a protocol frame."""
    try:
        with transport.connect(cid, port, timeout=2.0) as sock:
            request = wire.Request("nitro-sim-boot-probe", "health", {})
            wire.write_frame(sock, wire.request_frame(request))
            body = wire.read_frame(sock)
            if body is None:
                return False
            wire.decode_object(body)
            return True
    except (OSError, EnclaveError, ValueError):
        return False


class Runner:
    def __init__(
        self, state: Path, enclave_id: str, isolation: str, boot_timeout: float, console: IO[bytes]
    ) -> None:
        self.state = state
        self.enclave_id = enclave_id
        self.directory = statedir.enclave_dir(state, enclave_id)
        self.image = self.directory / "image"
        self.nsm_socket = self.directory / "nsm.sock"
        self.isolation_request = isolation
        self.boot_timeout = boot_timeout
        self.console = console
        self.stop = threading.Event()
        self.transport = Transport.unix(statedir.vsock_dir(state))

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.console.write(f"[nitro-sim {stamp}] {message}\n".encode())
        self.console.flush()

    def update(self, **changes: Any) -> dict[str, Any]:
        with statedir.locked(self.state):
            record = statedir.read_record(self.directory)
            if record is None:
                raise RunnerError("state.json is missing or unreadable")
            record.update(changes)
            statedir.write_record(self.directory, record)
            return record

    def run(self) -> int:
        record = self.update(ProcessID=os.getpid())
        cid = record.get("EnclaveCID")
        port = record.get("ServerPort")
        if not isinstance(cid, int) or not isinstance(port, int):
            raise RunnerError("state.json lacks EnclaveCID/ServerPort")
        statedir.check_socket_path(self.nsm_socket)
        statedir.check_socket_path(self.transport.unix_path(cid, port))
        pcrs = _pcrs(record)
        ca = SimCa.load_or_create(statedir.ca_dir(self.state))
        server = SimulatedNsm(ca, pcrs, self.enclave_id).serve(self.nsm_socket)
        try:
            return self._supervise(cid, port)
        finally:
            server.close()

    def _isolation(self) -> str:
        if self.isolation_request == "none":
            return "none"
        if netns_supported():
            return "netns"
        if self.isolation_request == "netns":
            raise RunnerError("network isolation was required but unshare --net is not available")
        self.log(
            "WARNING: user/network namespaces are unavailable; the enclave process "
            "runs WITHOUT network isolation"
        )
        return "none"

    def _supervise(self, cid: int, port: int) -> int:
        isolation = self._isolation()
        command = enclave_command(self.image, isolation)
        self.log(f"starting enclave {self.enclave_id} (cid {cid}, isolation {isolation})")
        process = subprocess.Popen(
            command,
            cwd=self.image,
            env=enclave_environment(self.state, self.nsm_socket, cid),
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=subprocess.STDOUT,
        )
        try:
            self.update(Isolation=isolation, EnclaveProcessID=process.pid)
            booted = self._wait_ready(process, cid, port)
            if booted is not None:
                return booted
            self.update(State="RUNNING")
            self.log(f"enclave answers on vsock port {port}")
            while not self.stop.is_set():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = process.wait(timeout=0.2)
                    self.log(f"enclave process exited with code {code}")
                    return EXIT_ENCLAVE_DIED
            return EXIT_TERMINATED
        finally:
            _stop(process)

    def _wait_ready(self, process: subprocess.Popen[bytes], cid: int, port: int) -> int | None:
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.stop.is_set():
                return EXIT_TERMINATED
            code = process.poll()
            if code is not None:
                self.log(f"enclave process exited with code {code} before answering")
                return EXIT_BOOT_FAILED
            if probe(self.transport, cid, port):
                return None
            time.sleep(PROBE_INTERVAL)
        self.log(f"enclave did not answer on vsock port {port} within {self.boot_timeout:g}s")
        return EXIT_BOOT_FAILED

    def cleanup(self, cid: object, failed: bool) -> None:
        with contextlib.suppress(OSError):
            self.nsm_socket.unlink()
        if isinstance(cid, int) and not isinstance(cid, bool):
            remove_cid_sockets(self.state, cid)
        with statedir.locked(self.state):
            if failed:
                logs = statedir.logs_dir(self.state)
                logs.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.replace(
                        self.directory / "console.log", logs / f"{self.enclave_id}.console.log"
                    )
            shutil.rmtree(self.directory, ignore_errors=True)


def remove_cid_sockets(state: Path, cid: int) -> None:
    for path in statedir.vsock_dir(state).glob(f"{cid}_*.sock"):
        with contextlib.suppress(OSError):
            path.unlink()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pcrs(record: dict[str, Any]) -> dict[int, bytes]:
    """The image's measurements as the NSM reports them: PCR0..2, and PCR8 for a signed
    image (48 zero bytes otherwise, as real Nitro attests an unsigned image). In debug
    mode every image measurement is zero."""
    if record.get("Flags") == "DEBUG_MODE":
        return {index: bytes(48) for index in (0, 1, 2, 8)}
    measurements = record.get("Measurements")
    if not isinstance(measurements, dict):
        raise RunnerError("state.json lacks Measurements")
    pcrs: dict[int, bytes] = {}
    for index in (0, 1, 2, 8):
        if index == 8 and "PCR8" not in measurements:
            continue
        value = measurements.get(f"PCR{index}")
        try:
            pcrs[index] = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            pcrs[index] = b""
        if len(pcrs[index]) != 48:
            raise RunnerError(f"state.json PCR{index} is not 48 bytes of hex")
    return pcrs


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nitro-sim-enclave-runner")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--enclave-id", required=True)
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="auto")
    parser.add_argument("--boot-timeout", type=float, default=DEFAULT_BOOT_TIMEOUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    state = statedir.resolve(args.state_dir)
    directory = statedir.enclave_dir(state, args.enclave_id)
    if args.enclave_id in ("", ".", "..") or "/" in args.enclave_id or not directory.is_dir():
        print(f"no enclave directory for {args.enclave_id!r}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    with open(directory / "console.log", "ab") as console:
        runner = Runner(state, args.enclave_id, args.isolation, args.boot_timeout, console)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            runner.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        record = statedir.read_record(directory) or {}
        try:
            code = runner.run()
        except Exception as exc:  # report any setup failure, then clean up
            runner.log(f"runner failed: {exc}")
            code = exc.exit_code if isinstance(exc, RunnerError) else EXIT_SETUP_FAILED
        runner.log(f"runner exiting with code {code}")
        runner.cleanup(record.get("EnclaveCID"), failed=code != EXIT_TERMINATED)
    return code


if __name__ == "__main__":
    sys.exit(main())
