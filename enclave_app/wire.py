"""Parent <-> enclave framing: a 4-byte big-endian length, then a UTF-8 JSON object.

Request:  {"v": 1, "id": "<request id>", "op": "<op>", "params": {...}}
Response: {"v": 1, "id": "<request id>", "ok": true, "result": {...}}
      or  {"v": 1, "id": "<request id>", "ok": false, "error": {"code": "...", "message": "..."}}

Binary values travel as base64 strings. The length prefix is checked against a hard
cap before a single byte of the body is read, so an oversized frame costs the reader
four bytes, not the frame.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

from enclave_app import strict_json
from enclave_app.errors import EnclaveError, ErrorCode

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
MAX_REQUEST_ID_CHARS = 64
MAX_OP_CHARS = 64


@dataclass(frozen=True)
class Request:
    request_id: str
    op: str
    params: dict[str, Any]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise EnclaveError(ErrorCode.BAD_FRAME, "connection closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes | None:
    """Read one frame body; None on a clean end of stream before a header."""
    first = sock.recv(HEADER.size)
    if not first:
        return None
    header = (
        first if len(first) == HEADER.size else first + _recv_exact(sock, HEADER.size - len(first))
    )
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise EnclaveError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes exceeds the cap of {max_bytes}"
        )
    if length == 0:
        raise EnclaveError(ErrorCode.BAD_FRAME, "empty frame")
    return _recv_exact(sock, length)


def write_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(HEADER.pack(len(body)) + body)


#: json.dumps with these options, built once (dumps builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def encode(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message).encode()


def decode_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object strictly (see strict_json: depth, floats, duplicates)."""
    try:
        message = strict_json.loads(body)
    except strict_json.StrictJsonError as exc:
        raise EnclaveError(ErrorCode.BAD_FRAME, f"frame is not strict JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise EnclaveError(ErrorCode.BAD_FRAME, "frame must hold a JSON object")
    return message


def parse_request(body: bytes) -> Request:
    message = decode_object(body)
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise EnclaveError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})",
        )
    request_id = message.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
        raise EnclaveError(ErrorCode.BAD_FRAME, "id must be a string of 1 to 64 characters")
    op = message.get("op")
    if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_CHARS:
        raise EnclaveError(ErrorCode.BAD_FRAME, "op must be a string of 1 to 64 characters")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise EnclaveError(ErrorCode.BAD_FRAME, "params must be an object")
    return Request(request_id=request_id, op=op, params=params)


def request_frame(request: Request) -> bytes:
    return encode(
        {
            "v": PROTOCOL_VERSION,
            "id": request.request_id,
            "op": request.op,
            "params": request.params,
        }
    )


def ok_frame(request_id: str, result: dict[str, Any]) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def error_frame(request_id: str | None, error: EnclaveError) -> bytes:
    return encode(
        {
            "v": PROTOCOL_VERSION,
            "id": request_id,
            "ok": False,
            "error": {"code": str(error.code), "message": error.message},
        }
    )


def parse_response(body: bytes, expected_id: str) -> dict[str, Any]:
    """Return the result of a response frame, or raise the EnclaveError it carries."""
    return response_result(decode_object(body), expected_id)


def response_result(message: dict[str, Any], expected_id: str) -> dict[str, Any]:
    """``parse_response`` for a frame already decoded (each answer is parsed once)."""
    if message.get("v") != PROTOCOL_VERSION:
        raise EnclaveError(ErrorCode.UNSUPPORTED_VERSION, "enclave answered with another version")
    if message.get("ok") is True:
        if message.get("id") != expected_id:
            raise EnclaveError(ErrorCode.BAD_FRAME, "response id does not match the request")
        result = message.get("result")
        if not isinstance(result, dict):
            raise EnclaveError(ErrorCode.BAD_FRAME, "response result must be an object")
        return result
    error = message.get("error")
    if not isinstance(error, dict):
        raise EnclaveError(ErrorCode.BAD_FRAME, "error response without an error object")
    raw_code = error.get("code")
    try:
        code = ErrorCode(raw_code) if isinstance(raw_code, str) else ErrorCode.INTERNAL
    except ValueError:
        code = ErrorCode.INTERNAL
    text = error.get("message")
    raise EnclaveError(code, text if isinstance(text, str) else "enclave error")
