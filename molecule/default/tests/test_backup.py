"""Verify the backup timer on the simulated host (molecule scenario `default`).

The timer's service runs once here (as systemd would at its calendar time): it must
succeed as the relay's user, leave a 0600 backup with its manifest that verify-backup
accepts, and rewrite the textfile-collector file.
"""

from __future__ import annotations

import json
from typing import Any

BACKUP_DIR = "/var/backups/nitro-wallet"
VENV = "/opt/nitro-wallet/operator/venv"
METRICS = "/var/lib/node_exporter/textfile/nitro_wallet_backup.prom"


def test_the_timer_is_enabled_and_scheduled(host: Any) -> None:
    timer = host.service("nitro-wallet-backup.timer")
    assert timer.is_enabled
    assert timer.is_running
    properties = timer.systemd_properties
    assert properties["Unit"] == "nitro-wallet-backup.service"
    assert "OnCalendar" in host.run("systemctl cat nitro-wallet-backup.timer").stdout


def test_the_service_is_hardened_and_runs_as_the_relay_user(host: Any) -> None:
    properties = host.service("nitro-wallet-backup.service").systemd_properties
    assert properties["User"] == "nitro-wallet"
    assert properties["NoNewPrivileges"] == "yes"
    assert properties["ProtectSystem"] == "strict"
    assert properties["PrivateTmp"] == "yes"
    assert properties["UMask"] == "0077"
    assert properties["CapabilityBoundingSet"] == ""
    assert BACKUP_DIR in properties["ReadWritePaths"]


def test_a_run_writes_a_checked_private_backup_and_the_metrics(host: Any) -> None:
    run = host.run("systemctl start nitro-wallet-backup.service")
    journal = host.run("journalctl -u nitro-wallet-backup.service --no-pager -n 50").stdout
    assert run.rc == 0, journal
    assert host.service("nitro-wallet-backup.service").systemd_properties["Result"] == "success"
    listing = host.run(f"ls -1 {BACKUP_DIR}").stdout.split()
    backups = sorted(name for name in listing if name.endswith(".db"))
    assert backups, journal
    newest = f"{BACKUP_DIR}/{backups[-1]}"
    backup = host.file(newest)
    assert backup.user == "nitro-wallet"
    assert backup.mode == 0o600
    assert host.file(newest + ".manifest.json").exists
    check = host.run(f"{VENV}/bin/nitro-wallet verify-backup {newest} --require-manifest")
    assert check.rc == 0, check.stderr
    assert json.loads(check.stdout)["manifest"] == "ok"
    metrics = host.file(METRICS)
    assert metrics.exists
    assert "nitro_wallet_backup_last_attempt_success 1.0" in metrics.content_string
    assert host.file(BACKUP_DIR).mode == 0o700
