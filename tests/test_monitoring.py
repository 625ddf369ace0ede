"""monitoring/alerts.yml: valid for Prometheus, unit-tested, and about metrics that exist.

``promtool`` (Debian's prometheus package; scripts/install-promtool.sh extracts only the
tool, and .ci/run runs it) checks the rules and runs monitoring/alerts.test.yml. Without
promtool those two tests skip, except in CI where they fail. The structural checks below
always run, in Python: the rule-file schema, the annotations every alert carries, a runbook
anchor that exists in docs/operations.md, a promtool unit test per alert, and metric names
the relay or the backup command exposes (or that are listed as pending, with who adds them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_app.transport import Transport
from nitro_wallet import backup_metrics
from parent_app.credentials import Credentials, StaticCredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.service import WalletService
from parent_app.storage import SqliteStorage

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Metric names the alerts use before their producer exposes them (BOARD "metric names"),
#: with who adds them. When one is exposed, this test fails until it is removed here: the
#: list stays true. Empty: every alert fires on a name the relay or the backup exposes.
PENDING_METRICS: dict[str, str] = {}
_DURATION = re.compile(r"\A([0-9]+(ms|s|m|h|d|w|y))+\Z")
_METRIC = re.compile(r"\bnitro_wallet_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run runs scripts/install-promtool.sh")
        pytest.skip("promtool not installed (scripts/install-promtool.sh)")
    return path


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"]]


@pytest.mark.process
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


@pytest.mark.process
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        check=False,
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_file_schema() -> None:
    document = _load(RULES)
    assert set(document) == {"groups"}
    names: set[str] = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"] not in names
        names.add(group["name"])
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"NitroWallet[A-Z][A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str)
            assert rule["expr"].strip()
            if "for" in rule:
                assert _DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_link_points_at_a_section_of_operations_md() -> None:
    anchors = {
        _slug(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in _alerts():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired: set[str] = set()
    for case in _load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    missing = sorted({rule["alert"] for rule in _alerts()} - fired)
    assert not missing, f"alerts without a firing unit test: {missing}"


def _relay_exposition() -> str:
    """/metrics of a relay wired as in production (storage, enclave client, credentials,
    the readiness and enclave collectors), with no enclave behind it: every family is
    declared even while the enclave does not answer."""
    with tempfile.TemporaryDirectory(prefix="nwm-", dir="/tmp") as tmp:
        storage = SqliteStorage(Path(tmp) / "accounts.db")
        try:
            enclave = EnclaveClient(Transport.unix(Path(tmp) / "vsock"), 16, 5000, 1.0)
            credentials = StaticCredentialSource(Credentials("AKIDEXAMPLE", "secret", None))
            service = WalletService(storage, enclave, credentials, "arn:aws:kms:key/none")
            return service.metrics.expose().decode()
        finally:
            storage.close()


def _exposed() -> set[str]:
    body = _relay_exposition()
    relay = set(re.findall(r"^# TYPE (\S+) ", body, flags=re.MULTILINE))
    backup = {
        value
        for name, value in vars(backup_metrics).items()
        if name.isupper() and isinstance(value, str) and value.startswith("nitro_wallet_backup_")
    }
    return relay | backup - {backup_metrics.PREFIX}


def _used() -> set[str]:
    """Metric names in the expressions (label values in quotes are not metric names)."""
    names: set[str] = set()
    for rule in _alerts():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])
        names |= {_base(name) for name in _METRIC.findall(expr)}
    return names


def _base(name: str) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_alerts_use_only_metrics_that_exist_or_are_pending() -> None:
    exposed = _exposed()
    used = _used()
    unknown = sorted(used - exposed - set(PENDING_METRICS))
    assert not unknown, f"alerts use metrics nobody exposes: {unknown}"


def test_the_pending_list_is_true() -> None:
    exposed = _exposed()
    landed = sorted(name for name in PENDING_METRICS if name in exposed)
    assert not landed, f"exposed now, remove from PENDING_METRICS: {landed}"
    unused = sorted(set(PENDING_METRICS) - _used())
    assert not unused, f"no alert uses: {unused}"
