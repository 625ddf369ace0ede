"""Backups to and from S3, always with server-side encryption.

Credentials come from boto3's default chain (on a host: the instance role through
IMDSv2); nothing here reads or prints them. An upload sends the backup with its
SHA-256 (``ChecksumSHA256``, so S3 refuses bytes that differ from what was checked),
then the manifest: an object with a manifest next to it is complete. The encryption
S3 reports back must be the one asked for, or the upload counts as failed.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from nitro_wallet.backup import MANIFEST_SUFFIX, manifest_path
from nitro_wallet.backup_errors import BackupCode, BackupError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

SSE_MODES = ("aws:kms", "aws:kms:dsse", "AES256")
MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3 PutObject limit
_BUCKET_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_CLIENT_CONFIG = Config(
    connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 5}
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # a prefix ("" or ending in "/") for uploads, an object key for downloads

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"{bucket!r} is not an S3 bucket name")
        if any(part in (".", "..") for part in key.split("/")) or len(key) > 900:
            raise ValueError(f"{uri!r} has an unusable key")
        return cls(bucket, key)

    def object_for(self, filename: str) -> S3Location:
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Location(self.bucket, prefix + filename)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Encryption:
    mode: str
    kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SSE_MODES:
            raise ValueError(f"server-side encryption must be one of {list(SSE_MODES)}")
        if self.kms_key_id is not None and not self.mode.startswith("aws:kms"):
            raise ValueError("an SSE KMS key id needs --sse aws:kms or aws:kms:dsse")

    def put_args(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.mode}
        if self.kms_key_id is not None:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


def client(region: str | None, endpoint_url: str | None) -> S3Client:
    """S3 with the default credential chain (the instance role on a host)."""
    session = boto3.session.Session(region_name=region)
    return session.client("s3", endpoint_url=endpoint_url, config=_CLIENT_CONFIG)


def upload(
    s3: S3Client, backup: Path, sha256_hex: str, target: S3Location, encryption: Encryption
) -> dict[str, Any]:
    """Put the backup, then its manifest, under ``target``; what S3 recorded for each."""
    if backup.stat().st_size > MAX_SINGLE_PUT_BYTES:
        raise BackupError(BackupCode.S3_ERROR, f"{backup} is larger than one S3 PutObject")
    data_object = target.object_for(backup.name)
    manifest_object = target.object_for(backup.name + MANIFEST_SUFFIX)
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    stored = _put(s3, backup, data_object, encryption, checksum)
    _put(s3, manifest_path(backup), manifest_object, encryption, None)
    return {"uri": data_object.uri, "manifest_uri": manifest_object.uri, **stored}


def _put(
    s3: S3Client, path: Path, where: S3Location, encryption: Encryption, sha256_b64: str | None
) -> dict[str, Any]:
    extra: dict[str, Any] = dict(encryption.put_args())
    if sha256_b64 is not None:
        extra["ChecksumSHA256"] = sha256_b64
    try:
        with path.open("rb") as body:
            answer = s3.put_object(Bucket=where.bucket, Key=where.key, Body=body, **extra)
    except OSError as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot read {path}: {exc.strerror}") from None
    except (ClientError, BotoCoreError) as exc:
        raise _failure("PutObject", where, exc) from None
    applied = answer.get("ServerSideEncryption")
    if applied != encryption.mode:
        raise BackupError(
            BackupCode.S3_ERROR,
            f"S3 stored {where.uri} with encryption {applied!r}, not {encryption.mode!r}",
        )
    return {
        "sse": applied,
        "sse_kms_key_id": answer.get("SSEKMSKeyId"),
        "version_id": answer.get("VersionId"),
        "etag": answer.get("ETag"),
    }


def download(s3: S3Client, source: S3Location, directory: Path) -> Path:
    """The object and, when there is one, its manifest, into ``directory`` (private)."""
    name = source.key.rsplit("/", 1)[-1]
    if not name or name.startswith("."):
        raise BackupError(BackupCode.S3_ERROR, f"{source.uri} does not name a backup object")
    local = directory / name
    _get(s3, source, local, missing_ok=False)
    manifest = S3Location(source.bucket, source.key + MANIFEST_SUFFIX)
    _get(s3, manifest, manifest_path(local), missing_ok=True)
    return local


def _get(s3: S3Client, source: S3Location, local: Path, *, missing_ok: bool) -> None:
    try:
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            s3.download_fileobj(source.bucket, source.key, handle)
    except OSError as exc:
        raise BackupError(BackupCode.IO_ERROR, f"cannot write {local}: {exc.strerror}") from None
    except ClientError as exc:
        local.unlink(missing_ok=True)
        if missing_ok and _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return
        raise _failure("GetObject", source, exc) from None
    except BotoCoreError as exc:
        local.unlink(missing_ok=True)
        raise _failure("GetObject", source, exc) from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _failure(operation: str, where: S3Location, exc: Exception) -> BackupError:
    """Names the operation and the AWS error code only: messages may echo request data."""
    detail = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return BackupError(BackupCode.S3_ERROR, f"S3 {operation} {where.uri} failed ({detail})")
