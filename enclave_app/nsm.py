"""Nitro Secure Module (NSM) client: attestation documents, randomness, PCRs.

Both backends speak the real NSM CBOR messages (aws-nitro-enclaves-nsm-api):

- ``{"Attestation": {"user_data": b|null, "nonce": b|null, "public_key": b|null}}``
  -> ``{"Attestation": {"document": bytes}}``
- ``"GetRandom"`` -> ``{"GetRandom": {"random": bytes}}``
- ``{"DescribePCR": {"index": n}}`` -> ``{"DescribePCR": {"lock": bool, "data": bytes}}``
- any failure -> ``{"Error": "InvalidArgument" | "InvalidIndex" | ...}``

``DeviceNsm`` talks to ``/dev/nsm`` with the NSM ioctl (hardware). ``SocketNsm``
sends the same bytes over a unix stream socket with a 4-byte big-endian length
prefix (simulator). ``nsm_from_environment`` picks one: this is the NSM seam.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import cbor2

from enclave_app.errors import EnclaveError, ErrorCode, invalid

NSM_DEVICE = "/dev/nsm"
NSM_ENV_SOCKET = "NITRO_SIM_NSM_SOCKET"
# _IOWR(0x0A, 0, sizeof(struct nsm_message)) with struct nsm_message = 2 x struct iovec.
NSM_IOCTL = 0xC0200A00
NSM_RESPONSE_MAX = 0x3000
NSM_REQUEST_MAX = 0x1000
SOCKET_FRAME_MAX = 16 * 1024
SOCKET_TIMEOUT = 10.0
MAX_USER_DATA = 512
MAX_NONCE = 512
MAX_PUBLIC_KEY = 1024
MAX_RANDOM = 256
MAX_PCR_INDEX = 31


class Nsm(Protocol):
    def attest(
        self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes:
        """An attestation document (COSE_Sign1 bytes) carrying the given fields."""
        ...

    def get_random(self, n: int) -> bytes:
        """``n`` bytes from the NSM's hardware RNG."""
        ...


# --- messages (shared with the simulator) -------------------------------------------


