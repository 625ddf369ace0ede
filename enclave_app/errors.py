"""Typed errors with stable codes, shared by the enclave and the parent relay.

The codes are part of the wire protocol and of the relay's HTTP API: never rename
one, only add. Messages must never carry key material or credentials.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Framing and protocol
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    INVALID_PARAMS = "invalid_params"
    # KMS and attestation
    KMS_KEY_NOT_ALLOWED = "kms_key_not_allowed"
    KMS_ATTESTATION_DENIED = "kms_attestation_denied"
    KMS_UNAVAILABLE = "kms_unavailable"
    KMS_BAD_RESPONSE = "kms_bad_response"
    NSM_UNAVAILABLE = "nsm_unavailable"
    # Key material
    CIPHERTEXT_INVALID = "ciphertext_invalid"
    ADDRESS_MISMATCH = "address_mismatch"
    # Capacity: every worker is busy; the caller retries later (the relay answers 503)
    SERVER_BUSY = "server_busy"
    # Signing
    SIGNING_POLICY_VIOLATION = "signing_policy_violation"
    # Signing policy (enclave_app.policy): the message names the deciding rule as
    # "policy rule '<name>': ...". signing_policy_violation keeps its narrower meaning:
    # a request refused by the enclave's fixed configuration (pre-EIP-155 legacy).
    POLICY_DENIED = "policy_denied"
    APPROVALS_REQUIRED = "approvals_required"
    VELOCITY_EXCEEDED = "velocity_exceeded"
    SCOPE_DENIED = "scope_denied"
    PRINCIPAL_UNKNOWN = "principal_unknown"
    # Caller authentication, approvals, audit, entropy (enclave_app.auth)
    UNAUTHENTICATED = "unauthenticated"
    STAMP_MALFORMED = "stamp_malformed"
    STAMP_KEY_UNKNOWN = "stamp_key_unknown"
    STAMP_EXPIRED = "stamp_expired"
    STAMP_SIGNATURE_INVALID = "stamp_signature_invalid"
    STAMP_REPLAYED = "stamp_replayed"
    REQUEST_MISMATCH = "request_mismatch"
    REPLAY_MEMORY_FULL = "replay_memory_full"
    APPROVAL_MALFORMED = "approval_malformed"
    APPROVAL_UNKNOWN_APPROVER = "approval_unknown_approver"
    APPROVAL_SIGNATURE_INVALID = "approval_signature_invalid"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVAL_DUPLICATE = "approval_duplicate"
    APPROVAL_REPLAYED = "approval_replayed"
    AUDIT_BACKLOG_FULL = "audit_backlog_full"
    ENTROPY_UNAVAILABLE = "entropy_unavailable"
    # Anything unexpected: details stay in the enclave.
    INTERNAL = "internal_error"


class EnclaveError(Exception):
    """An error the enclave reports to its caller with a stable code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def invalid(message: str) -> EnclaveError:
    """Shorthand for the most common error: a field failed validation."""
    return EnclaveError(ErrorCode.INVALID_PARAMS, message)
