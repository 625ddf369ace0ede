"""Caller authentication at the relay: every request but /healthz, /readyz, /metrics and
/openapi.json carries a stamp (``X-Stamp``) or a bearer token (``Authorization:
Bearer``), or gets 401 with ``WWW-Authenticate``.

- Signing and account creation reach the enclave, which decides: a stamp goes to it
  untouched with the exact request (method, path and query, body text) and is verified
  there; a token is checked here and only its name and scopes go on, as a
  relay-asserted identity (``auth.relay``) that the policy trusts only as far as it says.
- Read-only calls never reach the enclave: a token needs the ``read`` scope, a stamp is
  verified here against the stamp keys of the compiled policy deployed with the relay
  (same code as the enclave's: ``enclave_app.auth.stamps``, with the relay's own replay
  memory).
- ``X-Approvals`` goes to the enclave with the request it approves.

A request is identified once (:meth:`RelayAuth.identify`: no credentials, an invalid
token or an unreadable stamp is 401 before anything runs) into a :class:`Caller`; each
operation of the request then asks it for the scope it needs (:meth:`Caller.require`,
for what the relay answers itself) or for the enclave's ``auth`` param
(:meth:`Caller.enclave_auth`). A stamp or approvals are good for one enclave op:
:attr:`Caller.one_shot` tells the request's handler so.

The relay never logs a stamp, an approval or a token; errors name codes, not values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave_app.auth.canonical import APPROVALS_HEADER, STAMP_HEADER, parse_stamp
from enclave_app.auth.keys import StampKeyEntry
from enclave_app.auth.replay import ReplayMemoryFullError
from enclave_app.auth.stamps import StampVerifier
from enclave_app.errors import EnclaveError, ErrorCode
from parent_app.errors import RelayError, invalid_request
from parent_app.tokens import SCOPES, TokenFile, TokenIdentity

__all__ = ["AuthGrant", "Caller", "RelayAuth", "has_credentials"]

REALM = 'Bearer realm="nitro-wallet"'
#: Relay codes of this module (the enclave's pass through unchanged).
UNAUTHENTICATED = str(ErrorCode.UNAUTHENTICATED)
INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
SCOPE_DENIED = "scope_denied"
_AUTHORIZATION = "authorization"
_STAMP = STAMP_HEADER.lower()
_APPROVALS = APPROVALS_HEADER.lower()
#: How a repeated header arrives (parent_app.http_envelope.header_map joins values).
_JOINED = ", "
_SINGLE_HEADERS = {_STAMP: STAMP_HEADER, _AUTHORIZATION: "Authorization"}


def has_credentials(headers: Mapping[str, str]) -> bool:
    """Whether a request (lowercase header names) carries a stamp or a token at all."""
    return _STAMP in headers or _AUTHORIZATION in headers


def unauthenticated() -> RelayError:
    return RelayError(
        401,
        UNAUTHENTICATED,
        "authentication required: send X-Stamp (a signed request) or Authorization: Bearer <token>",
        {"WWW-Authenticate": REALM},
    )


@dataclass(frozen=True)
class AuthGrant:
    """Who is calling. ``enclave_auth`` is the ``auth`` param for enclave ops (None for
    read-only calls, which the relay has fully checked itself)."""

    kind: str  # "stamp" | "token"
    name: str  # the token's principal, or the stamp's key id (verified here only for reads)
    enclave_auth: dict[str, Any] | None


@dataclass
class Caller:
    """One identified request: a valid token, or a readable stamp the enclave (or, for a
    read, this relay) still has to verify."""

    kind: str  # "stamp" | "token"
    name: str
    method: str
    target: str
    body: bytes
    verifier: RelayAuth
    stamp: str | None = None
    approvals: str | None = None
    token: TokenIdentity | None = None
    _read_checked: RelayError | bool = False

    @property
    def one_shot(self) -> bool:
        """A stamp and approvals are spent by one enclave op: the request may make one."""
        return self.stamp is not None or self.approvals is not None

    def require(self, scope: str) -> None:
        """Raise unless the caller may do what needs ``scope`` here, at the relay.

        A token needs the scope. A stamp is verified here for ``read`` (once per
        request); for ``sign`` and ``create`` the enclave verifies it, and decides.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        if self.token is not None:
            if scope not in self.token.scopes:
                raise RelayError(
                    403,
                    SCOPE_DENIED,
                    f"token {self.token.token_id} ({self.token.name}) lacks the {scope} scope",
                    {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
                )
            return
        if scope == "read":
            self._verify_read()

    def enclave_auth(self, scope: str) -> dict[str, Any]:
        """The enclave op's ``auth`` param (H5b's shape) after :meth:`require`."""
        self.require(scope)
        auth: dict[str, Any]
        if self.token is not None:
            auth = {"relay": {"principal": self.token.name, "scopes": sorted(self.token.scopes)}}
            if self.approvals is not None:
                auth["request"] = self._request()
        else:
            auth = {"request": self._request(), "stamp": self.stamp}
        if self.approvals is not None:
            auth["approvals"] = self.approvals
        return auth

    def grant(self, scope: str) -> AuthGrant:
        """What one operation needing ``scope`` gets: None as enclave auth for a read."""
        if scope == "read":
            self.require(scope)
            return AuthGrant(self.kind, self.name, None)
        return AuthGrant(self.kind, self.name, self.enclave_auth(scope))

    def _verify_read(self) -> None:
        if self._read_checked is False:  # once per request: a stamp is good for one use
            self._read_checked = self._check_read()
        if isinstance(self._read_checked, RelayError):
            raise self._read_checked

    def _check_read(self) -> RelayError | bool:
        try:
            verified = self.verifier.stamps.verify(
                self.stamp, self.method, self.target, self.body, self.verifier.stamp_keys
            )
        except ReplayMemoryFullError as exc:
            return RelayError(503, exc.code, exc.message, {"Retry-After": str(exc.retry_after)})
        except EnclaveError as exc:
            return RelayError(401, exc.code, exc.message, {"WWW-Authenticate": REALM})
        if "read" not in verified.scopes:
            return RelayError(403, SCOPE_DENIED, f"stamp key {verified.key_id!r} lacks read")
        return True

    def _request(self) -> dict[str, str]:
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_request("the body must be UTF-8") from None
        return {"method": self.method, "path": self.target, "body": text}


class RelayAuth:
    def __init__(
        self,
        tokens: TokenFile | None,
        stamp_keys: Mapping[str, StampKeyEntry],
        stamps: StampVerifier,
    ) -> None:
        self.tokens = tokens
        self.stamp_keys = stamp_keys
        self.stamps = stamps

    def identify(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Caller:
        """Who sends this request; a ``RelayError`` (401, or 400 for a repeated header)
        when nobody recognisable does. ``headers`` as ``http_envelope.header_map`` made
        them: lowercase names, a repeated header's values joined with ", " (repeated
        X-Approvals stay so: an HTTP list; a repeated X-Stamp or Authorization is
        refused, since which one would count?)."""
        for key, name in _SINGLE_HEADERS.items():
            if _JOINED in headers.get(key, ""):
                raise invalid_request(f"{name} appears more than once")
        stamp = headers.get(_STAMP)
        approvals = headers.get(_APPROVALS)
        if stamp is not None:
            try:  # a malformed stamp is refused here already; its signature later
                claimed = parse_stamp(stamp).key_id
            except EnclaveError as exc:
                raise RelayError(401, exc.code, exc.message, {"WWW-Authenticate": REALM}) from None
            return Caller("stamp", claimed, method, target, body, self, stamp, approvals)
        authorization = headers.get(_AUTHORIZATION)
        if authorization is None:
            raise unauthenticated()
        scheme, _, token = authorization.partition(" ")
        identity = None
        if scheme.lower() == "bearer" and self.tokens is not None:
            identity = self.tokens.check(token.strip(" "))
        if identity is None:
            raise RelayError(
                401,
                INVALID_TOKEN,
                "the bearer token is not valid (unknown, revoked or malformed)",
                {"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        return Caller("token", identity.name, method, target, body, self, None, approvals, identity)

    def authenticate(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        scope: str,
    ) -> AuthGrant:
        """Identify the request and grant it one operation needing ``scope``."""
        return self.identify(method, target, headers, body).grant(scope)
