"""The simulated AWS account: principals and their credentials (`principals.json`).

One file in the state directory maps access keys to IAM principals. The local KMS
authenticates SigV4 requests against it, and the IMDS serves the instance role's
credentials from it. The file holds secrets: it is created 0600 and never logged.

    {"account_id": "111122223333", "region": "us-east-1",
     "principals": [{"arn": ..., "access_key_id": ..., "secret_access_key": ...,
                     "session_token": str | null, "imds_role": bool, "administrator": bool}]}
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRINCIPALS_FILE = "principals.json"
DEFAULT_ACCOUNT_ID = "111122223333"
DEFAULT_REGION = "us-east-1"
ROLE_NAME = "nitro-wallet-parent"
ADMIN_NAME = "nitro-wallet-admin"
MAX_FILE_BYTES = 64 * 1024

_ACCOUNT_RE = re.compile(r"\A[0-9]{12}\Z")
_REGION_RE = re.compile(r"\A[a-z]{2}(-[a-z]+)+-[0-9]\Z")
_ARN_RE = re.compile(r"\Aarn:aws:iam::([0-9]{12}):(user|role)/[A-Za-z0-9+=,.@_/-]{1,128}\Z")
_ACCESS_KEY_RE = re.compile(r"\A(AKIA|ASIA)[A-Z2-7]{16}\Z")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class PrincipalsError(Exception):
    """principals.json is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


@dataclass(frozen=True)
class Principal:
    arn: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    imds_role: bool
    administrator: bool

    def __repr__(self) -> str:  # never print the secret or the token
        return f"Principal(arn={self.arn!r}, access_key_id={self.access_key_id!r})"

    @property
    def account_id(self) -> str:
        return self.arn.split(":")[4]

    @property
    def name(self) -> str:
        """The user or role name: the last path segment of the ARN."""
        return self.arn.rsplit("/", 1)[-1]

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key, self.session_token)

    def to_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "imds_role": self.imds_role,
            "administrator": self.administrator,
        }


def _random_key_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_BASE32) for _ in range(16))


def _random_secret() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode("ascii")  # 40 characters


def _random_session_token() -> str:
    return base64.b64encode(secrets.token_bytes(192)).decode("ascii")


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` atomically with mode 0600.

    The bytes go to a temporary file in the same directory, are fsynced, then moved
    into place. With `exclusive`, an existing `path` is left untouched and False is
    returned (the link is atomic, so two concurrent creators cannot both win).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PrincipalsError(message)


def _parse_principal(raw: Any) -> Principal:
    _require(isinstance(raw, dict), "principal must be an object")
    arn = raw.get("arn")
    key_id = raw.get("access_key_id")
    secret = raw.get("secret_access_key")
    token = raw.get("session_token")
    imds_role = raw.get("imds_role")
    admin = raw.get("administrator")
    _require(isinstance(arn, str) and _ARN_RE.match(arn) is not None, "bad principal arn")
    _require(
        isinstance(key_id, str) and _ACCESS_KEY_RE.match(key_id) is not None,
        "bad access_key_id",
    )
    _require(isinstance(secret, str) and 16 <= len(secret) <= 128, "bad secret_access_key")
    _require(token is None or (isinstance(token, str) and 0 < len(token) <= 4096), "bad token")
    _require(isinstance(imds_role, bool) and isinstance(admin, bool), "bad principal flags")
    return Principal(str(arn), str(key_id), str(secret), token, bool(imds_role), bool(admin))


class Principals:
    """The account, its region and its principals, looked up by access key id."""

    def __init__(self, account_id: str, region: str, principals: Sequence[Principal]) -> None:
        if not _ACCOUNT_RE.match(account_id):
            raise PrincipalsError("account_id must be 12 digits")
        if not _REGION_RE.match(region):
            raise PrincipalsError("region is malformed")
        by_key: dict[str, Principal] = {}
        for principal in principals:
            if principal.access_key_id in by_key:
                raise PrincipalsError("duplicate access_key_id")
            if principal.account_id != account_id:
                raise PrincipalsError("principal outside the account")
            by_key[principal.access_key_id] = principal
        self.account_id = account_id
        self.region = region
        self.principals: tuple[Principal, ...] = tuple(principals)
        self._by_key: Mapping[str, Principal] = by_key

    def __repr__(self) -> str:
        return f"Principals(account_id={self.account_id!r}, n={len(self.principals)})"

    @classmethod
    def create(
        cls, account_id: str = DEFAULT_ACCOUNT_ID, region: str = DEFAULT_REGION
    ) -> Principals:
        """Fresh random credentials for the instance role and the key administrator."""
        role = Principal(
            arn=f"arn:aws:iam::{account_id}:role/{ROLE_NAME}",
            access_key_id=_random_key_id("ASIA"),
            secret_access_key=_random_secret(),
            session_token=_random_session_token(),
            imds_role=True,
            administrator=False,
        )
        admin = Principal(
            arn=f"arn:aws:iam::{account_id}:user/{ADMIN_NAME}",
            access_key_id=_random_key_id("AKIA"),
            secret_access_key=_random_secret(),
            session_token=None,
            imds_role=False,
            administrator=True,
        )
        return cls(account_id, region, [role, admin])

    @classmethod
    def from_json(cls, raw: Any) -> Principals:
        _require(isinstance(raw, dict), "principals.json must hold an object")
        account_id = raw.get("account_id")
        region = raw.get("region")
        entries = raw.get("principals")
        _require(isinstance(account_id, str) and isinstance(region, str), "bad account/region")
        _require(isinstance(entries, list) and 0 < len(entries) <= 64, "bad principals list")
        return cls(str(account_id), str(region), [_parse_principal(e) for e in entries])

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "region": self.region,
            "principals": [p.to_json() for p in self.principals],
        }

    @classmethod
    def load(cls, state_dir: Path) -> Principals:
        path = Path(state_dir) / PRINCIPALS_FILE
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise PrincipalsError(f"cannot read {path}: {exc.strerror}") from None
        _require(len(data) <= MAX_FILE_BYTES, "principals.json is too large")
        try:
            raw = json.loads(data)
        except ValueError:
            raise PrincipalsError("principals.json is not valid JSON") from None
        return cls.from_json(raw)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Principals:
        """Load `state_dir/principals.json`, creating it (0600, random secrets) if absent.

        Safe against concurrent callers: exactly one creator wins, the others load it.
        """
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / PRINCIPALS_FILE
        if not path.exists():
            fresh = cls.create()
            data = json.dumps(fresh.to_json(), indent=2).encode("utf-8") + b"\n"
            if write_private_file(path, data, exclusive=True):
                return fresh
        return cls.load(state_dir)

    def by_access_key(self, access_key_id: str) -> Principal | None:
        return self._by_key.get(access_key_id)

    def by_arn(self, arn: str) -> Principal | None:
        return next((p for p in self.principals if p.arn == arn), None)

    def imds_role(self) -> Principal:
        role = next((p for p in self.principals if p.imds_role), None)
        if role is None:
            raise PrincipalsError("no principal is marked imds_role")
        return role

    def administrator(self) -> Principal:
        admin = next((p for p in self.principals if p.administrator), None)
        if admin is None:
            raise PrincipalsError("no principal is marked administrator")
        return admin

    def role_credentials(self) -> Credentials:
        return self.imds_role().credentials

    def admin_credentials(self) -> Credentials:
        return self.administrator().credentials
