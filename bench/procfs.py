"""CPU time and resident memory of process trees, from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_user_system(pids: Iterable[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` (fields 14 and 15 of /proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / _TICKS, system / _TICKS


def context_switches(pids: Iterable[int]) -> int:
    """Voluntary and involuntary context switches so far of every thread of ``pids``."""
    total = 0
    for pid in pids:
        for task in (Path("/proc") / str(pid) / "task").glob("*"):
            try:
                text = (task / "status").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of ``pids``."""
    return sum(cpu_user_system(pids))


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size of ``pids`` (field 24 of /proc/PID/stat, in pages)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * _PAGE
    return total
