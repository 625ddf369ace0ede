"""Client side of the parent <-> enclave protocol: one framed request per connection.

Framing and message shapes come from ``enclave_app.wire`` and addressing from
``enclave_app.transport``; this module only adds the connection policy (timeout,
caps) and sorts failures into three kinds:

- the enclave answered an error frame -> ``EnclaveError`` with the enclave's code;
- the enclave could not be reached or did not answer in time -> ``EnclaveUnavailable``;
- the enclave answered something that breaks the protocol -> ``EnclaveBadResponse``.
"""

from __future__ import annotations

import secrets
from typing import Any

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport
from parent_app.errors import EnclaveBadResponse, EnclaveUnavailable, RelayError


class EnclaveClient:
    def __init__(
        self,
        transport: Transport,
        cid: int,
        port: int,
        timeout: float,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.transport = transport
        self.cid = cid
        self.port = port
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes

    def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send ``op`` and return its result; raise the enclave's ``EnclaveError`` or a
        ``RelayError`` (``EnclaveUnavailable`` / ``EnclaveBadResponse`` / frame too large)."""
        request_id = secrets.token_hex(16)
        body = wire.request_frame(wire.Request(request_id=request_id, op=op, params=params))
        if len(body) > self.max_frame_bytes:
            raise RelayError(
                413,
                str(ErrorCode.FRAME_TOO_LARGE),
                f"request of {len(body)} bytes exceeds the enclave frame cap of "
                f"{self.max_frame_bytes}",
            )
        answer = self._exchange(body)
        try:
            message = wire.decode_object(answer)
        except EnclaveError as exc:
            raise EnclaveBadResponse(
                f"enclave answer is not a protocol frame: {exc.message}"
            ) from None
        try:
            return wire.parse_response(answer, request_id)
        except EnclaveError as exc:
            if message.get("ok") is False and isinstance(message.get("error"), dict):
                raise  # an error the enclave reported: its code stands
            raise EnclaveBadResponse(f"enclave answer breaks the protocol: {exc.message}") from None

    def _exchange(self, body: bytes) -> bytes:
        try:
            sock = self.transport.connect(self.cid, self.port, self.timeout)
        except TimeoutError:
            raise EnclaveUnavailable("timed out connecting to the enclave") from None
        except (OSError, ValueError) as exc:
            raise EnclaveUnavailable(f"cannot connect to the enclave ({_reason(exc)})") from None
        with sock:
            try:
                wire.write_frame(sock, body)
                answer = wire.read_frame(sock, self.max_frame_bytes)
            except TimeoutError:
                raise EnclaveUnavailable("the enclave did not answer in time") from None
            except OSError as exc:
                raise EnclaveUnavailable(f"enclave connection failed ({_reason(exc)})") from None
            except EnclaveError as exc:
                if exc.code == ErrorCode.BAD_FRAME:  # closed mid-frame
                    raise EnclaveUnavailable(
                        "the enclave closed the connection mid-answer"
                    ) from None
                raise EnclaveBadResponse(f"enclave answer refused: {exc.message}") from None
        if answer is None:
            raise EnclaveUnavailable("the enclave closed the connection without answering")
        return answer


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
