"""The SQLite journal choices of parent_app.storage: write latency, and what each does
under storage faults (the numbers behind docs/reliability.md).

    .venv/bin/python bench/bench_storage.py [--inserts 400] [--dir /var/lib/...]
    .venv/bin/python bench/bench_storage.py --faults      # root: chattr +i, tmpfs

Latency: every option inserts the same account records through ``SqliteStorage``,
interleaved one insert each per round (so machine noise hits all alike), into files on
the same file system (``--dir``, default a temporary directory under /tmp). Faults: each
option runs in a child process that writes, meets the fault, tries 10 more writes and a
read, and reports; a child killed by a signal is reported as such (SIGBUS is the
memory-mapped WAL index). Figures from a shared machine are noisy: compare options
within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parent_app.errors import RelayError
from parent_app.storage import (
    DURABLE,
    AccountRecord,
    JournalSettings,
    SqliteStorage,
    checksum_address,
)
from tests.fs_faults import set_immutable, small_tmpfs

OPTIONS = {
    "wal (shared-memory index)": JournalSettings("WAL", "FULL", "NORMAL"),
    "wal + locking_mode=exclusive": JournalSettings("WAL", "FULL", "EXCLUSIVE"),
    "delete + synchronous=full": JournalSettings("DELETE", "FULL", "NORMAL"),
    "delete + synchronous=extra": JournalSettings("DELETE", "EXTRA", "NORMAL"),
    "persist + synchronous=full": JournalSettings("PERSIST", "FULL", "NORMAL"),
    "truncate + synchronous=full (chosen)": DURABLE,
}


def _record(index: int) -> AccountRecord:
    account_id = str(uuid.UUID(int=index + 1))
    address = f"0x{index + 1:040x}"
    return AccountRecord(
        account_id=account_id,
        address=checksum_address(address),
        key_id="arn:aws:kms:us-east-1:111122223333:key/bench",
        encrypted_private_key=os.urandom(60),
        encrypted_data_key=os.urandom(184),
        created_at=datetime.now(UTC),
    )


def latency(directory: Path, inserts: int) -> dict[str, list[float]]:
    stores = {
        name: SqliteStorage(directory / f"{index}.db", journal=settings)
        for index, (name, settings) in enumerate(OPTIONS.items())
    }
    timings: dict[str, list[float]] = {name: [] for name in stores}
    for index in range(inserts):
        record = _record(index)
        for name, store in stores.items():
            started = time.perf_counter()
            store.insert(record)
            timings[name].append((time.perf_counter() - started) * 1000)
    for store in stores.values():
        store.close()
    return timings


# ------------------------------------------------------------------------- faults


def _immutable(paths: list[Path], on: bool) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            set_immutable(path, on)


def _fault_child(directory: str, settings: JournalSettings, fault: str, out: str) -> None:
    root = Path(directory)
    store = SqliteStorage(root / "accounts.db", journal=settings)
    for index in range(5):
        store.insert(_record(index))
    files = [*sorted(root.glob("accounts.db*")), root]
    if fault == "immutable-file":
        _immutable([root / "accounts.db"], True)
    elif fault == "immutable-all":
        _immutable(files, True)
    else:  # full-disk
        with contextlib.suppress(OSError), (root / "filler").open("wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
    outcomes: Counter[str] = Counter()
    for index in range(5, 15):
        try:
            store.insert(_record(index))
            outcomes["ok"] += 1
        except RelayError as exc:
            outcomes[f"{exc.status} {exc.code}"] += 1
    try:
        store.get(_record(0).account_id)
        read = "reads ok"
    except RelayError as exc:
        read = f"reads {exc.status} {exc.code}"
    Path(out).write_text(json.dumps({"writes": dict(outcomes), "read": read}))


def faults() -> None:
    context = multiprocessing.get_context("fork")
    for fault in ("immutable-file", "immutable-all", "full-disk"):
        print(f"\n{fault}: 10 writes after the fault, then a read")
        for name, settings in OPTIONS.items():
            base = Path(tempfile.mkdtemp(prefix="nw-bench-fault-"))
            directory = base / "db"
            mounted = small_tmpfs(directory) if fault == "full-disk" else contextlib.nullcontext()
            try:
                with mounted:
                    directory.mkdir(exist_ok=True)
                    out = base / "result.json"
                    child = context.Process(
                        target=_fault_child, args=(str(directory), settings, fault, str(out))
                    )
                    child.start()
                    child.join(60)
                    code = child.exitcode
                    if code is not None and code < 0:
                        verdict = f"KILLED by {signal.Signals(-code).name}"
                    elif out.exists():
                        result = json.loads(out.read_text())
                        writes = ", ".join(f"{n}x {k}" for k, n in result["writes"].items())
                        verdict = f"{writes}; {result['read']}"
                    else:
                        verdict = f"child exited {code} without a result"
                    _immutable([*directory.glob("*"), directory], False)
            finally:
                shutil.rmtree(base, ignore_errors=True)
            print(f"  {name:38s} {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inserts", type=int, default=400)
    parser.add_argument("--dir", type=Path, help="a directory on the file system to measure")
    parser.add_argument("--faults", action="store_true", help="the fault matrix (root)")
    args = parser.parse_args()
    logging.getLogger("parent_app").setLevel(logging.CRITICAL)  # the faults are expected
    if args.faults:
        faults()
        return 0
    base = Path(tempfile.mkdtemp(prefix="nw-bench-storage-", dir=args.dir))
    try:
        timings = latency(base, args.inserts)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.inserts} inserts per option, interleaved, in {base.parent}")
    for name, values in timings.items():
        values.sort()
        p99 = values[max(0, int(len(values) * 0.99) - 1)]
        print(f"  {name:38s} median {statistics.median(values):6.2f} ms   p99 {p99:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
