"""The dev stack's child processes, supervised as systemd supervises the units on a host.

A ``Service`` is one long-running process, the counterpart of a unit:

- ``start()`` spawns it (its own session, output appended to its log file) and waits
  until its readiness check passes; a ``notify`` service (``Type=notify``: the
  enclave supervisor) is ready when it sends ``READY=1`` on its ``NOTIFY_SOCKET``.
- When it exits unexpectedly, a watcher thread starts it again after a backoff that
  grows from ``first_delay`` to ``max_delay`` (``Restart=on-failure`` with growing
  ``RestartSec``), and gives up after ``burst`` starts within ``interval`` seconds
  (``StartLimitBurst``, ``StartLimitIntervalSec``): the service is then ``failed``.
- ``stop(budget)`` is bounded: the stop command (``ExecStop``), SIGTERM to the
  process group, SIGKILL when the budget runs out.

Every transition is reported through ``on_event`` (one line each).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

#: How long one readiness wait may take before the start counts as failed.
READY_TIMEOUT = 60.0
#: A service that stayed up this long starts its next backoff from the beginning.
HEALTHY_AFTER = 10.0
POLL_SECONDS = 0.05


class ServiceError(RuntimeError):
    """A service did not start (exited, or its readiness check failed or timed out)."""


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 8.0
    burst: int = 5
    interval: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows ``failures`` consecutive exits."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, failures - 1)))


class Service:
    """One supervised child process; see the module docstring."""

    def __init__(
        self,
        name: str,
        command: Callable[[], list[str]],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        ready: Callable[[Service], None] | None = None,
        exec_stop: Callable[[float], None] | None = None,
        notify_socket: Path | None = None,
        policy: RestartPolicy | None = None,
        on_event: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.name = name
        self._command = command
        self._env = dict(env)
        self._cwd = cwd
        self.log_path = log_path
        self._ready = ready
        self._exec_stop = exec_stop
        self._notify_socket = notify_socket
        self.policy = policy or RestartPolicy()
        self._on_event = on_event
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.state = State.STOPPED
        self.restarts = 0
        #: Where this run's output starts in the log (banners are read from here).
        self.log_offset = 0
        self._starts: list[float] = []
        self._ready_at: float | None = None

    # ------------------------------------------------------------------ queries
    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """This run's output so far."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Spawn and wait until ready; then keep it running until ``stop``."""
        with self._lock:
            self._stopping.clear()
            self._starts.clear()
            self.state = State.STARTING
        try:
            self._spawn_and_wait()
        except BaseException:
            self.state = State.FAILED
            self._terminate(5.0)
            raise
        self._watcher = threading.Thread(
            target=self._watch, name=f"supervise-{self.name}", daemon=True
        )
        self._watcher.start()

    def stop(self, budget: float = 10.0) -> None:
        """Stop for good within ``budget`` seconds (the stop command, SIGTERM, SIGKILL)."""
        deadline = time.monotonic() + budget
        with self._lock:
            self._stopping.set()
        if self._exec_stop is not None and self.alive():
            try:
                self._exec_stop(max(0.5, (deadline - time.monotonic()) / 2))
            except Exception as exc:  # a failed ExecStop must not stop the stop
                self._on_event(f"{self.name}: stop command failed: {exc}")
        self._terminate(max(0.5, deadline - time.monotonic()))
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(max(0.5, deadline - time.monotonic()))
        self._watcher = None
        self.state = State.STOPPED

    def restart(self, budget: float = 10.0) -> None:
        self.stop(budget)
        self.start()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the main process (a fault for the supervisor to handle)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    # ----------------------------------------------------------------- internals
    def _spawn_and_wait(self, *, restart: bool = False) -> None:
        notify = self._open_notify_socket()
        try:
            with self._lock:
                if self._stopping.is_set():
                    raise ServiceError(f"{self.name}: stopping")
                self._starts.append(time.monotonic())
                self._ready_at = None
                self.process = self._spawn(notify is not None)
            if notify is not None:
                self._wait_notify(notify)
            if self._ready is not None:
                self._ready(self)
        finally:
            if notify is not None:
                notify.close()
                with contextlib.suppress(OSError):
                    os.unlink(notify.getsockname())
        self._ready_at = time.monotonic()
        if restart:
            self.restarts += 1
        self.state = State.RUNNING

    def _spawn(self, notify: bool) -> subprocess.Popen[bytes]:
        env = dict(self._env)
        if notify:
            env["NOTIFY_SOCKET"] = str(self._notify_socket)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_offset = log.tell()
            return subprocess.Popen(
                self._command(),
                cwd=self._cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _open_notify_socket(self) -> socket.socket | None:
        if self._notify_socket is None:
            return None
        self._notify_socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._notify_socket.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._notify_socket))
        sock.settimeout(POLL_SECONDS * 4)
        return sock

    def _wait_notify(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.check_running()
            try:
                message = sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                return
        raise ServiceError(f"{self.name}: no READY=1 within {READY_TIMEOUT:.0f}s")

    def check_running(self) -> None:
        """Raise ``ServiceError`` if the process has exited or a stop was asked for."""
        if self._stopping.is_set():
            raise ServiceError(f"{self.name}: stopping")
        process = self.process
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{self.name}: exited with {process.returncode}")

    def _watch(self) -> None:
        failures = 0
        while True:
            process = self.process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            ready_at = self._ready_at
            healthy = ready_at is not None and time.monotonic() - ready_at > HEALTHY_AFTER
            failures = 1 if healthy else failures + 1
            recent = [t for t in self._starts if time.monotonic() - t < self.policy.interval]
            if len(recent) >= self.policy.burst:
                self.state = State.FAILED
                self._on_event(
                    f"{self.name}: exited with {code}; {len(recent)} starts within "
                    f"{self.policy.interval:.0f}s: giving up (start limit hit)"
                )
                return
            delay = self.policy.delay(failures)
            self.state = State.RESTARTING
            self._on_event(f"{self.name}: exited with {code}; restarting in {delay:g}s")
            if self._stopping.wait(delay):
                return
            try:
                self._spawn_and_wait(restart=True)
            except ServiceError as exc:
                self._on_event(f"{self.name}: restart failed: {exc}")
                self._terminate(5.0)
                continue
            self._on_event(f"{self.name}: running again (restart {self.restarts})")

    def _terminate(self, budget: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            self._on_event(f"{self.name}: no exit {budget:.1f}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
