"""Role credentials from IMDSv2, through botocore's own metadata fetcher.

The relay passes these to the enclave with each request that reaches KMS. They are
secrets: ``Credentials.__repr__`` hides them, nothing here logs them, and botocore's
metadata logger (which logs response bodies at DEBUG) is held at WARNING by the relay.
IMDSv1 is disabled: without a session token the fetch fails instead of falling back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError
from botocore.utils import InstanceMetadataFetcher

from parent_app import loop_bridge
from parent_app.errors import CredentialsUnavailable

log = logging.getLogger(__name__)

# Refresh this long before expiry; IMDS itself rotates credentials ~5 minutes before.
REFRESH_MARGIN_SECONDS = 300.0
# With no usable expiry (should not happen), refetch this often.
FALLBACK_LIFETIME_SECONDS = 300.0
# After a failed refresh, wait this long before asking IMDS again (while still valid).
RETRY_AFTER_FAILURE_SECONDS = 5.0


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={self.access_key_id!r}, "
            "secret_access_key=***, session_token=***)"
        )

    __str__ = __repr__

    def to_params(self) -> dict[str, str | None]:
        """The ``credentials`` object of the enclave protocol."""
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
        }


class CredentialSource(Protocol):
    def get(self) -> Credentials:
        """Current credentials, or ``CredentialsUnavailable``."""


class ImdsCredentialSource:
    """Instance-role credentials from IMDSv2, cached and refreshed before they expire.

    Thread-safe: one fetch at a time; callers during a refresh wait for it. When a
    refresh fails while the cached credentials are still valid, they keep being used.
    """

    def __init__(self, endpoint: str, timeout: float, clock: Any = time.time) -> None:
        self._fetcher = InstanceMetadataFetcher(
            timeout=timeout,  # type: ignore[arg-type]  # urllib3 takes float seconds
            num_attempts=1,
            base_url=endpoint,
            env={},
            config={"ec2_metadata_v1_disabled": True},
        )
        self._clock = clock
        self._lock = threading.Lock()
        #: The cached credentials and when they expire, replaced as one value so the
        #: lock-free read in ``get`` never pairs one fetch's credentials with another's
        #: expiry.
        self._cached: tuple[Credentials, float] | None = None
        self._next_attempt = 0.0

    def get(self) -> Credentials:
        cached = self._cached
        if cached is not None and self._clock() < cached[1] - REFRESH_MARGIN_SECONDS:
            return cached[0]  # the common case: no lock, no wait
        # A refresh may wait on IMDS: a handler on the event loop waits on the pool.
        return loop_bridge.off_loop(self._refresh)

    def _refresh(self) -> Credentials:
        with self._lock:
            now = self._clock()
            cached = self._cached
            if cached is not None and now < cached[1] - REFRESH_MARGIN_SECONDS:
                return cached[0]  # another caller refreshed while this one waited
            if cached is not None and now < cached[1] and now < self._next_attempt:
                return cached[0]
            try:
                fresh, expires_at = self._fetch()
            except CredentialsUnavailable:
                if cached is not None and now < cached[1]:
                    self._next_attempt = now + RETRY_AFTER_FAILURE_SECONDS
                    log.warning("IMDS credential refresh failed; using the cached credentials")
                    return cached[0]
                self._cached = None
                raise
            self._cached = (fresh, expires_at)
            return fresh

    def _fetch(self) -> tuple[Credentials, float]:
        try:
            data = self._fetcher.retrieve_iam_role_credentials()
        except (BotoCoreError, OSError, ValueError) as exc:
            # Messages of these errors carry no response bodies; keep only the type.
            raise CredentialsUnavailable(
                f"cannot obtain role credentials from IMDS ({type(exc).__name__})"
            ) from None
        if not data:
            raise CredentialsUnavailable("cannot obtain role credentials from IMDS")
        access_key, secret_key = data.get("access_key"), data.get("secret_key")
        token = data.get("token")
        if not (
            isinstance(access_key, str)
            and access_key
            and isinstance(secret_key, str)
            and secret_key
            and (token is None or isinstance(token, str))
        ):
            raise CredentialsUnavailable("IMDS returned malformed role credentials")
        expires_at = _expiry(data.get("expiry_time"), self._clock())
        if expires_at <= self._clock():
            raise CredentialsUnavailable("IMDS returned expired role credentials")
        return Credentials(access_key, secret_key, token or None), expires_at


def _expiry(value: Any, now: float) -> float:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return now + FALLBACK_LIFETIME_SECONDS
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return now + FALLBACK_LIFETIME_SECONDS


class StaticCredentialSource:
    """Fixed credentials (tests and tools); never used by the relay's own main()."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self) -> Credentials:
        return self._credentials
