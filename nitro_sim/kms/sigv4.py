"""Verify AWS Signature Version 4 on an incoming request (server side, stdlib only).

The request's own `X-Amz-Date` and signed header list are used to recompute the
signature with the principal's secret; the comparison is constant-time. Requests must
sign `host`, `x-amz-date` and `x-amz-target` (botocore signs all three), must use the
server's region and service in the credential scope, and must be within 15 minutes of
the server clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nitro_sim.principals import Principal, Principals

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)
REQUIRED_SIGNED_HEADERS = ("host", "x-amz-date", "x-amz-target")
_AUTH_RE = re.compile(
    r"\AAWS4-HMAC-SHA256 +Credential=([^,\s]+), *SignedHeaders=([a-z0-9;._-]+), *"
    r"Signature=([0-9a-f]{64})\Z"
)
_SPACES = re.compile(r"\s+")


class AuthError(Exception):
    """Authentication failed; `code` is the AWS error type returned to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedRequest:
    method: str
    path: str  # raw request target, including any query string
    headers: Mapping[str, str]  # lowercased names
    body: bytes


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    encoded = [
        (urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~")) for k, v in pairs
    ]
    return "&".join(f"{k}={v}" for k, v in sorted(encoded))


def _canonical_request(request: SignedRequest, signed_headers: list[str]) -> str:
    path, _, query = request.path.partition("?")
    canonical_headers = "".join(
        f"{name}:{_SPACES.sub(' ', request.headers[name].strip())}\n" for name in signed_headers
    )
    return "\n".join(
        [
            request.method,
            urllib.parse.quote(urllib.parse.unquote(path) or "/", safe="/-_.~"),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            hashlib.sha256(request.body).hexdigest(),
        ]
    )


def signature_for(
    request: SignedRequest,
    secret: str,
    amz_date: str,
    scope: str,
    signed_headers: list[str],
) -> str:
    date, region, service, terminator = scope.split("/")
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            amz_date,
            scope,
            hashlib.sha256(_canonical_request(request, signed_headers).encode("utf-8")).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    for part in (region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authenticate(
    request: SignedRequest,
    principals: Principals,
    *,
    service: str,
    region: str | None = None,
    now: datetime | None = None,
) -> Principal:
    """Return the principal that signed `request` for ``region`` (default: the account's
    home region; a regional endpoint passes its own), or raise AuthError."""
    region_expected = region or principals.region
    header = request.headers.get("authorization")
    if header is None:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH_RE.match(header.strip())
    if match is None:
        raise AuthError("IncompleteSignatureException", "Authorization header is malformed")
    credential, signed, signature = match.groups()
    parts = credential.split("/")
    if len(parts) != 5:
        raise AuthError("IncompleteSignatureException", "Credential is malformed")
    access_key_id, date, region, scope_service, terminator = parts
    principal = principals.by_access_key(access_key_id)
    if principal is None:
        raise AuthError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    signed_headers = signed.split(";")
    _check_signed_headers(request, signed_headers)

    amz_date = request.headers["x-amz-date"].strip()
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError("IncompleteSignatureException", "X-Amz-Date is malformed") from None
    current = now or datetime.now(UTC)
    if abs(current - signed_at) > MAX_SKEW:
        raise AuthError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is outside 15 minutes of the server time "
            f"({current.strftime('%Y%m%dT%H%M%SZ')}).",
        )
    if date != amz_date[:8] or terminator != "aws4_request":
        raise AuthError("InvalidSignatureException", "Credential scope date or terminator is wrong")
    if region != region_expected or scope_service != service:
        raise AuthError(
            "InvalidSignatureException",
            f"Credential should be scoped to region {region_expected!r} and service {service!r}.",
        )

    scope = "/".join(parts[1:])
    expected = signature_for(request, principal.secret_access_key, amz_date, scope, signed_headers)
    if not hmac.compare_digest(expected, signature):
        raise AuthError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )

    _check_session_token(request, principal, signed_headers)
    return principal


def _check_session_token(
    request: SignedRequest, principal: Principal, signed_headers: list[str]
) -> None:
    sent = request.headers.get("x-amz-security-token")
    if principal.session_token is None:
        ok = sent is None
    else:
        ok = (
            sent is not None
            and "x-amz-security-token" in signed_headers
            and hmac.compare_digest(sent.encode("utf-8"), principal.session_token.encode("utf-8"))
        )
    if not ok:
        raise AuthError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )


def _check_signed_headers(request: SignedRequest, signed_headers: list[str]) -> None:
    if signed_headers != sorted(set(signed_headers)):
        raise AuthError("IncompleteSignatureException", "SignedHeaders must be sorted and unique")
    missing = [h for h in REQUIRED_SIGNED_HEADERS if h not in signed_headers]
    absent = [h for h in signed_headers if h not in request.headers]
    if missing or absent:
        raise AuthError(
            "IncompleteSignatureException",
            f"Signed headers missing or not sent: {', '.join(missing + absent)}",
        )
