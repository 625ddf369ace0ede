"""``nitro-wallet backup | restore | verify-backup``: the account store's backups.

    nitro-wallet backup --config /etc/nitro-wallet/relay.toml
        (--out FILE | --out-dir DIR [--keep N])
        [--s3-uri s3://BUCKET/PREFIX [--sse aws:kms|aws:kms:dsse|AES256]
         [--sse-kms-key-id KEY] [--s3-region R] [--s3-endpoint-url URL]]
        [--metrics-file FILE.prom] [--timeout SECONDS]
    nitro-wallet restore --config /etc/nitro-wallet/relay.toml --from FILE|s3://BUCKET/KEY
        [--force] [--no-manifest] [--s3-region R] [--s3-endpoint-url URL] [--timeout SECONDS]
    nitro-wallet verify-backup FILE [--require-manifest]

Each prints one JSON object on success. Exit codes: 0 success, 1 the operation failed
or the backup is bad (stderr: ``<command> failed: <code>: <message>``), 2 usage or
configuration errors. Run backup and restore as the store's owner (the relay's user).
docs/operations.md ("Backup and restore") has the procedures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nitro_wallet import backup_metrics, backup_s3
from nitro_wallet.backup import DEFAULT_TIMEOUT_SECONDS, manifest_path, online_backup, restore
from nitro_wallet.backup import verify_backup as verify
from nitro_wallet.backup_check import CheckReport
from nitro_wallet.backup_errors import BackupCode, BackupError
from nitro_wallet.kms_replicas import same_multi_region_key
from parent_app.config import ConfigError, RelayConfig

_NAME_FORMAT = "accounts-%Y%m%dT%H%M%SZ.db"
_NAME_RE = re.compile(r"\Aaccounts-\d{8}T\d{6}Z\.db\Z")


class UsageError(Exception):
    pass


def register(groups: Any) -> None:
    _register_backup(groups)
    _register_restore(groups)
    check = groups.add_parser(
        "verify-backup", help="check every record of a backup file (no KMS call)"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--require-manifest", action="store_true", help="fail when FILE.manifest.json is missing"
    )
    check.set_defaults(handler=run_verify)


def _register_backup(groups: Any) -> None:
    parser = groups.add_parser("backup", help="online, consistent backup of the account store")
    parser.add_argument("--config", type=Path, required=True, help="the relay's relay.toml")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="backup file to write (replaced atomically)")
    where.add_argument(
        "--out-dir", type=Path, help="directory for accounts-YYYYMMDDTHHMMSSZ.db files"
    )
    parser.add_argument(
        "--keep", type=_positive_int, help="with --out-dir: keep the newest N backups"
    )
    _s3_options(parser)
    parser.add_argument("--s3-uri", help="also upload to s3://BUCKET/PREFIX")
    parser.add_argument(
        "--sse", default="aws:kms", choices=backup_s3.SSE_MODES, help="S3 server-side encryption"
    )
    parser.add_argument("--sse-kms-key-id", help="KMS key for SSE (default: the S3 AWS key)")
    parser.add_argument("--metrics-file", type=Path, help="textfile-collector file to rewrite")
    parser.set_defaults(handler=run_backup)


def _register_restore(groups: Any) -> None:
    parser = groups.add_parser("restore", help="restore the account store from a backup")
    parser.add_argument("--config", type=Path, required=True, help="the relay's relay.toml")
    parser.add_argument("--from", dest="source", required=True, help="FILE or s3://BUCKET/KEY")
    parser.add_argument(
        "--force", action="store_true", help="replace a store that holds accounts (saved first)"
    )
    parser.add_argument(
        "--no-manifest", action="store_true", help="accept a file without its manifest"
    )
    _s3_options(parser)
    parser.set_defaults(handler=run_restore)


def _s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-region", help="S3 region (default: [kms] region of the config)")
    parser.add_argument("--s3-endpoint-url", help="S3 endpoint (VPC endpoint, test server)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for a locked store",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# ------------------------------------------------------------------ handlers


def run_backup(args: argparse.Namespace) -> int:
    attempt = time.time()

    def record_failure() -> None:
        if args.metrics_file is not None:
            backup_metrics.write(args.metrics_file, backup_metrics.BackupOutcome(attempt, False))

    return _guarded("backup", lambda: _backup(args, attempt), on_failure=record_failure)


def _backup(args: argparse.Namespace, attempt: float) -> dict[str, Any]:
    if args.keep is not None and args.out_dir is None:
        raise UsageError("--keep needs --out-dir")
    config = _sqlite_config(args.config)
    s3_target = _s3_target(args) if args.s3_uri else None
    output = args.out or args.out_dir / time.strftime(_NAME_FORMAT, time.gmtime(attempt))
    result = online_backup(config.storage.sqlite_path, output, timeout=args.timeout)
    summary: dict[str, Any] = {
        "backup": str(result.path),
        "manifest": str(result.manifest_path),
        **{k: result.manifest[k] for k in ("accounts", "sha256", "bytes", "created_at")},
    }
    if s3_target is not None:
        s3 = backup_s3.client(args.s3_region or config.kms.region, args.s3_endpoint_url)
        summary["s3"] = backup_s3.upload(s3, result.path, result.manifest["sha256"], *s3_target)
    if args.keep is not None:
        summary["pruned"] = [str(p) for p in _prune(args.out_dir, args.keep)]
    duration = time.time() - attempt
    summary["duration_seconds"] = round(duration, 3)
    if args.metrics_file is not None:
        backup_metrics.write(
            args.metrics_file,
            backup_metrics.BackupOutcome(
                at=attempt,
                success=True,
                accounts=result.manifest["accounts"],
                size_bytes=result.manifest["bytes"],
                duration_seconds=duration,
            ),
        )
    return summary


def _s3_target(args: argparse.Namespace) -> tuple[backup_s3.S3Location, backup_s3.Encryption]:
    try:
        location = backup_s3.S3Location.parse(args.s3_uri)
        encryption = backup_s3.Encryption(args.sse, args.sse_kms_key_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return location, encryption


def _prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups this command named, with manifests."""
    ours = sorted(p for p in directory.iterdir() if _NAME_RE.match(p.name) and p.is_file())
    pruned = ours[:-keep]
    for path in pruned:
        manifest_path(path).unlink(missing_ok=True)
        path.unlink()
    return pruned


