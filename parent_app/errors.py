"""Relay errors: one type carrying an HTTP status and a stable code.

Codes are part of the HTTP API: never rename one, only add. Messages are shown to
the caller and may be logged: they must never carry credentials or key material.
The enclave's own codes (``enclave_app.errors.ErrorCode``) pass through unchanged,
with the HTTP status given by ``ENCLAVE_STATUS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from enclave_app.errors import EnclaveError, ErrorCode


class RelayCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    ACCOUNT_NOT_FOUND = "account_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_IMPLEMENTED = "not_implemented"
    LENGTH_REQUIRED = "length_required"
    REQUEST_TIMEOUT = "request_timeout"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    ACCOUNT_EXISTS = "account_exists"
    SERVER_BUSY = "server_busy"
    DRAINING = "draining"
    ENCLAVE_UNAVAILABLE = "enclave_unavailable"
    ENCLAVE_BAD_RESPONSE = "enclave_bad_response"
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    STORAGE_ERROR = "storage_error"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL_ERROR = "internal_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_REJECTED = "upstream_rejected"
    BATCH_TOO_LARGE = "batch_too_large"


class RelayError(Exception):
    """An error answered to the HTTP caller as ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class EnclaveUnavailable(RelayError):  # noqa: N818 (API name)
    """The enclave could not be reached, or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(503, RelayCode.ENCLAVE_UNAVAILABLE, message)


class EnclaveBadResponse(RelayError):  # noqa: N818 (API name)
    """The enclave answered something that breaks the protocol or the op's contract."""

    def __init__(self, message: str) -> None:
        super().__init__(502, RelayCode.ENCLAVE_BAD_RESPONSE, message)


class CredentialsUnavailable(RelayError):  # noqa: N818 (API name)
    """No valid role credentials could be obtained from IMDS."""

    def __init__(self, message: str) -> None:
        super().__init__(503, RelayCode.CREDENTIALS_UNAVAILABLE, message)


class StorageError(RelayError):
    """The account store failed (I/O, corruption, unsupported schema)."""

    def __init__(self, message: str) -> None:
        super().__init__(500, RelayCode.STORAGE_ERROR, message)


class StorageUnavailable(RelayError):  # noqa: N818 (API name)
    """The account store cannot be used right now (I/O error, full disk, read-only or
    immutable file, lock timeout); nothing was written, retrying later may succeed."""

    #: Seconds a client should wait: storage faults need an operator, not a hot loop.
    RETRY_AFTER_SECONDS = 5

    def __init__(self, message: str) -> None:
        super().__init__(
            503,
            RelayCode.STORAGE_UNAVAILABLE,
            message,
            {"Retry-After": str(self.RETRY_AFTER_SECONDS)},
        )


class AccountExists(RelayError):  # noqa: N818 (API name)
    """An account with this id or address is already stored: never overwritten."""

    def __init__(self, message: str) -> None:
        super().__init__(409, RelayCode.ACCOUNT_EXISTS, message)


class AccountNotFound(RelayError):  # noqa: N818 (API name)
    def __init__(self, account_id: str) -> None:
        super().__init__(404, RelayCode.ACCOUNT_NOT_FOUND, f"account {account_id} does not exist")


def invalid_request(message: str) -> RelayError:
    return RelayError(400, RelayCode.INVALID_REQUEST, message)


def server_busy(message: str, retry_after_seconds: int = 1) -> RelayError:
    """Overload: a 503 the caller retries after ``Retry-After`` seconds."""
    return RelayError(
        503, RelayCode.SERVER_BUSY, message, {"Retry-After": str(retry_after_seconds)}
    )


def internal_error() -> RelayError:
    """The answer to anything unexpected: the details stay in the server log."""
    return RelayError(500, RelayCode.INTERNAL_ERROR, "internal error")


ENCLAVE_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.SIGNING_POLICY_VIOLATION: 403,
    ErrorCode.KMS_ATTESTATION_DENIED: 403,
    # The signing policy (the message names the deciding rule).
    ErrorCode.POLICY_DENIED: 403,
    ErrorCode.APPROVALS_REQUIRED: 403,
    ErrorCode.SCOPE_DENIED: 403,
    ErrorCode.PRINCIPAL_UNKNOWN: 403,
    ErrorCode.VELOCITY_EXCEEDED: 429,
    ErrorCode.KMS_UNAVAILABLE: 503,
    ErrorCode.NSM_UNAVAILABLE: 503,
    ErrorCode.SERVER_BUSY: 503,
    # KMS answered, whole and well-formed, something wrong (a cut or malformed answer is
    # kms_unavailable): an upstream's bad answer, as enclave_bad_response is.
    ErrorCode.KMS_BAD_RESPONSE: 502,
    # Caller authentication and approvals (enclave_app.auth): the enclave's verdicts.
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.STAMP_MALFORMED: 401,
    ErrorCode.STAMP_KEY_UNKNOWN: 401,
    ErrorCode.STAMP_EXPIRED: 401,
    ErrorCode.STAMP_SIGNATURE_INVALID: 401,
    ErrorCode.STAMP_REPLAYED: 401,
    ErrorCode.REQUEST_MISMATCH: 403,
    ErrorCode.APPROVAL_MALFORMED: 403,
    ErrorCode.APPROVAL_UNKNOWN_APPROVER: 403,
    ErrorCode.APPROVAL_SIGNATURE_INVALID: 403,
    ErrorCode.APPROVAL_EXPIRED: 403,
    ErrorCode.APPROVAL_DUPLICATE: 403,
    ErrorCode.APPROVAL_REPLAYED: 403,
    # The enclave refuses rather than weaken a guarantee: retry later.
    ErrorCode.REPLAY_MEMORY_FULL: 503,
    ErrorCode.AUDIT_BACKLOG_FULL: 503,
    ErrorCode.ENTROPY_UNAVAILABLE: 503,
    ErrorCode.CIPHERTEXT_INVALID: 500,
    ErrorCode.ADDRESS_MISMATCH: 500,
    ErrorCode.KMS_KEY_NOT_ALLOWED: 500,
    ErrorCode.UNSUPPORTED_VERSION: 500,
    ErrorCode.UNKNOWN_OP: 500,
    ErrorCode.INTERNAL: 500,
}


