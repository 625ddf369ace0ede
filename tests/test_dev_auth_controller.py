"""``python -m nitro_sim.dev_auth DIR``: the development credentials and signing policy
playbooks/local_site.yml hands to the roles (``make demo``, molecule)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nitro_wallet.policy import compile_policy_text

pytestmark = pytest.mark.process  # runs `nitro-wallet token add`


def _run(directory: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "nitro_sim.dev_auth", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_token_opens_the_token_records_and_the_policy_is_compiled(tmp_path: Path) -> None:
    made = _run(tmp_path / "dev-auth")
    token = str(made["token"])
    assert token == (tmp_path / "dev-auth" / "api-token").read_text().strip()
    records = made["tokens"]
    assert isinstance(records, list)
    assert [r["sha256"] for r in records] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in json.dumps(records)  # the relay gets the hash only
    policy = Path(str(made["policy_file"])).read_bytes()
    assert hashlib.sha256(policy).hexdigest() == made["policy_sha256"]
    compiled = compile_policy_text(policy.decode())  # the compiled form compiles to itself
    assert compiled.canonical == policy
    for secret in ("api-token", "api-key.pem"):
        assert (tmp_path / "dev-auth" / secret).stat().st_mode & 0o077 == 0


def test_a_second_run_keeps_the_token_and_the_policy(tmp_path: Path) -> None:
    first = _run(tmp_path / "dev-auth")
    second = _run(tmp_path / "dev-auth")
    assert second["token"] == first["token"]
    assert second["policy_sha256"] == first["policy_sha256"]  # so PCR0 stays the same


def test_usage_error_without_a_directory() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nitro_sim.dev_auth"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 2
    assert "usage" in out.stderr
