"""Bearer tokens for clients that cannot stamp (ethers, viem, cast, web3.py).

A token is ``nwt_<id>_<secret>``: ``id`` 12 hex digits (public, for lookup), ``secret``
32 random bytes in base64url. The token file holds only SHA-256 digests of whole
tokens (a 256-bit random secret needs no slow hash: there is nothing to brute-force),
the principal name the token stands for, and its scopes::

    {"version": 1, "tokens": [{"id": "...", "name": "ci-bot", "scopes": ["read", "sign"],
                               "sha256": "<hex>", "created": "2026-11-30T12:00:00Z"}]}

The relay reads the file and re-reads it when it changes (checked at most once a
second), so ``nitro-wallet token revoke`` takes effect without a restart. A file that
turns unreadable or invalid refuses every token until it is fixed (fail closed).
Comparison is constant-time. The relay checks a token; the enclave only ever hears the
name, as a relay-asserted identity, and the signing policy decides what it gets.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCOPES = ("create", "sign", "read")
MAX_FILE_BYTES = 1 << 20
MAX_TOKENS = 1000
RELOAD_INTERVAL_SECONDS = 1.0
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_RE = re.compile(r"[0-9a-f]{12}")
_TOKEN_RE = re.compile(r"nwt_(?P<id>[0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DUMMY_DIGEST = bytes(32)


class TokenFileError(ValueError):
    """The token file is unreadable or not in the expected shape."""


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    scopes: frozenset[str]
    digest: bytes
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.token_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "sha256": self.digest.hex(),
            "created": self.created,
        }


@dataclass(frozen=True)
class TokenIdentity:
    """Who a valid token stands for (never the token itself)."""

    token_id: str
    name: str
    scopes: frozenset[str]


def new_token() -> tuple[str, str]:
    """(token id, token): 12 hex digits of id and 256 bits of secret."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return token_id, f"nwt_{token_id}_{secret}"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_file(data: bytes) -> dict[str, TokenRecord]:
    if len(data) > MAX_FILE_BYTES:
        raise TokenFileError("token file too large")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"token file is not JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"version", "tokens"}:
        raise TokenFileError('token file must be {"version": 1, "tokens": [...]}')
    if document["version"] != 1 or not isinstance(document["tokens"], list):
        raise TokenFileError("token file version must be 1 with a list of tokens")
    if len(document["tokens"]) > MAX_TOKENS:
        raise TokenFileError(f"at most {MAX_TOKENS} tokens")
    records: dict[str, TokenRecord] = {}
    for position, item in enumerate(document["tokens"]):
        record = _record(position, item)
        if record.token_id in records:
            raise TokenFileError(f"token id {record.token_id} appears twice")
        records[record.token_id] = record
    return records


def _record(position: int, item: object) -> TokenRecord:
    where = f"tokens[{position}]"
    if not isinstance(item, dict) or set(item) != {"id", "name", "scopes", "sha256", "created"}:
        raise TokenFileError(f"{where} must be {{id, name, scopes, sha256, created}}")
    token_id, name, scopes = item["id"], item["name"], item["scopes"]
    digest, created = item["sha256"], item["created"]
    if not isinstance(token_id, str) or not _ID_RE.fullmatch(token_id):
        raise TokenFileError(f"{where}.id must be 12 hex digits")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TokenFileError(f"{where}.name must match [A-Za-z0-9_-]{{1,64}}")
    if not isinstance(scopes, list) or not all(scope in SCOPES for scope in scopes):
        raise TokenFileError(f"{where}.scopes must be a list of {', '.join(SCOPES)}")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise TokenFileError(f"{where}.sha256 must be 64 lowercase hex digits")
    if not isinstance(created, str) or len(created) > 64:
        raise TokenFileError(f"{where}.created must be a timestamp string")
    return TokenRecord(token_id, name, frozenset(scopes), bytes.fromhex(digest), created)


def check_token(records: dict[str, TokenRecord], token: str) -> TokenIdentity | None:
    """The identity of a valid token; None otherwise. Constant-time in the secret."""
    found = _TOKEN_RE.fullmatch(token)
    record = records.get(found["id"]) if found else None
    expected = record.digest if record else _DUMMY_DIGEST
    matches = hmac.compare_digest(token_digest(token), expected)
    if record is None or not matches:
        return None
    return TokenIdentity(record.token_id, record.name, record.scopes)


class TokenFile:
    """The relay's view of the token file, reloaded when the file changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._records: dict[str, TokenRecord] = {}
        self._checked = float("-inf")
        self._reload()

    def check(self, token: str) -> TokenIdentity | None:
        with self._lock:
            if self._clock() - self._checked >= RELOAD_INTERVAL_SECONDS:
                self._reload()
            records = self._records
        return check_token(records, token)

    def _reload(self) -> None:
        self._checked = self._clock()
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._records:
                log.warning("token file %s is gone: every bearer token is refused", self.path)
            self._records, self._signature = {}, None
            return
        except OSError as exc:
            log.error("cannot stat token file %s: %s", self.path, exc.strerror)
            self._records, self._signature = {}, None
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        try:
            self._records = parse_file(self.path.read_bytes())
            log.info("loaded %d bearer token(s) from %s", len(self._records), self.path)
        except (OSError, TokenFileError) as exc:
            log.error("token file %s refused, every bearer token is refused: %s", self.path, exc)
            self._records = {}
        self._signature = signature


# -- editing (the nitro-wallet token commands) -------------------------------------------


def read_records(path: Path) -> dict[str, TokenRecord]:
    try:
        return parse_file(path.read_bytes())
    except FileNotFoundError:
        return {}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise edits of ``path`` between concurrent CLI runs."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_records(path: Path, records: dict[str, TokenRecord]) -> None:
    """Replace ``path`` atomically (0600 unless the file exists with another mode)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    document = {"version": 1, "tokens": [r.to_json() for r in records.values()]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), mode)
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_token(path: Path, name: str, scopes: frozenset[str]) -> tuple[TokenRecord, str]:
    """Create a token for ``name``; returns its record and the token (shown once)."""
    if not _NAME_RE.fullmatch(name):
        raise TokenFileError("name must match [A-Za-z0-9_-]{1,64}")
    if not scopes or not scopes <= set(SCOPES):
        raise TokenFileError(f"scopes must be some of {', '.join(SCOPES)}")
    with locked(path):
        records = read_records(path)
        token_id, token = new_token()
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = TokenRecord(token_id, name, scopes, token_digest(token), created)
        records[token_id] = record
        write_records(path, records)
    return record, token


def revoke_token(path: Path, token_id: str) -> TokenRecord:
    with locked(path):
        records = read_records(path)
        record = records.pop(token_id, None)
        if record is None:
            raise TokenFileError(f"no token with id {token_id}")
        write_records(path, records)
    return record
