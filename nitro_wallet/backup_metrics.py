"""Backup metrics for node_exporter's textfile collector.

``nitro-wallet backup --metrics-file /var/lib/node_exporter/textfile/nitro_wallet_backup.prom``
rewrites the file after every run (prometheus_client writes a temporary file and renames
it, so the collector never reads half of one). A failed run keeps the figures of the last
success, so ``time() - nitro_wallet_backup_last_success_timestamp_seconds`` is the age of
the newest good backup whatever happened since (monitoring/alerts.yml alerts on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "nitro_wallet_backup_"
LAST_SUCCESS = f"{PREFIX}last_success_timestamp_seconds"
LAST_ATTEMPT = f"{PREFIX}last_attempt_timestamp_seconds"
LAST_ATTEMPT_OK = f"{PREFIX}last_attempt_success"
ACCOUNTS = f"{PREFIX}accounts"
SIZE = f"{PREFIX}size_bytes"
DURATION = f"{PREFIX}duration_seconds"

_HELP = {
    LAST_SUCCESS: "Unix time of the last backup that was written, checked and (if asked) uploaded.",
    LAST_ATTEMPT: "Unix time of the last backup attempt, successful or not.",
    LAST_ATTEMPT_OK: "1 if the last backup attempt succeeded, else 0.",
    ACCOUNTS: "Accounts in the last successful backup.",
    SIZE: "Bytes of the last successful backup file.",
    DURATION: "Seconds the last successful backup took (copy, check, upload).",
}
_KEPT_ON_FAILURE = (LAST_SUCCESS, ACCOUNTS, SIZE, DURATION)


@dataclass(frozen=True)
class BackupOutcome:
    at: float  # Unix time of the attempt
    success: bool
    accounts: int | None = None
    size_bytes: int | None = None
    duration_seconds: float | None = None


def write(path: Path, outcome: BackupOutcome) -> None:
    values = _previous(path) if not outcome.success else {}
    values[LAST_ATTEMPT] = outcome.at
    values[LAST_ATTEMPT_OK] = 1.0 if outcome.success else 0.0
    if outcome.success:
        values[LAST_SUCCESS] = outcome.at
        for name, value in (
            (ACCOUNTS, outcome.accounts),
            (SIZE, outcome.size_bytes),
            (DURATION, outcome.duration_seconds),
        ):
            if value is not None:
                values[name] = float(value)
    registry = CollectorRegistry()
    for name, value in sorted(values.items()):
        Gauge(name, _HELP[name], registry=registry).set(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    os.chmod(path, 0o644)  # node_exporter runs as its own user


def _previous(path: Path) -> dict[str, float]:
    """The figures of the last success, from the file this module wrote before."""
    try:
        text = path.read_text()[: 64 * 1024]
    except (OSError, UnicodeDecodeError):
        return {}
    kept: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _KEPT_ON_FAILURE and not sample.labels:
                    kept[sample.name] = float(sample.value)
    except ValueError:
        return {}
    return kept
