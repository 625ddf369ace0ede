"""The unit tier's guard: every way to start a process fails the test, and is restored."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.process_guard import ProcessStartedError, forbid_processes


@pytest.mark.parametrize(
    "start",
    [
        lambda: subprocess.run([sys.executable, "-c", ""], check=False),
        lambda: subprocess.Popen(["true"]),
        lambda: os.system("true"),  # noqa: S605 - refused before any shell runs
        lambda: os.posix_spawn("/bin/true", ["true"], os.environ),
        lambda: os.fork(),  # noqa: PLW0108 - looked up when called, after the guard is on
        lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
    ],
    ids=["run", "popen", "system", "posix_spawn", "fork", "multiprocessing"],
)
def test_every_way_to_start_a_process_is_refused(start: object) -> None:
    assert callable(start)
    restore = forbid_processes()
    try:
        with pytest.raises(ProcessStartedError, match="unit tests start no process"):
            start()
    finally:
        restore()


def test_restore_puts_the_originals_back() -> None:
    before = (subprocess.Popen._execute_child, os.fork, os.system)  # type: ignore[attr-defined]
    forbid_processes()()
    assert (subprocess.Popen._execute_child, os.fork, os.system) == before  # type: ignore[attr-defined]
