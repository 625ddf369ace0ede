"""Client side of stamps and approvals: key files, the ``X-Stamp`` and ``X-Approvals``
values, and an auth class for ``requests`` and ``httpx``.

A key file is a PKCS#8 PEM private key (Ed25519 or P-256) preceded by two lines of
RFC 7468 explanatory text naming the key::

    nitro-wallet-key-id: ops-1
    nitro-wallet-key-kind: api            (or: approver)
    -----BEGIN PRIVATE KEY-----
    ...

Written with mode 0600; a key file that group or others can read is refused, as ssh
does. The public half goes into the policy as PEM SubjectPublicKeyInfo.

    import requests
    from nitro_wallet.stamping import StampAuth, load_key_file

    auth = StampAuth(load_key_file(".dev-state/api-key.pem"))
    requests.post(url, data=body, headers={"Content-Type": "application/json"}, auth=auth)

``httpx`` takes the same object (``httpx.Client(auth=auth)``: a callable auth). Both
clients hand the auth the prepared request, so the stamp covers the exact bytes and the
path with query that go on the wire; a streamed body (a generator or a file) is refused.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from enclave_app.auth import canonical, signatures
from enclave_app.auth.canonical import Approval, Stamp

__all__ = [
    "ALGORITHMS",
    "KEY_KINDS",
    "KeyFile",
    "KeyFileError",
    "StampAuth",
    "generate_key",
    "load_key_file",
    "make_approval",
    "make_stamp",
    "public_key_pem",
    "write_key_file",
]

KEY_KINDS = ("api", "approver")
ALGORITHMS = ("ed25519", "p256")
_HEADER_RE = re.compile(
    r"\Anitro-wallet-key-id: (?P<id>[A-Za-z0-9_-]{1,64})\n"
    r"nitro-wallet-key-kind: (?P<kind>api|approver)\n"
)


class KeyFileError(Exception):
    """A key file is missing, unreadable, exposed or not ours."""


@dataclass(frozen=True)
class KeyFile:
    key_id: str
    kind: str
    private_key: signatures.PrivateKey

    @property
    def algorithm(self) -> str:
        return signatures.algorithm_name(self.private_key)


def generate_key(algorithm: str) -> signatures.PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")


def public_key_pem(key: signatures.PrivateKey) -> str:
    """The public key as PEM SubjectPublicKeyInfo (what the policy lists)."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def write_key_file(path: Path, key_file: KeyFile) -> None:
    """Create ``path`` (mode 0600, never overwriting) holding ``key_file``."""
    pem = key_file.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    header = f"nitro-wallet-key-id: {key_file.key_id}\nnitro-wallet-key-kind: {key_file.kind}\n"
    if not _HEADER_RE.match(header):
        raise KeyFileError("key id must match [A-Za-z0-9_-]{1,64} and kind api|approver")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(header.encode("ascii") + pem)


def load_key_file(path: str | os.PathLike[str]) -> KeyFile:
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    header = _HEADER_RE.match(text.decode("ascii", errors="replace"))
    if header is None:
        raise KeyFileError(f"{path} is not a nitro-wallet key file (no key id header)")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: keys must be Ed25519 or P-256")
    try:
        signatures.algorithm_name(key)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return KeyFile(header["id"], header["kind"], key)


def make_stamp(
    key: KeyFile,
    method: str,
    target: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: bytes | None = None,
) -> str:
    """The ``X-Stamp`` value for this exact request."""
    when = int(time.time()) if timestamp is None else timestamp
    nonce = secrets.token_bytes(canonical.NONCE_BYTES) if nonce is None else nonce
    digest = canonical.request_digest(method, target, body)
    message = canonical.stamp_message(key.key_id, when, nonce, digest)
    return canonical.format_stamp(
        Stamp(key.key_id, when, nonce, signatures.sign(key.private_key, message))
    )


def make_approval(key: KeyFile, method: str, target: str, body: bytes, expires: int) -> str:
    """One approval (an item of ``X-Approvals``) of this exact request until ``expires``."""
    digest = canonical.request_digest(method, target, body)
    message = canonical.approval_message(key.key_id, expires, digest)
    return canonical.format_approval(
        Approval(key.key_id, expires, signatures.sign(key.private_key, message))
    )


class StampAuth:
    """Adds ``X-Stamp`` to each request; works as ``auth=`` for requests and httpx."""

    def __init__(self, key: KeyFile) -> None:
        if key.kind != "api":
            raise KeyFileError(f"key {key.key_id!r} is an {key.kind} key, not an API key")
        self.key = key

    def __call__(self, request: Any) -> Any:
        method = str(request.method).upper()
        target = _target(request)
        body = _body(request)
        request.headers[canonical.STAMP_HEADER] = make_stamp(self.key, method, target, body)
        return request


def _target(request: Any) -> str:
    url = getattr(request, "url", None)
    raw_path = getattr(url, "raw_path", None)
    if isinstance(raw_path, bytes):  # httpx.URL: path and query as sent
        return raw_path.decode("ascii")
    path_url = getattr(request, "path_url", None)
    if isinstance(path_url, str):  # requests.PreparedRequest
        return path_url
    parts = urlsplit(str(url))
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _body(request: Any) -> bytes:
    content = getattr(request, "content", None)
    if isinstance(content, bytes):  # httpx.Request (read)
        return content
    body = getattr(request, "body", None)
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes):
        return body
    raise TypeError("StampAuth needs the body as bytes or str (not a stream or a file)")
