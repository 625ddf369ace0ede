"""The unit tier's promise, enforced: a unit test starts no process.

``forbid_processes()`` replaces every way Python starts a process (subprocess,
multiprocessing, fork, exec, spawn, system) with one that fails the calling test,
naming what it tried to run. ``make test-unit`` turns it on once the tests are collected
(``NITRO_WALLET_TEST_TIER=unit``), for every fixture and test; a test that needs a process is
marked ``process`` (or ``stack``) and runs in ``make test-fast`` instead.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from collections.abc import Callable
from typing import Any

_TARGETS: tuple[tuple[Any, str], ...] = (
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
    (os, "execv"),
    (os, "execve"),
)


class ProcessStartedError(AssertionError):
    """A test of the unit tier started (or tried to start) a process."""


def _refuse(name: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        shown = next((a for a in args if isinstance(a, list | tuple | str | bytes)), "")
        raise ProcessStartedError(
            f"unit tests start no process, but this one called {name}({shown!r:.200}): "
            "mark it @pytest.mark.process (it then runs in make test-fast)"
        )

    return refused


def forbid_processes() -> Callable[[], None]:
    """Install the refusals; returns the function that puts everything back."""
    saved = [
        (owner, attr, getattr(owner, attr)) for owner, attr in _TARGETS if hasattr(owner, attr)
    ]
    for owner, attr, _ in saved:
        setattr(owner, attr, _refuse(f"{getattr(owner, '__name__', 'Popen')}.{attr}"))

    def restore() -> None:
        for owner, attr, original in saved:
            setattr(owner, attr, original)

    return restore
