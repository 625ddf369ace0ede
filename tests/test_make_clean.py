"""`make clean` removes caches and build outputs, never artifacts/ (rendered key
policies, PCR records) nor the simulated appliance's state; `make clean-dev-state`
removes only that state."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"
KEPT_BY_CLEAN = ("artifacts/kms-key-policy.json", "artifacts/pcrs/host.json", ".dev-state/x")
CACHES = (".pytest_cache/x", ".mypy_cache/x", ".ruff_cache/x", "build/wheels/x.whl", "dist/x")


def _tree(root: Path) -> None:
    for name in (*KEPT_BY_CLEAN, *CACHES, ".demo-state/x"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def _make(root: Path, target: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    subprocess.run(
        ["make", "-s", "-f", str(MAKEFILE), "-C", str(root), target],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_make_clean_keeps_artifacts_and_dev_state(tmp_path: Path) -> None:
    _tree(tmp_path)
    _make(tmp_path, "clean")
    for name in KEPT_BY_CLEAN:
        assert (tmp_path / name).exists(), name
    for name in CACHES:
        assert not (tmp_path / name).exists(), name


def test_make_clean_dev_state_removes_only_the_simulated_state(tmp_path: Path) -> None:
    _tree(tmp_path)
    _make(tmp_path, "clean-dev-state")
    assert not (tmp_path / ".dev-state").exists()
    assert not (tmp_path / ".demo-state").exists()
    assert (tmp_path / "artifacts/kms-key-policy.json").exists()
    assert (tmp_path / ".pytest_cache/x").exists()
