"""Validate a Nitro Enclaves allocator.yaml as the real allocator would read it.

Usage: allocator_check.py /etc/nitro_enclaves/allocator.yaml
Exit 0 and one summary line when valid; exit 1 with the reason otherwise.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

_CPU_POOL_RE = re.compile(r"\A\d+(-\d+)?(,\d+(-\d+)?)*\Z")


def check(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping")
    unknown = set(data) - {"memory_mib", "cpu_count", "cpu_pool"}
    if unknown:
        raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
    memory = data.get("memory_mib")
    if not isinstance(memory, int) or isinstance(memory, bool) or memory < 64:
        raise ValueError("memory_mib must be an integer of at least 64")
    has_count = data.get("cpu_count") is not None
    has_pool = data.get("cpu_pool") is not None
    if has_count == has_pool:
        raise ValueError("exactly one of cpu_count and cpu_pool must be set")
    if has_count:
        count = data["cpu_count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("cpu_count must be a positive integer")
        cpus = f"cpu_count={count}"
    else:
        pool = str(data["cpu_pool"]).replace(" ", "")
        if not _CPU_POOL_RE.match(pool):
            raise ValueError("cpu_pool must be a CPU list such as 2,3 or 2-5")
        cpus = f"cpu_pool={pool}"
    return f"allocator config ok: memory_mib={memory} {cpus} (simulated: nothing reserved)"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: allocator_check.py ALLOCATOR_YAML", file=sys.stderr)
        return 2
    try:
        print(check(Path(argv[1])))
    except ValueError as exc:
        print(f"allocator config refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
