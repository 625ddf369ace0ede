"""The Python helpers shipped inside the roles, run for real: the enclave build context
packer (with the hash-pinned wheels and rendered enclave.toml of a release), the simulated
allocator (its check and its hugepage counters), the enclave supervisor (against a stand-in
nitro-cli script) and the canary's signer filter (against eth-account signatures). The key
policy filter plugin is tested in test_key_policy.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "roles"


def _make_repo(root: Path) -> None:
    (root / "enclave").mkdir(parents=True)
    (root / "enclave/Dockerfile").write_text("FROM scratch\n")
    (root / "enclave/entrypoint.sh").write_text("#!/bin/sh\n")
    package = root / "enclave_app"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print('hi')\n")
    (package / "__pycache__/x.cpython-311.pyc").write_bytes(b"junk")
    (root / "requirements").mkdir()
    (root / "requirements/enclave.txt").write_text("cbor2==6.2.1 --hash=sha256:00\n")


def _build_context(root: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = ROLES / "enclave/files/build_context.py"
    return subprocess.run(
        [sys.executable, str(script), "--repo-root", str(root), "--output", str(output), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _pack(root: Path, output: Path, *extra: str) -> dict[str, Any]:
    result = _build_context(root, output, *extra)
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repo_with_wheels(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose lock pins two wheels by hash, and a cache holding them and more."""
    repo = tmp_path / "repo"
    _make_repo(repo)
    cache = tmp_path / "wheels"
    cache.mkdir()
    wheels = {}
    for name in ("alpha-1.0-py3-none-any.whl", "beta-2.0-cp311-abi3-manylinux2014_x86_64.whl"):
        (cache / name).write_bytes(name.encode() * 3)
        wheels[name] = hashlib.sha256(name.encode() * 3).hexdigest()
    (cache / "beta-2.0-cp311-abi3-win_amd64.whl").write_bytes(b"not pinned")
    (repo / "requirements/enclave.txt").write_text(
        "alpha==1.0 \\\n"
        f"    --hash=sha256:{wheels['alpha-1.0-py3-none-any.whl']}\n"
        "    # via enclave\n"
        "beta==2.0 \\\n"
        f"    --hash=sha256:{'0' * 64} \\\n"
        f"    --hash=sha256:{wheels['beta-2.0-cp311-abi3-manylinux2014_x86_64.whl']}\n"
    )
    return repo, cache


@pytest.mark.process
def test_build_context_carries_exactly_the_pinned_wheels_and_the_rendered_toml(
    tmp_path: Path,
) -> None:
    repo, cache = _repo_with_wheels(tmp_path)
    toml = tmp_path / "enclave.toml"
    toml.write_text("[server]\nport = 5000\n")
    policy = tmp_path / "policy.json"
    policy.write_text("{}\n")
    info = _pack(
        repo,
        tmp_path / "ctx.tar.gz",
        "--enclave-toml",
        str(toml),
        "--wheel-dir",
        str(cache),
        "--extra",
        f"{policy}=policy.json",
    )
    assert info["wheels"] == [
        "alpha-1.0-py3-none-any.whl",
        "beta-2.0-cp311-abi3-manylinux2014_x86_64.whl",
    ]
    with tarfile.open(tmp_path / "ctx.tar.gz") as archive:
        names = set(archive.getnames())
        member = archive.extractfile("enclave.toml")
        assert member is not None
        assert member.read() == toml.read_bytes()
    assert {"enclave.toml", "policy.json", "wheels/alpha-1.0-py3-none-any.whl"} <= names
    assert "wheels/beta-2.0-cp311-abi3-win_amd64.whl" not in names


@pytest.mark.process
def test_build_context_refuses_a_pin_without_a_matching_wheel(tmp_path: Path) -> None:
    repo, cache = _repo_with_wheels(tmp_path)
    (cache / "alpha-1.0-py3-none-any.whl").write_bytes(b"tampered")
    result = _build_context(repo, tmp_path / "x.tar.gz", "--wheel-dir", str(cache))
    assert result.returncode == 1
    assert "no wheel in" in result.stderr
    assert "alpha==1.0" in result.stderr


