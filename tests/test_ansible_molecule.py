"""Molecule scenarios as pytest tests: podman systemd hosts, minutes each.

Opt in with NITRO_WALLET_MOLECULE=1 (needs root, podman, runc and debootstrap:
scripts/install-test-host-deps.sh; the test host image is built on first use by
scripts/build-testhost-image.sh). Scenarios: preflight_hardware, default (the whole
appliance, idempotence, testinfra, check mode), cluster (two hosts, one KMS, one DynamoDB
table; rolling upgrades under load). Each scenario's duration, and the cluster's signature
counts during the rolls, are printed even when the test passes.

NITRO_WALLET_MOLECULE_SCENARIOS picks the scenarios (comma-separated; all three when
unset): `make test` runs all three, `make test-cluster` only cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("NITRO_WALLET_MOLECULE") != "1",
        reason="molecule scenarios run only with NITRO_WALLET_MOLECULE=1",
    ),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["CONTAINERS_CONF"] = str(ROOT / "molecule/containers.conf")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["PY_COLORS"] = "0"
    return env


@pytest.fixture(scope="module")
def test_host_image() -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/install-test-host-deps.sh")
    subprocess.run(
        [str(ROOT / "scripts/build-testhost-image.sh")],
        cwd=ROOT,
        env=_env(),
        check=True,
        timeout=900,
    )


SCENARIOS = ("preflight_hardware", "default", "cluster")
SELECTED = {
    name.strip()
    for name in os.environ.get("NITRO_WALLET_MOLECULE_SCENARIOS", ",".join(SCENARIOS)).split(",")
}


def test_selected_scenarios_exist() -> None:
    unknown = SELECTED - set(SCENARIOS)
    assert not unknown, f"NITRO_WALLET_MOLECULE_SCENARIOS names no scenario: {sorted(unknown)}"


@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name not in SELECTED,
                reason=f"{name} is not in NITRO_WALLET_MOLECULE_SCENARIOS ({sorted(SELECTED)})",
            ),
        )
        for name in SCENARIOS
    ],
)
def test_molecule_scenario(
    test_host_image: None, scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("# rolling upgrade")]
    # Uncaptured on purpose: the durations and the roll's counts belong in every CI log
    # (pytest captures file descriptor 1 itself, so sys.__stdout__ would not do).
    with capsys.disabled():
        print(
            f"\nmolecule {scenario}: {time.monotonic() - started:.0f} s, rc {result.returncode}",
            *summary,
            sep="\n",
            flush=True,
        )
    assert result.returncode == 0, (result.stdout + result.stderr)[-20000:]
