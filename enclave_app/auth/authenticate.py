"""The one entry point the enclave's ops call to learn who is asking and what they may
ask: the ``auth`` param of every signing op, ``sign_batch`` and ``generate_account``.

``auth`` (built by the relay from the HTTP request)::

    {"request":   {"method": "POST", "path": "/v1/...", "body": "<exact body text>"},
     "stamp":     "<X-Stamp value>"                          # a client-signed request, or
     "relay":     {"principal": "<name>", "scopes": [...]},  # a relay-asserted identity
     "approvals": "<X-Approvals value>"}                     # optional

Exactly one of ``stamp`` and ``relay``. ``request`` is required with a stamp or with
approvals (they sign it), optional otherwise. Whenever ``request`` is given, every op
item must be one of its intents (``enclave_app.auth.intents``): a relay that alters the
body, the path (and so the account) or the stamp is refused.

A relay-asserted identity is only the relay's word: the policy decides what it gets
(``enclave_app.policy``), and its scopes can only narrow what the policy grants.

The result holds claims on the replay memory. On success they stay (the stamp and the
approvals are spent); ``release()`` gives them back when the request fails before
anything was signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enclave_app.auth import canonical, intents
from enclave_app.auth.approvals import ApprovalVerifier, VerifiedApprovals
from enclave_app.auth.keys import ApproverKeyEntry, StampKeyEntry
from enclave_app.auth.stamps import StampVerifier, VerifiedStamp
from enclave_app.errors import EnclaveError, ErrorCode, invalid

__all__ = ["SCOPES", "AuthResult", "Authenticator", "HttpRequest"]

SCOPES = frozenset({"create", "sign", "read"})
MAX_BODY_CHARS = 1 << 20
_AUTH_FIELDS = frozenset({"request", "stamp", "relay", "approvals"})


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    body: bytes
    digest: bytes


@dataclass
class AuthResult:
    principal_kind: str  # "stamp" | "relay"
    principal_id: str
    scopes: frozenset[str]  # a stamp key's registered scopes, or the relay's assertion
    account_bound: bool
    approvers: frozenset[str]
    request_digest: bytes | None
    _stamp: VerifiedStamp | None = field(default=None, repr=False)
    _approvals: VerifiedApprovals | None = field(default=None, repr=False)
    _authenticator: Authenticator | None = field(default=None, repr=False)

    def release(self) -> None:
        """Give the stamp and approvals back: the request failed before any signature."""
        if self._authenticator is not None:
            self._authenticator.release(self)
            self._authenticator = None


class Authenticator:
    def __init__(self, stamps: StampVerifier, approvals: ApprovalVerifier) -> None:
        self._stamps = stamps
        self._approvals = approvals

    def authenticate(
        self,
        auth: object,
        items: Sequence[intents.OpItem],
        *,
        stamp_keys: Mapping[str, StampKeyEntry],
        approvers: Mapping[str, ApproverKeyEntry],
        account_keys: Mapping[str, StampKeyEntry] | None = None,
    ) -> AuthResult:
        if auth is None:
            raise EnclaveError(
                ErrorCode.UNAUTHENTICATED, "auth is required: a stamp or a relay identity"
            )
        if not isinstance(auth, dict):
            raise invalid("auth must be an object")
        unknown = set(auth) - _AUTH_FIELDS
        if unknown:
            raise invalid(f"auth: unknown field(s): {', '.join(sorted(unknown))}")
        if ("stamp" in auth) == ("relay" in auth):
            raise EnclaveError(
                ErrorCode.UNAUTHENTICATED, "auth must carry exactly one of stamp and relay"
            )
        request = _request(auth.get("request"))
        if request is not None:
            intents.match_items(
                intents.parse_intents(request.method, request.path, request.body), items
            )
        elif "stamp" in auth or "approvals" in auth:
            raise invalid("auth.request is required with a stamp or approvals")

        stamp: VerifiedStamp | None = None
        if "stamp" in auth and request is not None:
            stamp = self._stamps.verify(
                auth["stamp"], request.method, request.path, request.body, stamp_keys, account_keys
            )
            kind, name, scopes, bound = "stamp", stamp.key_id, stamp.scopes, stamp.account_bound
        else:
            name, scopes = _relay_identity(auth["relay"])
            kind, bound = "relay", False

        verified: VerifiedApprovals | None = None
        if "approvals" in auth and request is not None:
            try:
                verified = self._approvals.verify(auth["approvals"], request.digest, approvers)
            except EnclaveError:
                if stamp is not None:
                    self._stamps.release(stamp)
                raise
        return AuthResult(
            principal_kind=kind,
            principal_id=name,
            scopes=scopes,
            account_bound=bound,
            approvers=verified.approvers if verified else frozenset(),
            request_digest=request.digest if request else None,
            _stamp=stamp,
            _approvals=verified,
            _authenticator=self,
        )

    def release(self, result: AuthResult) -> None:
        if result._stamp is not None:
            self._stamps.release(result._stamp)
        if result._approvals is not None:
            self._approvals.release(result._approvals)


def _request(value: object) -> HttpRequest | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"method", "path", "body"}:
        raise invalid("auth.request must be {method, path, body}")
    method, path, body = value["method"], value["path"], value["body"]
    if not isinstance(body, str) or len(body) > MAX_BODY_CHARS:
        raise invalid(f"auth.request.body must be a string of at most {MAX_BODY_CHARS} chars")
    try:
        raw = body.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("auth.request.body must be valid UTF-8 text") from None
    return HttpRequest(method, path, raw, canonical.request_digest(method, path, raw))


def _relay_identity(value: Any) -> tuple[str, frozenset[str]]:
    if not isinstance(value, dict) or set(value) != {"principal", "scopes"}:
        raise invalid("auth.relay must be {principal, scopes}")
    name, scopes = value["principal"], value["scopes"]
    if not isinstance(name, str) or not canonical.ID_RE.fullmatch(name):
        raise invalid("auth.relay.principal must match [A-Za-z0-9_-]{1,64}")
    if (
        not isinstance(scopes, list)
        or not all(isinstance(scope, str) and scope in SCOPES for scope in scopes)
        or len(set(scopes)) != len(scopes)
    ):
        raise invalid("auth.relay.scopes must be distinct scopes among create, sign, read")
    return name, frozenset(scopes)