@pytest.mark.process
def test_build_context_is_deterministic_and_tracks_sources(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _make_repo(repo)
    first = _pack(repo, tmp_path / "a.tar.gz")
    source = repo / "enclave_app/__main__.py"
    later = source.stat().st_mtime + 3600  # a later mtime must not change the archive
    os.utime(source, (later, later))
    second = _pack(repo, tmp_path / "b.tar.gz")
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        names = archive.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in archive.getmembers())
    assert names == sorted(names)
    assert set(names) == {
        "Dockerfile",
        "entrypoint.sh",
        "enclave_app/__init__.py",
        "enclave_app/__main__.py",
        "requirements-enclave.txt",
    }
    assert first["requirements"] == "requirements/enclave.txt"
    (repo / "enclave_app/__main__.py").write_text("print('changed')\n")
    assert _pack(repo, tmp_path / "c.tar.gz")["sha256"] != first["sha256"]


@pytest.mark.process
def test_build_context_refuses_a_missing_dockerfile(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _make_repo(repo)
    (repo / "enclave/Dockerfile").unlink()
    result = _build_context(repo, tmp_path / "x")
    assert result.returncode == 1
    assert "Dockerfile does not exist" in result.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("content", "ok"),
    [
        ("memory_mib: 1024\ncpu_count: 2\n", True),
        ("memory_mib: 1024\ncpu_pool: 2,3\n", True),
        ("memory_mib: 1024\ncpu_count: 2\ncpu_pool: 2,3\n", False),
        ("memory_mib: 1024\n", False),
        ("memory_mib: 32\ncpu_count: 2\n", False),
        ("memory_mib: 1024\ncpu_count: 2\nextra: 1\n", False),
        ("memory_mib: 1024\ncpu_pool: two\n", False),
    ],
)
def test_allocator_check(tmp_path: Path, content: str, ok: bool) -> None:
    pytest.importorskip("yaml")
    config = tmp_path / "allocator.yaml"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, str(ROLES / "nitro_simulator/files/allocator_check.py"), str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert result.stderr.startswith("allocator config refused:")


FAKE_NITRO_CLI = """#!/bin/sh
# Stand-in for nitro-cli: one enclave whose existence is the file $STATE.
case "$1" in
  run-enclave) echo "$@" > "$STATE.args"; touch "$STATE"; echo '{"State": "RUNNING"}' ;;
  describe-enclaves)
    if [ -f "$STATE" ]; then echo '[{"EnclaveName": "nw", "State": "RUNNING"}]'
    else echo '[]'; fi ;;
  terminate-enclave) rm -f "$STATE"; echo '{"Terminated": true}' ;;
  *) exit 2 ;;
esac
"""


def _supervise(tmp_path: Path) -> tuple[subprocess.Popen[str], socket.socket, Path]:
    cli = tmp_path / "nitro-cli"
    cli.write_text(FAKE_NITRO_CLI)
    cli.chmod(0o755)
    state = tmp_path / "enclave"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    env = {**os.environ, "STATE": str(state), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROLES / "enclave/files/enclave_supervise.py"),
            "--nitro-cli",
            str(cli),
            "--name",
            "nw",
            "--eif-path",
            "/x.eif",
            "--cpu-count",
            "2",
            "--memory",
            "512",
            "--enclave-cid",
            "16",
            "--interval",
            "0.2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, notify, state