def attestation_request(
    *, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
) -> bytes:
    """The CBOR Attestation request; field sizes are checked as the NSM would."""
    _check_field("user_data", user_data, MAX_USER_DATA)
    _check_field("nonce", nonce, MAX_NONCE)
    _check_field("public_key", public_key, MAX_PUBLIC_KEY)
    return cbor2.dumps(
        {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
    )


def get_random_request() -> bytes:
    return cbor2.dumps("GetRandom")


def describe_pcr_request(index: int) -> bytes:
    if type(index) is not int or not 0 <= index <= MAX_PCR_INDEX:
        raise invalid(f"PCR index must be 0..{MAX_PCR_INDEX}")
    return cbor2.dumps({"DescribePCR": {"index": index}})


def decode_response(response: bytes, expected: str) -> Mapping[str, Any]:
    """The body of an ``{expected: {...}}`` response; an NSM error raises NSM_UNAVAILABLE."""
    try:
        message = cbor2.loads(response, allow_indefinite=False, max_depth=4)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as exc:
        raise _unavailable("the NSM sent malformed CBOR") from exc
    if not isinstance(message, dict) or len(message) != 1:
        raise _unavailable("the NSM sent an unexpected response")
    ((kind, body),) = message.items()
    if kind == "Error":
        raise _unavailable(f"the NSM refused the request: {body if isinstance(body, str) else '?'}")
    if kind != expected or not isinstance(body, dict):
        raise _unavailable(f"the NSM answered {kind!r} to a {expected} request")
    return body


def _check_field(name: str, value: bytes | None, limit: int) -> None:
    if value is not None and (not isinstance(value, bytes) or len(value) > limit):
        raise invalid(f"{name} must be at most {limit} bytes")


def _unavailable(message: str) -> EnclaveError:
    return EnclaveError(ErrorCode.NSM_UNAVAILABLE, message)


class _CborNsm:
    """Request/response logic common to both transports."""

    def _roundtrip(self, request: bytes) -> bytes:
        raise NotImplementedError

    def attest(
        self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes:
        request = attestation_request(user_data=user_data, nonce=nonce, public_key=public_key)
        body = decode_response(self._roundtrip(request), "Attestation")
        document = body.get("document")
        if not isinstance(document, bytes) or not document:
            raise _unavailable("the NSM sent no attestation document")
        return document

    def get_random(self, n: int) -> bytes:
        if type(n) is not int or not 0 <= n <= 64 * 1024:
            raise invalid("random length out of range")
        out = bytearray()
        while len(out) < n:
            body = decode_response(self._roundtrip(get_random_request()), "GetRandom")
            chunk = body.get("random")
            if not isinstance(chunk, bytes) or not chunk:
                raise _unavailable("the NSM sent no random bytes")
            out += chunk
        return bytes(out[:n])

    def describe_pcr(self, index: int) -> tuple[bool, bytes]:
        """(locked, value) of PCR ``index``."""
        body = decode_response(self._roundtrip(describe_pcr_request(index)), "DescribePCR")
        lock, data = body.get("lock"), body.get("data")
        if not isinstance(lock, bool) or not isinstance(data, bytes):
            raise _unavailable("the NSM sent a malformed DescribePCR response")
        return lock, data


# --- /dev/nsm ---------------------------------------------------------------------


class IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class NsmMessage(ctypes.Structure):
    """``struct nsm_message { struct iovec request; struct iovec response; }``."""

    _fields_ = (("request", IoVec), ("response", IoVec))


class DeviceNsm(_CborNsm):
    """The Nitro hypervisor's NSM through the ``/dev/nsm`` ioctl."""

    def __init__(self, path: str | os.PathLike[str] = NSM_DEVICE) -> None:
        self.path = os.fspath(path)

    def _roundtrip(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX:
            raise invalid("NSM request too large")
        request_buf = ctypes.create_string_buffer(request, len(request))
        response_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
        message = NsmMessage(
            IoVec(ctypes.addressof(request_buf), len(request)),
            IoVec(ctypes.addressof(response_buf), NSM_RESPONSE_MAX),
        )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _unavailable(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            fcntl.ioctl(fd, NSM_IOCTL, message, True)
        except OSError as exc:
            raise _unavailable(f"NSM ioctl failed: {exc.strerror}") from exc
        finally:
            os.close(fd)
        length = message.response.iov_len
        if not 0 < length <= NSM_RESPONSE_MAX:
            raise _unavailable("the NSM returned an invalid response length")
        return response_buf.raw[:length]


# --- simulator socket ---------------------------------------------------------------


class SocketNsm(_CborNsm):
    """The simulator's NSM: one length-prefixed CBOR exchange per connection."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = SOCKET_TIMEOUT) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def _roundtrip(self, request: bytes) -> bytes:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                write_frame(sock, request)
                return read_frame(sock)
        except EnclaveError:
            raise
        except OSError as exc:
            raise _unavailable(f"NSM socket {self.path}: {exc.strerror or exc}") from exc


def write_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) > SOCKET_FRAME_MAX:
        raise _unavailable("NSM message too large")
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def read_frame(sock: socket.socket) -> bytes:
    """One frame; the length cap is checked before the body is read."""
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    if not 0 < length <= SOCKET_FRAME_MAX:
        raise _unavailable(f"NSM frame length {length} out of range")
    return _read_exact(sock, length)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _unavailable("NSM connection closed mid-message")
        buf += chunk
    return bytes(buf)


def nsm_from_environment(env: Mapping[str, str] = os.environ) -> DeviceNsm | SocketNsm:
    """``SocketNsm`` when ``NITRO_SIM_NSM_SOCKET`` is set (simulator), else ``/dev/nsm``."""
    path = env.get(NSM_ENV_SOCKET)
    if path is not None:
        if not path:
            raise _unavailable(f"{NSM_ENV_SOCKET} is set but empty")
        return SocketNsm(path)
    return DeviceNsm()
