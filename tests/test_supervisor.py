"""nitro_sim.supervisor: restart with backoff, the start limit, notify readiness and a
bounded stop, with real child processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nitro_sim.supervisor import RestartPolicy, Service, ServiceError, State
from tests.stack_helpers import wait_for

pytestmark = pytest.mark.process  # supervises real child processes

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, burst=4, interval=60)


def python(code: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, "-c", code]


def service(tmp_path: Path, code: str, **kwargs: object) -> tuple[Service, list[str]]:
    events: list[str] = []
    made = Service(
        "child",
        python(code),
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "child.log",
        on_event=events.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return made, events


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=8.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_dying_service_is_restarted_until_the_start_limit(tmp_path: Path) -> None:
    child, events = service(tmp_path, "import time; time.sleep(0.3)", policy=FAST)
    child.start()
    try:
        assert wait_for(lambda: child.state == State.FAILED)
        assert child.restarts == FAST.burst - 1
        assert sum("restarting in" in e for e in events) == FAST.burst - 1
        assert "giving up (start limit hit)" in events[-1]
    finally:
        child.stop(5)


def test_a_killed_service_comes_back_as_a_new_process(tmp_path: Path) -> None:
    child, events = service(tmp_path, "import time; time.sleep(60)", policy=FAST)
    child.start()
    try:
        first = child.pid
        child.signal(signal.SIGKILL)
        assert wait_for(lambda: child.restarts == 1 and child.state == State.RUNNING)
        assert child.pid != first
        assert child.alive()
        assert f"child: exited with {-signal.SIGKILL}; restarting in 0.05s" in events
    finally:
        child.stop(5)
    assert child.state == State.STOPPED
    assert not child.alive()


def test_a_notify_service_is_ready_only_after_ready_1(tmp_path: Path) -> None:
    code = (
        "import os, socket, time\n"
        "time.sleep(0.3)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(60)\n"
    )
    child, _ = service(tmp_path, code, notify_socket=tmp_path / "notify")
    started = time.monotonic()
    child.start()
    try:
        assert time.monotonic() - started >= 0.3
        assert child.state == State.RUNNING
    finally:
        child.stop(5)


def test_a_service_that_exits_before_ready_fails_to_start(tmp_path: Path) -> None:
    child, _ = service(tmp_path, "raise SystemExit(3)", notify_socket=tmp_path / "notify")
    with pytest.raises(ServiceError, match="exited with 3"):
        child.start()
    assert child.state == State.FAILED


def test_stop_is_bounded_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('armed', flush=True)\n"
        "time.sleep(60)\n"
    )
    stopped: list[float] = []
    child, events = service(tmp_path, code, exec_stop=stopped.append)
    child.start()
    assert wait_for(lambda: "armed" in child.output())
    began = time.monotonic()
    child.stop(2.0)
    assert time.monotonic() - began < 5
    assert stopped  # the stop command ran first, with part of the budget
    assert not child.alive()
    assert any("SIGKILL" in e for e in events)
