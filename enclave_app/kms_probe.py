"""``kms_probe``: can this image still unlock keys? One attested KMS call per pinned key.

Readiness must see what a cold unlock would see: KMS reachable, the credentials
accepted, the key enabled, and the key policy still allowing this image's attestation.
GenerateRandom would not do (no key, so no key policy); Decrypt needs a ciphertext. The
probe is an attested ``GenerateDataKey`` on each pinned key, exactly as account creation
makes it (Recipient = this enclave's attestation), with the EncryptionContext of the
nil account id, which no stored record uses. The data key is unwrapped, so the whole
path (NSM, recipient key, CMS) is exercised, and then dropped; its ciphertext is
never stored anywhere.

Times in the answer are integer milliseconds (``checked_at_ms`` and ``last_ok_at_ms``
on the enclave's wall clock, ``age_ms``, ``interval_ms``, each key's ``ms``): the wire
protocol carries no floats.

The answer is reused for ``interval`` seconds (enclave.toml ``kms.probe_interval_seconds``),
whoever asks and however often: a busy relay cannot turn probes into KMS load. One
probe runs at a time; while it runs, callers get the previous answer (or, before the
first one, wait for it).

Statuses (:class:`ProbeStatus`) are stable: the relay maps them to readiness and
metrics, so never rename one, only add. The answer's ``status`` is ``ok`` when every
pinned key answered ok, else the status of the first key that did not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from enclave_app import envelope
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.kms import AttestedKms, AwsCredentials, KmsCallError

__all__ = ["NIL_ACCOUNT_ID", "KmsProber", "ProbeStatus"]

#: The probe's data key is bound to this account id, which no account has.
NIL_ACCOUNT_ID = "00000000-0000-0000-0000-000000000000"


class ProbeStatus(StrEnum):
    OK = "ok"
    #: AccessDeniedException: the key policy does not allow this image (or this role).
    ATTESTATION_DENIED = "attestation_denied"
    #: The key is disabled (DisabledException).
    KEY_DISABLED = "key_disabled"
    #: The key is pending deletion or otherwise unusable (KMSInvalidStateException,
    #: KeyUnavailableException).
    KEY_UNUSABLE = "key_unusable"
    #: No such key in this region (NotFoundException): e.g. no replica here yet.
    KEY_NOT_FOUND = "key_not_found"
    #: KMS refused the request's signature or credentials (expired, unknown, malformed).
    CREDENTIALS_REJECTED = "credentials_rejected"
    #: KMS throttled the request.
    THROTTLED = "throttled"
    #: KMS could not be reached, timed out, or failed on its side.
    KMS_UNAVAILABLE = "kms_unavailable"
    #: KMS answered something this enclave cannot use (no key, wrong key, bad envelope).
    KMS_BAD_RESPONSE = "kms_bad_response"
    #: The NSM did not attest.
    NSM_UNAVAILABLE = "nsm_unavailable"
    #: Every KMS call slot stayed busy for the KMS timeout.
    BUSY = "busy"
    #: Anything else (details stay in the enclave).
    INTERNAL_ERROR = "internal_error"


_BY_KMS_OUTCOME = {
    "AccessDeniedException": ProbeStatus.ATTESTATION_DENIED,
    "DisabledException": ProbeStatus.KEY_DISABLED,
    "KMSInvalidStateException": ProbeStatus.KEY_UNUSABLE,
    "KeyUnavailableException": ProbeStatus.KEY_UNUSABLE,
    "NotFoundException": ProbeStatus.KEY_NOT_FOUND,
    "UnrecognizedClientException": ProbeStatus.CREDENTIALS_REJECTED,
    "InvalidSignatureException": ProbeStatus.CREDENTIALS_REJECTED,
    "ExpiredTokenException": ProbeStatus.CREDENTIALS_REJECTED,
    "IncompleteSignatureException": ProbeStatus.CREDENTIALS_REJECTED,
    "InvalidClientTokenId": ProbeStatus.CREDENTIALS_REJECTED,
    "MissingAuthenticationTokenException": ProbeStatus.CREDENTIALS_REJECTED,
    "ThrottlingException": ProbeStatus.THROTTLED,
    "LimitExceededException": ProbeStatus.THROTTLED,
}
_BY_ERROR_CODE = {
    ErrorCode.KMS_BAD_RESPONSE: ProbeStatus.KMS_BAD_RESPONSE,
    ErrorCode.NSM_UNAVAILABLE: ProbeStatus.NSM_UNAVAILABLE,
    ErrorCode.SERVER_BUSY: ProbeStatus.BUSY,
    ErrorCode.KMS_ATTESTATION_DENIED: ProbeStatus.ATTESTATION_DENIED,
    ErrorCode.KMS_UNAVAILABLE: ProbeStatus.KMS_UNAVAILABLE,
}


def status_of(error: EnclaveError) -> ProbeStatus:
    """The probe status of a failed attested call."""
    if isinstance(error, KmsCallError) and error.outcome in _BY_KMS_OUTCOME:
        return _BY_KMS_OUTCOME[error.outcome]
    return _BY_ERROR_CODE.get(error.code, ProbeStatus.INTERNAL_ERROR)


@dataclass(frozen=True)
class KeyProbe:
    key_id: str
    status: ProbeStatus
    message: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "status": str(self.status),
            "message": self.message,
            "ms": _ms(self.seconds),
        }


@dataclass(frozen=True)
class ProbeRun:
    keys: tuple[KeyProbe, ...]
    checked_at: float  # wall clock, when the run finished
    finished: float  # monotonic

    @property
    def status(self) -> ProbeStatus:
        """``ok`` when every key is; else the first failing key's status."""
        failing = (key.status for key in self.keys if key.status != ProbeStatus.OK)
        return next(failing, ProbeStatus.OK)


