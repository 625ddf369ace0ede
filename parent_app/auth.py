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

The relay never logs a stamp, an approval or a token; errors name codes, not values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enclave_app.auth.canonical import APPROVALS_HEADER, STAMP_HEADER, parse_stamp
from enclave_app.auth.keys import StampKeyEntry
from enclave_app.auth.replay import ReplayMemoryFullError
from enclave_app.auth.stamps import StampVerifier
from enclave_app.errors import EnclaveError, ErrorCode
from parent_app.errors import RelayError
from parent_app.tokens import SCOPES, TokenFile

__all__ = ["AuthGrant", "RelayAuth"]

REALM = 'Bearer realm="nitro-wallet"'
#: Relay codes of this module (the enclave's pass through unchanged).
UNAUTHENTICATED = str(ErrorCode.UNAUTHENTICATED)
INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
SCOPE_DENIED = "scope_denied"
_AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class AuthGrant:
    """Who is calling. ``enclave_auth`` is the ``auth`` param for enclave ops (None for
    read-only calls, which the relay has fully checked itself)."""

    kind: str  # "stamp" | "token"
    name: str  # the token's principal, or the stamp's key id (verified here only for reads)
    enclave_auth: dict[str, Any] | None


class RelayAuth:
    def __init__(
        self,
        tokens: TokenFile | None,
        stamp_keys: Mapping[str, StampKeyEntry],
        stamps: StampVerifier,
    ) -> None:
        self._tokens = tokens
        self._stamp_keys = stamp_keys
        self._stamps = stamps

    def authenticate(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        scope: str,
    ) -> AuthGrant:
        """Authenticate one request needing ``scope``; raise a ``RelayError`` (401/403/503)."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        found = _headers(headers)
        stamp = found.get(STAMP_HEADER.lower())
        approvals = found.get(APPROVALS_HEADER.lower())
        if stamp is not None:
            return self._stamped(method, target, body, stamp, approvals, scope)
        authorization = found.get(_AUTHORIZATION)
        if authorization is not None:
            return self._bearer(method, target, body, authorization, approvals, scope)
        raise RelayError(
            401,
            UNAUTHENTICATED,
            "authentication required: send X-Stamp (a signed request) or "
            "Authorization: Bearer <token>",
            {"WWW-Authenticate": REALM},
        )

    def _stamped(
        self,
        method: str,
        target: str,
        body: bytes,
        stamp: str,
        approvals: str | None,
        scope: str,
    ) -> AuthGrant:
        if scope == "read":
            try:
                verified = self._stamps.verify(stamp, method, target, body, self._stamp_keys)
            except ReplayMemoryFullError as exc:
                raise RelayError(
                    503, exc.code, exc.message, {"Retry-After": str(exc.retry_after)}
                ) from None
            except EnclaveError as exc:
                raise RelayError(401, exc.code, exc.message, {"WWW-Authenticate": REALM}) from None
            if "read" not in verified.scopes:
                raise RelayError(403, SCOPE_DENIED, f"stamp key {verified.key_id!r} lacks read")
            return AuthGrant("stamp", verified.key_id, None)
        try:  # a malformed stamp is refused here already; its signature in the enclave
            claimed = parse_stamp(stamp).key_id
        except EnclaveError as exc:
            raise RelayError(401, exc.code, exc.message, {"WWW-Authenticate": REALM}) from None
        auth: dict[str, Any] = {"request": _request(method, target, body), "stamp": stamp}
        if approvals is not None:
            auth["approvals"] = approvals
        return AuthGrant("stamp", claimed, auth)

    def _bearer(
        self,
        method: str,
        target: str,
        body: bytes,
        authorization: str,
        approvals: str | None,
        scope: str,
    ) -> AuthGrant:
        scheme, _, token = authorization.partition(" ")
        identity = None
        if scheme.lower() == "bearer" and self._tokens is not None:
            identity = self._tokens.check(token.strip(" "))
        if identity is None:
            raise RelayError(
                401,
                INVALID_TOKEN,
                "the bearer token is not valid (unknown, revoked or malformed)",
                {"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        if scope not in identity.scopes:
            raise RelayError(
                403,
                SCOPE_DENIED,
                f"token {identity.token_id} ({identity.name}) lacks the {scope} scope",
                {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
            )
        if scope == "read":
            return AuthGrant("token", identity.name, None)
        auth: dict[str, Any] = {
            "relay": {"principal": identity.name, "scopes": sorted(identity.scopes)}
        }
        if approvals is not None:
            auth["request"] = _request(method, target, body)
            auth["approvals"] = approvals
        return AuthGrant("token", identity.name, auth)


def _headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased names; a repeated X-Stamp or Authorization is refused (which one would
    count?), repeated X-Approvals join with commas as HTTP lists do."""
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key == APPROVALS_HEADER.lower() and key in found:
            found[key] = f"{found[key]},{value}"
        elif key in (STAMP_HEADER.lower(), _AUTHORIZATION) and key in found:
            raise RelayError(400, "invalid_request", f"{name} appears more than once")
        else:
            found[key] = value
    return found


def _request(method: str, target: str, body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RelayError(400, "invalid_request", "the body must be UTF-8") from None
    return {"method": method, "path": target, "body": text}
