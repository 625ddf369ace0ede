"""Validate a Nitro Enclaves allocator.yaml as the real allocator would read it, and
reserve its memory as hugepages the way nitro-enclaves-allocator does.

Usage: allocator_check.py /etc/nitro_enclaves/allocator.yaml [--sysfs-root DIR]

With ``--sysfs-root`` it writes ``DIR/kernel/mm/hugepages/hugepages-<size>kB/nr_hugepages``
as the real allocator leaves ``/sys`` after its reservation: 1 GiB pages first for whole
GiB, then 2 MiB pages for the rest (nothing is reserved for real: this is a simulator).
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


GIB_PAGE_KB = 1024 * 1024
MIB2_PAGE_KB = 2048


def hugepages_for(memory_mib: int) -> dict[int, int]:
    """Pages per size (kB) the allocator reserves for ``memory_mib``: 1 GiB first, then 2 MiB."""
    gib_pages, rest_mib = divmod(memory_mib, 1024)
    return {GIB_PAGE_KB: gib_pages, MIB2_PAGE_KB: -(-rest_mib // 2)}


def reserve(sysfs_root: Path, memory_mib: int) -> str:
    pools = sysfs_root / "kernel" / "mm" / "hugepages"
    for size_kb, pages in sorted(hugepages_for(memory_mib).items()):
        pool = pools / f"hugepages-{size_kb}kB"
        pool.mkdir(parents=True, exist_ok=True)
        (pool / "nr_hugepages").write_text(f"{pages}\n", encoding="ascii")
    return " ".join(f"{kb}kB={n}" for kb, n in sorted(hugepages_for(memory_mib).items()))


def main(argv: list[str]) -> int:
    args = argv[1:]
    sysfs_root: Path | None = None
    if len(args) == 3 and args[1] == "--sysfs-root":
        sysfs_root = Path(args[2])
        args = args[:1]
    if len(args) != 1:
        print("usage: allocator_check.py ALLOCATOR_YAML [--sysfs-root DIR]", file=sys.stderr)
        return 2
    try:
        summary = check(Path(args[0]))
        if sysfs_root is not None:
            memory = yaml.safe_load(Path(args[0]).read_text(encoding="utf-8"))["memory_mib"]
            summary += f"; hugepages reserved: {reserve(sysfs_root, memory)}"
    except ValueError as exc:
        print(f"allocator config refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"allocator: cannot write the hugepage counters: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
