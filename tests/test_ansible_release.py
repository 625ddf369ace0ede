"""One reproducible release per commit, built once, off the signing hosts.

playbooks/enclave_build.yml runs for real on the controller with the simulated nitro-cli:
hash-pinned wheels fetched first (into the shared wheel cache), the build context packed
deterministically, SOURCE_DATE_EPOCH the commit time. Two builds of one commit into two
release directories must give one PCR0 (and byte-identical EIFs); a release is immutable.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nitro_wallet.policy import compile_policy_text
from tests.ansible_runner import ROOT, local_inventory, run_playbook

pytestmark = pytest.mark.process  # ansible-playbook runs as a process

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0f0e0d0c-0b0a-4908-8706-050403020100"
BUILD_VARS = {
    "nitro_wallet_release": "r1",
    "nitro_wallet_kms_key_arn": KEY_ARN,
    "nitro_enclaves_backend": "simulator",
    "enclave_kms_endpoint_scheme": "http",
    "enclave_kms_endpoint_host": "127.0.0.1",
}


def signing_policy(directory: Path) -> Path:
    """The example signing policy, compiled (the image carries one; the role requires it)."""
    compiled = compile_policy_text((ROOT / "docs" / "examples" / "policy.yaml").read_text())
    path = directory / "policy.json"
    path.write_bytes(compiled.canonical)
    return path


def build(tmp_path: Path, root: Path, **overrides: Any) -> tuple[bool, str]:
    inventory = local_inventory(tmp_path / "inventory.json")
    policy = {"nitro_wallet_signing_policy_file": str(signing_policy(tmp_path))}
    run = run_playbook(
        "playbooks/enclave_build.yml",
        inventory,
        tmp_path,
        extra={**BUILD_VARS, **policy, "enclave_release_root": str(root), **overrides},
        timeout=900,
    )
    return run.ok, run.output


def release(root: Path, name: str = "r1") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((root / name / "release.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    roots = []
    for name in ("first", "second"):
        work = tmp_path_factory.mktemp(name)
        ok, output = build(work, work / "releases")
        assert ok, output[-5000:]
        roots.append(work / "releases")
    return roots[0], roots[1]


def test_two_release_builds_from_one_commit_give_one_pcr0(two_builds: tuple[Path, Path]) -> None:
    """each_host_builds_its_own_eif: the same commit built twice measures the same."""
    first, second = (release(root) for root in two_builds)
    assert first["measurements"] == second["measurements"]
    assert re.fullmatch(r"[0-9a-f]{96}", first["measurements"]["PCR0"])
    assert first["eif_sha256"] == second["eif_sha256"]
    assert (two_builds[0] / "r1/nitro-wallet.eif").read_bytes() == (
        two_builds[1] / "r1/nitro-wallet.eif"
    ).read_bytes()
    assert first["inputs"] == second["inputs"]


def test_release_directory_holds_the_eif_its_pcrs_and_checksums(
    two_builds: tuple[Path, Path],
) -> None:
    root = two_builds[0] / "r1"
    info = release(two_builds[0])
    assert sorted(p.name for p in root.iterdir()) == [
        "SHA256SUMS",
        "context.tar.gz",
        "nitro-wallet.eif",
        "release.json",
    ]
    eif = (root / "nitro-wallet.eif").read_bytes()
    assert info["eif_sha256"] == hashlib.sha256(eif).hexdigest()
    assert info["eif_size"] == len(eif)
    assert set(info["measurements"]) == {"PCR0", "PCR1", "PCR2"}  # unsigned: no PCR8
    checked = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    commit_time = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert info["source_date_epoch"] == int(commit_time)
    assert info["kms"]["key_ids"] == [KEY_ARN]
    # The signing policy's hash, next to the PCRs: the hash the enclave reports for the
    # policy it runs (policy.json's canonical bytes, as built into the image).
    policy = compile_policy_text((ROOT / "docs" / "examples" / "policy.yaml").read_text())
    assert info["signing_policy_sha256"] == hashlib.sha256(policy.canonical).hexdigest()
    assert re.fullmatch(r"\S+@sha256:[0-9a-f]{64}", info["inputs"]["base_image"])


def test_release_carries_the_hash_pinned_wheels_it_was_built_with(
    two_builds: tuple[Path, Path],
) -> None:
    """The image installs from wheels/ with no network: the context holds exactly one wheel
    per pin of requirements/enclave.txt, each one's hash among the pinned ones."""
    import tarfile

    lock = (ROOT / "requirements/enclave.txt").read_text()
    pinned = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock))
    with tarfile.open(two_builds[0] / "r1/context.tar.gz") as context:
        wheels = {
            member.name: hashlib.sha256(_read(context, member)).hexdigest()
            for member in context.getmembers()
            if member.name.startswith("wheels/")
        }
    pins = re.findall(r"(?m)^([A-Za-z0-9._-]+)==", lock)
    assert len(wheels) == len(pins)
    assert set(wheels.values()) <= pinned
    dockerfile = (ROOT / "enclave/Dockerfile").read_text()
    assert "--no-index" in dockerfile
    assert "--require-hashes" in dockerfile
    assert re.search(r"(?m)^FROM \S+@sha256:[0-9a-f]{64}$", dockerfile)


def _read(archive: Any, member: Any) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None
    data: bytes = handle.read()
    return data


def test_release_is_immutable_once_built(tmp_path: Path, two_builds: tuple[Path, Path]) -> None:
    root = tmp_path / "releases"
    root.mkdir()
    subprocess.run(["cp", "-a", str(two_builds[0] / "r1"), str(root)], check=True)
    ok, output = build(tmp_path, root, enclave_key_cache_ttl_seconds=901)
    assert not ok
    assert "Release r1 already exists" in output
    assert "immutable" in output
    ok, output = build(
        tmp_path, root, enclave_key_cache_ttl_seconds=901, enclave_build_replace=True
    )
    assert ok, output[-5000:]
    assert release(root)["measurements"]["PCR0"] != release(two_builds[0])["measurements"]["PCR0"]


def test_enclave_build_never_restarts_an_enclave() -> None:
    """enclave_build_restarts_every_enclave: the build runs on the build host only (the
    controller by default), and nothing in it notifies a handler or touches a service."""
    plays = yaml.safe_load((ROOT / "playbooks/enclave_build.yml").read_text())
    build_host = "{{ nitro_wallet_build_host | default('localhost') }}"
    assert [play["hosts"] for play in plays] == [build_host]
    build_tasks = "".join(
        (ROOT / "roles/enclave/tasks" / name).read_text()
        for name in ("build.yml", "build_eif.yml", "build_preflight.yml")
    )
    assert "notify" not in build_tasks
    assert "systemd" not in build_tasks
    assert "nitro-wallet-enclave" not in build_tasks


def test_build_refuses_an_unknown_kms_scheme_by_its_argument_spec(tmp_path: Path) -> None:
    root = tmp_path / "releases"
    ok, output = build(tmp_path, root, enclave_kms_endpoint_scheme="ftp")
    assert not ok
    assert "value of enclave_kms_endpoint_scheme must be one of: https, http, got: ftp" in output
    assert not (root / "r1").exists()
