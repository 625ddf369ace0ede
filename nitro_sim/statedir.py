"""Where the simulator keeps its state, and the layout inside it.

``NITRO_SIM_DIR`` names the state directory; without it, ``/var/lib/nitro-sim``.

    <state>/principals.json   simulated IAM principals                      0600
    <state>/ca/               simulator CA (its private keys)                 0700
    <state>/vsock/            {cid}_{port}.sock: vsock as unix sockets        group ne
    <state>/enclaves/<id>/    state.json, image/, nsm.sock, console.log       0700
    <state>/kms/              local KMS state                                 0700

As on hardware, where the NSM is a device only the enclave has and the PKI's keys are
AWS's, only the owner (root on a simulated host) may enter ``ca/`` and ``enclaves/``:
the relay's user, which reaches ``vsock/`` through its group, can neither open an
enclave's NSM socket nor read the CA's keys. ``private_dir`` makes those directories
and tightens them when an older layout left them open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "NITRO_SIM_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/nitro-sim")
# AF_UNIX paths are limited to 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


def resolve(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """The state directory: ``explicit``, else ``$NITRO_SIM_DIR``, else the default."""
    if explicit is not None and str(explicit):
        return Path(explicit).absolute()
    from_env = environ.get(STATE_DIR_ENV, "")
    return Path(from_env).absolute() if from_env else DEFAULT_STATE_DIR


def vsock_dir(state: Path) -> Path:
    return state / "vsock"


def ca_dir(state: Path) -> Path:
    return state / "ca"


def enclaves_dir(state: Path) -> Path:
    return state / "enclaves"


def enclave_dir(state: Path, enclave_id: str) -> Path:
    return enclaves_dir(state) / enclave_id


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (created, or tightened to 0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_socket_path(path: Path) -> None:
    """Refuse a unix socket path the kernel cannot bind, with a message that says why."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ValueError(
            f"socket path {path} is longer than {MAX_UNIX_PATH} bytes; "
            f"use a shorter {STATE_DIR_ENV}"
        )


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """Exclusive lock over the enclave table (reservation of CIDs, names, CPUs, memory)."""
    directory = private_dir(enclaves_dir(state))
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- enclave records (enclaves/<id>/state.json) -----------------------------------

STATE_FILE = "state.json"
LOGS_DIR = "logs"


def logs_dir(state: Path) -> Path:
    """Console logs of enclaves that failed, kept after their directory is removed."""
    return state / LOGS_DIR


def read_record(directory: Path) -> dict[str, Any] | None:
    """The enclave's state.json, or None if missing or unreadable (a stale entry)."""
    try:
        raw = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def write_record(directory: Path, record: Mapping[str, Any]) -> None:
    """Replace state.json atomically (callers hold ``locked``)."""
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, directory / STATE_FILE)


def process_matches(pid: object, marker: str) -> bool:
    """True if ``pid`` is a live (non-zombie) process whose command line holds ``marker``.

    The marker (an enclave id) guards against a recycled PID being mistaken for ours.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        return False
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():  # no procfs: best effort
        return _signalable(pid)
    try:
        stat_line = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat_line.rsplit(")", 1)[-1].split()
    if state and state[0] in ("Z", "X"):
        return False
    return marker.encode() in cmdline


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
