"""File-system faults for the storage tests, made in-process (no mount or chattr
command): immutable files (FS_IOC_SETFLAGS), a small tmpfs that fills up, and a
read-only bind mount. Each needs root; a test skips, saying why, where the kernel or
the file system refuses."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def set_immutable(path: Path, on: bool) -> None:
    """chattr +i / -i, in-process."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


def require_immutable_support(directory: Path) -> None:
    probe = directory / ".immutable-probe"
    probe.write_bytes(b"")
    try:
        set_immutable(probe, True)
        set_immutable(probe, False)
    except OSError as exc:
        pytest.skip(f"cannot make files immutable in {directory}: {exc.strerror}")
    finally:
        probe.unlink(missing_ok=True)


def _mount(
    source: bytes | None, target: Path, fstype: bytes | None, flags: int, data: bytes | None
) -> None:
    if _libc.mount(source, os.fsencode(target), fstype, flags, data) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _umount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str = "512k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``target`` (a full disk is one file away)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        _mount(b"tmpfs", target, b"tmpfs", 0, f"size={size},mode=0700".encode())
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs (needs root): {exc.strerror}")
    try:
        yield target
    finally:
        _umount(target)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; remove it to free the space."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


class ReadOnlyView:
    """``view`` shows ``source`` through a bind mount that can be flipped read-only."""

    def __init__(self, source: Path, view: Path) -> None:
        self.view = view
        view.mkdir(parents=True, exist_ok=True)
        try:
            _mount(os.fsencode(source), view, None, MS_BIND, None)
        except OSError as exc:
            pytest.skip(f"cannot bind-mount (needs root): {exc.strerror}")

    def read_only(self, on: bool) -> None:
        flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if on else 0)
        _mount(None, self.view, None, flags, None)

    def close(self) -> None:
        _umount(self.view)
