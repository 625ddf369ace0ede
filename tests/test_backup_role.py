"""roles/nitro_wallet_backup renders a unit whose command the CLI accepts.

The ExecStart line of nitro-wallet-backup.service, rendered with the role's defaults
(and with every S3 option), is parsed by the real ``nitro-wallet`` argument parser, so a
renamed or misspelt option fails here rather than at 02:00 on a host.
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from nitro_wallet.cli import build_parser

ROLE = Path(__file__).resolve().parent.parent / "roles" / "nitro_wallet_backup"


def _render(name: str, overrides: dict[str, Any]) -> str:
    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values.update(
        {
            "ansible_managed": "test",
            "nitro_wallet_backup_user": "nitro-wallet",
            "nitro_wallet_backup_group": "nitro-wallet",
            "nitro_wallet_backup_relay_config": "/etc/nitro-wallet/relay.toml",
            "nitro_wallet_backup_store_dir": "/var/lib/nitro-wallet",
            **overrides,
        }
    )
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (a systemd unit, as Ansible's template module renders it)
        keep_trailing_newline=True,
    )
    environment.filters["dirname"] = posixpath.dirname  # Ansible's dirname filter
    return environment.from_string((ROLE / "templates" / name).read_text()).render(**values)


def _exec_start(unit: str) -> list[str]:
    joined = unit.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


S3 = {
    "nitro_wallet_backup_s3_uri": "s3://wallet-backups/host-a/",
    "nitro_wallet_backup_sse_kms_key_id": "alias/backups",
    "nitro_wallet_backup_s3_region": "eu-west-1",
    "nitro_wallet_backup_s3_endpoint_url": "https://bucket.vpce.example.com",
}


@pytest.mark.parametrize("overrides", [{}, S3, {"nitro_wallet_backup_metrics_file": ""}])
def test_the_unit_command_is_one_the_cli_accepts(overrides: dict[str, Any]) -> None:
    unit = _render("nitro-wallet-backup.service.j2", overrides)
    argv = _exec_start(unit)
    assert argv[0] == "/opt/nitro-wallet/operator/venv/bin/nitro-wallet"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "backup"
    assert str(args.config) == "/etc/nitro-wallet/relay.toml"
    assert str(args.out_dir) == "/var/backups/nitro-wallet"
    assert args.keep == 14
    assert (args.s3_uri is not None) == bool(overrides.get("nitro_wallet_backup_s3_uri"))
    if overrides is S3:
        assert args.sse == "aws:kms"
        assert args.sse_kms_key_id == "alias/backups"
        assert args.s3_region == "eu-west-1"
    metrics = overrides.get("nitro_wallet_backup_metrics_file", "x")
    assert (args.metrics_file is not None) == bool(metrics)
    assert "User=nitro-wallet" in unit
    read_write = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert "/var/backups/nitro-wallet" in read_write
    assert "/var/lib/nitro-wallet" in read_write


def test_the_timer_is_persistent_and_names_the_service() -> None:
    timer = _render("nitro-wallet-backup.timer.j2", {})
    assert "OnCalendar=*-*-* 02:00:00" in timer
    assert "Persistent=true" in timer
    assert "Unit=nitro-wallet-backup.service" in timer