def from_enclave(error: EnclaveError) -> RelayError:
    """The HTTP form of an error the enclave reported: its code and message are kept."""
    return RelayError(ENCLAVE_STATUS.get(error.code, 500), str(error.code), error.message)


# -- JSON-RPC -----------------------------------------------------------------------
# JSON-RPC 2.0 reserves -32700..-32600; servers use -32000..-32099. The server codes
# follow EIP-1474; the stable string code travels in the error's ``data.code``.


class JsonRpcCode:
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    INVALID_INPUT = -32000
    RESOURCE_NOT_FOUND = -32001
    RESOURCE_UNAVAILABLE = -32002
    TRANSACTION_REJECTED = -32003
    LIMIT_EXCEEDED = -32005
    SERVER_ERROR = -32010


JSONRPC_SERVER_CODES: Mapping[str, int] = {
    ErrorCode.INVALID_PARAMS: JsonRpcCode.INVALID_INPUT,
    ErrorCode.BAD_FRAME: JsonRpcCode.INVALID_INPUT,
    RelayCode.INVALID_REQUEST: JsonRpcCode.INVALID_INPUT,
    RelayCode.ACCOUNT_NOT_FOUND: JsonRpcCode.RESOURCE_NOT_FOUND,
    ErrorCode.SIGNING_POLICY_VIOLATION: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.KMS_ATTESTATION_DENIED: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.POLICY_DENIED: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.APPROVALS_REQUIRED: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.SCOPE_DENIED: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.PRINCIPAL_UNKNOWN: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.VELOCITY_EXCEEDED: JsonRpcCode.LIMIT_EXCEEDED,
    ErrorCode.KMS_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    ErrorCode.NSM_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    ErrorCode.SERVER_BUSY: JsonRpcCode.RESOURCE_UNAVAILABLE,
    **dict.fromkeys(
        (
            ErrorCode.UNAUTHENTICATED,
            ErrorCode.STAMP_MALFORMED,
            ErrorCode.STAMP_KEY_UNKNOWN,
            ErrorCode.STAMP_EXPIRED,
            ErrorCode.STAMP_SIGNATURE_INVALID,
            ErrorCode.STAMP_REPLAYED,
            ErrorCode.REQUEST_MISMATCH,
            ErrorCode.APPROVAL_MALFORMED,
            ErrorCode.APPROVAL_UNKNOWN_APPROVER,
            ErrorCode.APPROVAL_SIGNATURE_INVALID,
            ErrorCode.APPROVAL_EXPIRED,
            ErrorCode.APPROVAL_DUPLICATE,
            ErrorCode.APPROVAL_REPLAYED,
        ),
        JsonRpcCode.TRANSACTION_REJECTED,
    ),
    ErrorCode.REPLAY_MEMORY_FULL: JsonRpcCode.RESOURCE_UNAVAILABLE,
    ErrorCode.AUDIT_BACKLOG_FULL: JsonRpcCode.RESOURCE_UNAVAILABLE,
    ErrorCode.ENTROPY_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.ENCLAVE_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.CREDENTIALS_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.STORAGE_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.SERVER_BUSY: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.UPSTREAM_UNAVAILABLE: JsonRpcCode.RESOURCE_UNAVAILABLE,
    RelayCode.UPSTREAM_ERROR: JsonRpcCode.INVALID_INPUT,
    RelayCode.UPSTREAM_REJECTED: JsonRpcCode.TRANSACTION_REJECTED,
    ErrorCode.FRAME_TOO_LARGE: JsonRpcCode.LIMIT_EXCEEDED,
    RelayCode.INTERNAL_ERROR: JsonRpcCode.INTERNAL_ERROR,
}


def jsonrpc_code(code: str) -> int:
    """The JSON-RPC error number for a stable relay or enclave code (-32010 otherwise)."""
    return JSONRPC_SERVER_CODES.get(code, JsonRpcCode.SERVER_ERROR)
