"""The relay's audit log writer: enclave receipts, in counter order, appended to a
JSON-lines file that ``nitro-wallet audit verify`` checks.

One background thread pulls ``audit_receipts`` from the enclave: ``LINGER_SECONDS``
after the first decision since its last pull (``notify``), so that the decisions of
that moment share one pull, at once when ``EARLY_PULL_DECISIONS`` were made, and every
``interval`` seconds in any case; each time until it has every receipt sealed at its
last pull (the answer's ``sealed``). Pulling right after each decision cost two enclave
round trips and an ``fsync`` per request (docs/performance.md). The enclave's ring keeps
what is not yet pulled, and refuses decisions (``audit_backlog_full``) before it would
lose any. Each call names the last receipt written (``after``), which acknowledges it to
the enclave; an answer lost on the way is simply pulled again. On a new enclave segment
the same ``after`` makes the enclave record a link to it.

Lines are written exactly as the enclave sent them, each batch with one ``write`` on an
``O_APPEND`` descriptor and an ``fsync`` before the next pull acknowledges it. A batch
that does not continue the file (wrong counter or ``prev``) is not written: the writer
logs it and retries, and ``audit verify`` would name the break anyway. A partial last
line (a crash mid-write) is cut off at start, the only change ever made to old bytes.

``drain`` may also run on a request's thread (``GET /v1/audit/head`` drains so that the
log reaches the head it answers): one lock keeps pulls and appends in order. A failure
is logged when it starts and when it ends, not at every retry.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclave_app import strict_json
from enclave_app.auth import receipt_format as fmt
from enclave_app.errors import EnclaveError
from parent_app.errors import RelayError

log = logging.getLogger(__name__)

PULL_LIMIT = 1000
#: How long the writer waits after the first decision since its last pull: receipts
#: reach the log within about this, and the requests of that moment share one pull.
LINGER_SECONDS = 0.05
#: Decisions since the last pull that end the wait at once: a burst is collected in
#: pulls of about this size, far below the enclave's ring size.
EARLY_PULL_DECISIONS = 500
MAX_LINE_BYTES = 64 * 1024
DEFAULT_INTERVAL_SECONDS = 1.0

Pull = Callable[[dict[str, Any]], dict[str, Any]]


class AuditLogError(Exception):
    """A pulled batch does not continue the log."""


class AuditLogWriter:
    def __init__(self, path: Path, pull: Pull, interval: float = DEFAULT_INTERVAL_SECONDS) -> None:
        self.path = path
        self._pull = pull
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failing: str | None = None
        self._decisions = 0
        self._thread: threading.Thread | None = None
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))  # fail at start
        self._last = _recover_tail(path)
        self.written = 0

    @property
    def last(self) -> dict[str, Any] | None:
        """``{seg, n, hash}`` of the last receipt in the file."""
        return None if self._last is None else dict(self._last)

    def start(self) -> AuditLogWriter:
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """A decision was made: pull shortly (``LINGER_SECONDS``), or now after a burst."""
        self._decisions += 1  # a lost update under a race only delays a pull (interval)
        if self._decisions == 1 or self._decisions >= EARLY_PULL_DECISIONS:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def drain(self) -> int:
        """Pull and append until the log holds every receipt the enclave had sealed at
        the last pull; lines written."""
        with self._lock:
            self._decisions = 0
            return self._drain()

    def _drain(self) -> int:
        total = 0
        while True:
            answer = self._pull({"after": self.last, "limit": PULL_LIMIT})
            lines = answer.get("receipts")
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise AuditLogError("the enclave answered no receipt list")
            if not lines:
                return total
            self._append(lines)
            total += len(lines)
            if self._reached(answer.get("segment"), answer.get("sealed")):
                return total

    def _reached(self, segment: object, sealed: object) -> bool:
        """The log ends at the head the enclave had sealed when it answered: no need to
        pull again only to hear that nothing is left."""
        last = self._last
        return (
            last is not None
            and isinstance(segment, str)
            and type(sealed) is int
            and last["seg"] == segment
            and last["n"] >= sealed
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if 0 < self._decisions < EARLY_PULL_DECISIONS and not self._stop.is_set():
                self._wake.wait(LINGER_SECONDS)  # let this moment's decisions join
                self._wake.clear()
            try:
                self.drain()
            except (EnclaveError, RelayError) as exc:
                self._failed(f"audit receipts not collected: {exc.code}", logging.WARNING)
            except AuditLogError as exc:
                self._failed(f"audit receipts refused: {exc}", logging.ERROR)
            except Exception as exc:  # the writer must outlive any single failure
                self._failed(f"audit receipts not collected ({type(exc).__name__})", logging.ERROR)
            else:
                if self._failing is not None:
                    log.warning("audit receipts collected again")
                    self._failing = None
        try:
            self.drain()
        except Exception as exc:
            log.warning("audit receipts not collected at shutdown (%s)", type(exc).__name__)

    def _failed(self, reason: str, level: int) -> None:
        if reason != self._failing:
            log.log(level, "%s (retrying every %.1fs)", reason, self._interval)
            self._failing = reason

    def _append(self, lines: list[str]) -> None:
        last = self._last
        for line in lines:
            last = _continues(last, line)
        data = "".join(line + "\n" for line in lines).encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last = last
        self.written += len(lines)


def _continues(last: dict[str, Any] | None, line: str) -> dict[str, Any]:
    """The ``{seg, n, hash}`` of ``line`` after checking that it follows ``last``."""
    if len(line) > MAX_LINE_BYTES or "\n" in line:
        raise AuditLogError("a receipt line is too long or spans lines")
    try:
        document = strict_json.loads(line, max_depth=8)
        receipt = document["receipt"]
        seg, n, prev = receipt["seg"], receipt["n"], receipt["prev"]
    except (strict_json.StrictJsonError, TypeError, KeyError):
        raise AuditLogError("a receipt line is not a receipt") from None
    canonical = fmt.canonical_json(receipt)  # once: the line check and the hash use it
    if _canonical_line(document, canonical) != line:
        raise AuditLogError("a receipt line is not canonical")
    if last is not None and seg == last["seg"]:
        if n != last["n"] + 1 or prev != last["hash"]:
            raise AuditLogError(f"receipt n={n} does not follow n={last['n']} of segment {seg}")
    elif n != 0 or receipt.get("kind") != "genesis":
        raise AuditLogError(f"segment {seg} must start with its genesis receipt, not n={n}")
    return {"seg": seg, "n": n, "hash": fmt.canonical_receipt_hash(canonical).hex()}


def _canonical_line(document: dict[str, Any], canonical_receipt: bytes) -> str:
    """``canonical_json(document)`` as text, given its receipt's canonical bytes."""
    if document.keys() <= {"receipt", "sig"}:
        if "sig" not in document:
            return fmt.canonical_log_line(canonical_receipt, None)
        if isinstance(document["sig"], str):
            return fmt.canonical_log_line(canonical_receipt, document["sig"])
    return fmt.canonical_json(document).decode("ascii")  # no enclave writes these: in full


def _recover_tail(path: Path) -> dict[str, Any] | None:
    """The last complete receipt of an existing log; a partial last line is cut off."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with path.open("rb+") as handle:
        start = max(0, size - 2 * MAX_LINE_BYTES)
        handle.seek(start)
        tail = handle.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            log.warning(
                "audit log %s ends in a partial line: cutting %d bytes", path, len(tail) - cut
            )
            handle.truncate(start + cut)
            tail = tail[:cut]
            os.fsync(handle.fileno())
    lines = tail.splitlines()
    if not lines:
        return None
    try:
        receipt = strict_json.loads(lines[-1], max_depth=8)["receipt"]
        return {"seg": receipt["seg"], "n": receipt["n"], "hash": fmt.receipt_hash(receipt).hex()}
    except (strict_json.StrictJsonError, TypeError, KeyError):
        raise AuditLogError(f"the last line of {path} is not a receipt") from None