class KmsProber:
    def __init__(
        self,
        kms: AttestedKms,
        interval_seconds: float,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("the probe interval must be positive")
        self._kms = kms
        self._interval = interval_seconds
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._running = threading.Lock()  # held by the one probe in progress
        self._state = threading.Lock()  # guards the fields below
        self._last: ProbeRun | None = None
        self._last_ok_at: float | None = None

    def probe(self, credentials: AwsCredentials) -> dict[str, Any]:
        """The current answer: a new probe if the last is older than the interval."""
        if self._stale() and self._running.acquire(blocking=self._last is None):
            try:
                if self._stale():  # another caller may have just finished one
                    self._store(self._run(credentials))
            finally:
                self._running.release()
        report = self.report()
        if report is None:  # the first probe always stores a run before releasing
            raise EnclaveError(ErrorCode.INTERNAL, "no KMS probe result")
        return report

    def report(self) -> dict[str, Any] | None:
        """The last answer without probing (None before the first probe)."""
        with self._state:
            last, last_ok_at = self._last, self._last_ok_at
        if last is None:
            return None
        return {
            "status": str(last.status),
            "region": self._kms.region,
            "keys": [key.to_json() for key in last.keys],
            "checked_at_ms": _ms(last.checked_at),
            "age_ms": _ms(self._monotonic() - last.finished),
            "interval_ms": _ms(self._interval),
            "last_ok_at_ms": None if last_ok_at is None else _ms(last_ok_at),
        }

    def _stale(self) -> bool:
        with self._state:
            last = self._last
        return last is None or self._monotonic() - last.finished >= self._interval

    def _store(self, run: ProbeRun) -> None:
        with self._state:
            self._last = run
            if run.status == ProbeStatus.OK:
                self._last_ok_at = run.checked_at

    def _run(self, credentials: AwsCredentials) -> ProbeRun:
        keys = tuple(self._probe_key(key_id, credentials) for key_id in self._kms.key_ids)
        return ProbeRun(keys, self._wall_clock(), self._monotonic())

    def _probe_key(self, key_id: str, credentials: AwsCredentials) -> KeyProbe:
        started = self._monotonic()
        context = envelope.encryption_context(NIL_ACCOUNT_ID)
        try:
            self._kms.generate_data_key(key_id, context, credentials)  # dropped at once
        except EnclaveError as exc:
            status, message = status_of(exc), exc.message
        except Exception as exc:  # a probe reports; it never takes the op down
            status, message = ProbeStatus.INTERNAL_ERROR, type(exc).__name__
        else:
            status, message = ProbeStatus.OK, "attested GenerateDataKey succeeded"
        return KeyProbe(key_id, status, message, self._monotonic() - started)


def _ms(seconds: float) -> int:
    """Times travel as integer milliseconds (the wire protocol carries no floats)."""
    return round(seconds * 1000)