def run_restore(args: argparse.Namespace) -> int:
    return _guarded("restore", lambda: _restore(args))


def _restore(args: argparse.Namespace) -> dict[str, Any]:
    config = _sqlite_config(args.config)
    store = config.storage.sqlite_path
    warnings: list[str] = []

    def note_key_ids(report: CheckReport) -> None:
        # A record of another region's replica of the relay's multi-Region key decrypts
        # here through the pinned replica (disaster recovery): nothing to warn about.
        others = sorted(
            k
            for k in report.key_ids
            if k != config.kms.key_id and not same_multi_region_key(k, config.kms.key_id)
        )
        if others:
            warnings.append(
                f"records use KMS key(s) {others}, the relay is configured with "
                f"{config.kms.key_id!r}: the enclave's kms.allowed_key_ids must list them"
            )

    with tempfile.TemporaryDirectory(prefix="nitro-wallet-restore-") as scratch:
        source = _fetch(args, config, Path(scratch))
        if not args.no_manifest and not manifest_path(source).exists():
            raise BackupError(
                BackupCode.MANIFEST_MISMATCH,
                f"{manifest_path(source).name} is missing next to the backup (--no-manifest "
                "restores a file without one, e.g. a .pre-restore copy)",
            )
        result = restore(
            source, store, force=args.force, timeout=args.timeout, on_checked=note_key_ids
        )
    return {
        "store": str(result.store),
        "restored": result.restored,
        "replaced": result.replaced,
        "saved_previous": str(result.saved_previous) if result.saved_previous else None,
        "warnings": warnings,
    }


def _fetch(args: argparse.Namespace, config: RelayConfig, scratch: Path) -> Path:
    if not args.source.startswith("s3://"):
        return Path(args.source)
    try:
        location = backup_s3.S3Location.parse(args.source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    s3 = backup_s3.client(args.s3_region or config.kms.region, args.s3_endpoint_url)
    return backup_s3.download(s3, location, scratch)


def run_verify(args: argparse.Namespace) -> int:
    def check() -> dict[str, Any]:
        report = verify(args.file, manifest_required=args.require_manifest)
        has_manifest = manifest_path(args.file).exists()
        return {"file": str(args.file), "manifest": "ok" if has_manifest else "absent"} | (
            report.to_json()
        )

    return _guarded("verify-backup", check)


# ------------------------------------------------------------------ helpers


def _sqlite_config(path: Path) -> RelayConfig:
    try:
        config = RelayConfig.load(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if config.storage.backend != "sqlite":
        raise BackupError(
            BackupCode.UNSUPPORTED_BACKEND,
            f"{path} uses storage backend {config.storage.backend!r}: DynamoDB tables are "
            "backed up by point-in-time recovery and on-demand backups (docs/operations.md)",
        )
    return config


def _guarded(
    command: str,
    action: Callable[[], dict[str, Any]],
    on_failure: Callable[[], None] | None = None,
) -> int:
    try:
        summary = action()
    except UsageError as exc:
        if on_failure is not None:
            on_failure()
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except (BackupError, OSError) as exc:
        if on_failure is not None:
            on_failure()
        error = exc if isinstance(exc, BackupError) else BackupError(BackupCode.IO_ERROR, str(exc))
        print(f"{command} failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