@pytest.mark.process
def test_supervisor_notifies_ready_and_fails_when_the_enclave_dies(tmp_path: Path) -> None:
    process, notify, state = _supervise(tmp_path)
    try:
        assert notify.recv(64) == b"READY=1"
        assert state.exists()
        args = (tmp_path / "enclave.args").read_text().split()
        assert args[args.index("--enclave-cid") + 1] == "16"
        assert "--debug-mode" not in args
        time.sleep(0.5)
        assert process.poll() is None  # still supervising a running enclave
        state.unlink()  # the enclave dies
        assert process.wait(timeout=20) == 1
        assert process.stdout is not None
        assert "no longer running" in process.stdout.read()
    finally:
        notify.close()
        if process.poll() is None:
            process.kill()


@pytest.mark.process
def test_supervisor_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, notify, _state = _supervise(tmp_path)
    try:
        assert notify.recv(64) == b"READY=1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        notify.close()
        if process.poll() is None:
            process.kill()


@pytest.mark.process
@pytest.mark.parametrize(
    ("memory_mib", "pools"),
    [
        (1024, {1048576: 1, 2048: 0}),
        (1536, {1048576: 1, 2048: 256}),
        (512, {1048576: 0, 2048: 256}),
    ],
)
def test_simulated_allocator_reserves_gib_pages_first(
    tmp_path: Path, memory_mib: int, pools: dict[int, int]
) -> None:
    pytest.importorskip("yaml")
    config = tmp_path / "allocator.yaml"
    config.write_text(f"memory_mib: {memory_mib}\ncpu_count: 4\n")
    sysfs = tmp_path / "sys"
    result = subprocess.run(
        [
            sys.executable,
            str(ROLES / "nitro_simulator/files/allocator_check.py"),
            str(config),
            "--sysfs-root",
            str(sysfs),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for size_kb, pages in pools.items():
        counter = sysfs / f"kernel/mm/hugepages/hugepages-{size_kb}kB/nr_hugepages"
        assert int(counter.read_text()) == pages


@pytest.fixture(scope="module")
def signatures() -> ModuleType:
    pytest.importorskip("ansible")
    return _load("nw_signature_filters", ROLES / "parent_relay/filter_plugins/signatures.py")


def test_message_signer_filter_recovers_the_eth_account_signer(signatures: ModuleType) -> None:
    from eth_account import Account
    from eth_account.messages import encode_defunct

    account = Account.create()
    message = "nitro-wallet canary nitro-host-1 2026-11-30T00:00:00+00:00"
    signed = Account.sign_message(encode_defunct(text=message), account.key)
    signature = "0x" + signed.signature.hex().removeprefix("0x")
    assert signatures.message_signer(signature, message) == account.address
    assert signatures.message_signer(signature, message + "!") != account.address
    with pytest.raises(Exception, match="not a valid signature"):
        signatures.message_signer("0x1234", message)


@pytest.mark.process
def test_cluster_aws_services_stop_only_their_own_processes(tmp_path: Path) -> None:
    """A pid file naming a live process that is not the service (a recycled pid) is stale:
    not "running", and `stop` leaves that process alone."""
    aws = _load("nw_cluster_aws_services", ROOT / "molecule/cluster/aws_services.py")
    directory = tmp_path / "aws"
    directory.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    # A stand-in KMS: its command line holds the directory, as `nitro-sim kms --state-dir` does.
    aws._spawn(directory, "kms", [*sleep, str(directory)])
    kms = int((directory / "kms.pid").read_text())
    stranger = subprocess.Popen(sleep, start_new_session=True)
    try:
        (directory / "dynamodb.pid").write_text(f"{stranger.pid}\n")
        assert aws._running(directory, "kms") == kms
        assert aws._running(directory, "dynamodb") is None
        aws.stop(directory)
        assert stranger.poll() is None
        assert not (directory / "dynamodb.pid").exists()
        assert not (directory / "kms.pid").exists()
        deadline = time.monotonic() + 10
        reaped, status = os.waitpid(kms, os.WNOHANG)
        while reaped == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            reaped, status = os.waitpid(kms, os.WNOHANG)
        assert reaped == kms
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGTERM
    finally:
        stranger.kill()
        stranger.wait(timeout=10)
