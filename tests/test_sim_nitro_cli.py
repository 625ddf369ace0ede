"""The simulated nitro-cli, EIF and enclave runner, driven as real processes.

The enclave image used here is a small stand-in written into tmp_path: its
``enclave_app/__main__.py`` serves frames with the project's own wire/transport/nsm
modules (copied into the image) and answers a few diagnostic ops. The runner must run
whatever code the image holds, so this is a legitimate image.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_app import wire
from enclave_app.transport import Transport
from nitro_sim import eif, statedir
from nitro_sim.enclave_runner import netns_supported

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "nitro_sim.nitro_cli"]
ENCLAVE_ID_RE = re.compile(r"\Ai-[0-9a-f]{17}-enc[0-9a-f]{16}\Z")

STAND_IN_MAIN = '''
"""Stand-in enclave app for the simulator tests."""
import argparse
import os
import socket
import sys
import threading
import tomllib

import enclave_app
from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.nsm import nsm_from_environment
from enclave_app.transport import Transport

MARKER = "__MARKER__"


def tcp_connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return {"connected": True, "error": ""}
    except OSError as exc:
        return {"connected": False, "error": str(exc)}


def loopback_selftest():
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        return tcp_connect("127.0.0.1", listener.getsockname()[1])


def handle(request):
    params = request.params
    if request.op == "health":
        return {"status": "ok", "marker": MARKER}
    if request.op == "whoami":
        return {"file": enclave_app.__file__, "cwd": os.getcwd(), "path0": sys.path[0],
                "marker": MARKER}
    if request.op == "env":
        return {"env": dict(os.environ)}
    if request.op == "tcp":
        return tcp_connect(params["host"], params["port"])
    if request.op == "loopback":
        return loopback_selftest()
    if request.op == "pcr0":
        _locked, value = nsm_from_environment().describe_pcr(0)
        return {"pcr0": value.hex()}
    if request.op == "pcr":
        _locked, value = nsm_from_environment().describe_pcr(int(params["index"]))
        return {"value": value.hex()}
    if request.op == "exit":
        os._exit(7)
    raise EnclaveError(ErrorCode.UNKNOWN_OP, request.op)


def serve(conn):
    with conn:
        while True:
            body = wire.read_frame(conn)
            if body is None:
                return
            request = wire.parse_request(body)
            try:
                frame = wire.ok_frame(request.request_id, handle(request))
            except EnclaveError as exc:
                frame = wire.error_frame(request.request_id, exc)
            wire.write_frame(conn, frame)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    with open(args.config, "rb") as handle:
        port = tomllib.load(handle).get("server", {}).get("port", 5000)
    __BOOT__
    transport = Transport.unix(os.environ["NITRO_SIM_VSOCK_DIR"])
    listener = transport.listen(int(os.environ["NITRO_SIM_ENCLAVE_CID"]), port)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
'''


def make_image(root: Path, *, port: int = 5000, boot: str = "pass") -> tuple[Path, str]:
    """A docker dir with a stand-in enclave_app; returns (dir, its unique marker)."""
    marker = secrets.token_hex(8)
    package = root / "enclave_app"
    package.mkdir(parents=True)
    for name in ("errors.py", "wire.py", "transport.py", "nsm.py"):
        shutil.copy(REPO / "enclave_app" / name, package / name)
    (package / "__init__.py").write_text('"""stand-in image package"""\n')
    main_source = STAND_IN_MAIN.replace("__MARKER__", marker).replace("__BOOT__", boot)
    (package / "__main__.py").write_text(main_source)
    (root / "Dockerfile").write_text("FROM python:3.11-slim\nCOPY . /app\n")
    (root / "enclave.toml").write_text(f"[server]\nport = {port}\n")
    return root, marker


@pytest.fixture
def state() -> Iterator[Path]:
    # Short path: AF_UNIX socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="ns-", dir="/tmp"))
    yield directory
    subprocess.run(
        [*CLI, "terminate-enclave", "--all"], env=cli_env(directory), cwd=REPO,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)


def cli_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NITRO_SIM_ALLOCATOR_CONFIG"}
    env.update(
        NITRO_SIM_DIR=str(state_dir), NITRO_SIM_BOOT_TIMEOUT="20",
        PYTHONPATH=str(REPO),
    )  # fmt: skip
    env.update(extra)
    return env


def cli(state_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=cli_env(state_dir, **extra), cwd=REPO,
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def build(state_dir: Path, docker_dir: Path, output: Path, **extra: str) -> dict[str, Any]:
    result = cli(
        state_dir, "build-enclave", "--docker-uri", "nitro-wallet:test",
        "--docker-dir", str(docker_dir), "--output-file", str(output), **extra,
    )  # fmt: skip
    measurements: dict[str, Any] = ok_json(result)["Measurements"]
    return measurements


def run(state_dir: Path, eif_path: Path, *args: str, **extra: str) -> dict[str, Any]:
    result = cli(
        state_dir, "run-enclave", "--eif-path", str(eif_path), "--cpu-count", "2",
        "--memory", "256", *args, **extra,
    )  # fmt: skip
    described: dict[str, Any] = ok_json(result)
    return described


def call(state_dir: Path, cid: int, op: str, params: dict[str, Any] | None = None,
         port: int = 5000) -> dict[str, Any]:  # fmt: skip
    transport = Transport.unix(statedir.vsock_dir(state_dir))
    with transport.connect(cid, port, timeout=10) as sock:
        request = wire.Request(secrets.token_hex(4), op, params or {})
        wire.write_frame(sock, wire.request_frame(request))
        body = wire.read_frame(sock)
        assert body is not None
        return wire.parse_response(body, request.request_id)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def wait_until(condition: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def image(tmp_path: Path, state: Path) -> tuple[Path, str]:
    docker_dir, marker = make_image(tmp_path / "docker")
    output = tmp_path / "image.eif"
    build(state, docker_dir, output)
    return output, marker


# --- EIF -----------------------------------------------------------------------------


def _extend(pcr: bytes, data: bytes) -> bytes:
    return hashlib.sha384(pcr + hashlib.sha384(data).digest()).digest()


def test_build_is_deterministic_and_measures_every_source_byte(tmp_path: Path, state: Path) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = build(state, docker_dir, tmp_path / "a.eif", **epoch)
    (docker_dir / "enclave_app" / "__pycache__").mkdir()
    (docker_dir / "enclave_app" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    os.utime(docker_dir / "Dockerfile", (1, 1))
    second = build(state, docker_dir, tmp_path / "b.eif", **epoch)
    assert first == second
    assert (tmp_path / "a.eif").read_bytes() == (tmp_path / "b.eif").read_bytes()

    # Another build time changes the metadata, never the measurements.
    later = build(state, docker_dir, tmp_path / "c.eif", SOURCE_DATE_EPOCH="1800000000")
    assert later == first
    assert (tmp_path / "c.eif").read_bytes() != (tmp_path / "a.eif").read_bytes()

    # PCR1 follows the documented formula over the constant boot components.
    zero = bytes(48)
    assert first["HashAlgorithm"] == "Sha384 { ... }"
    assert first["PCR1"] == _extend(_extend(zero, eif.KERNEL_STUB), eif.BOOT_RAMDISK).hex()
    parsed = eif.read_eif(tmp_path / "a.eif")
    assert first["PCR2"] == _extend(zero, parsed.app_ramdisk).hex()

    # One byte changed in one source file: PCR0 and PCR2 change, PCR1 does not.
    main_py = docker_dir / "enclave_app" / "__main__.py"
    main_py.write_bytes(main_py.read_bytes().replace(b"Stand-in", b"Stand_in", 1))
    changed = build(state, docker_dir, tmp_path / "d.eif", **epoch)
    assert changed["PCR0"] != first["PCR0"]
    assert changed["PCR2"] != first["PCR2"]
    assert changed["PCR1"] == first["PCR1"]


def test_describe_eif_reports_the_real_fields(tmp_path: Path, state: Path) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    output = tmp_path / "wallet.eif"
    result = cli(
        state, "build-enclave", "--docker-uri", "nitro-wallet:1", "--docker-dir",
        str(docker_dir), "--output-file", str(output), "--name", "wallet", "--version", "2.5",
    )  # fmt: skip
    built = ok_json(result)["Measurements"]
    assert "Enclave Image successfully created." in result.stderr
    described = ok_json(cli(state, "describe-eif", "--eif-path", str(output)))
    assert described["Measurements"] == built
    assert described["IsSigned"] is False
    assert described["CheckCRC"] is True
    assert described["EifVersion"] == eif.EIF_VERSION
    assert (described["ImageName"], described["ImageVersion"]) == ("wallet", "2.5")
    metadata = described["Metadata"]
    assert set(metadata) == {
        "BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion",
        "DockerInfo",
    }  # fmt: skip
    assert metadata["BuildTool"] == "nitro-cli"
    assert metadata["DockerInfo"]["RepoTags"] == ["nitro-wallet:1"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
def test_corrupted_eif_is_refused(image: tuple[Path, str], state: Path, damage: str) -> None:
    path, _ = image
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    else:
        data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    described = cli(state, "describe-eif", "--eif-path", str(path))
    assert described.returncode != 0
    assert described.stderr.startswith("[ E35 ]")
    assert described.stdout == ""
    ran = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1", "--memory", "256")
    assert ran.returncode != 0
    assert "[ E35 ]" in ran.stderr
    assert ok_json(cli(state, "describe-enclaves")) == []


def test_build_without_docker_dir_explains_why(tmp_path: Path, state: Path) -> None:
    result = cli(state, "build-enclave", "--docker-uri", "x:1", "--output-file",
                 str(tmp_path / "x.eif"))  # fmt: skip
    assert result.returncode != 0
    assert "[ E01 ]" in result.stderr
    assert "--docker-dir" in result.stderr
    assert "Docker" in result.stderr
    assert not (tmp_path / "x.eif").exists()


def test_build_refuses_a_symlink_in_the_docker_dir(tmp_path: Path, state: Path) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    (docker_dir / "enclave_app" / "link.py").symlink_to("/etc/hostname")
    result = cli(state, "build-enclave", "--docker-uri", "x:1", "--docker-dir", str(docker_dir),
                 "--output-file", str(tmp_path / "x.eif"))  # fmt: skip
    assert result.returncode != 0
    assert "[ E48 ]" in result.stderr


# --- run / describe / terminate ------------------------------------------------------


def test_run_describe_terminate_lifecycle(image: tuple[Path, str], state: Path) -> None:
    path, marker = image
    measured = ok_json(cli(state, "describe-eif", "--eif-path", str(path)))["Measurements"]
    started = run(state, path, "--enclave-cid", "21", "--enclave-name", "wallet")
    assert list(started) == [
        "EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs",
        "MemoryMiB",
    ]  # fmt: skip
    assert ENCLAVE_ID_RE.match(started["EnclaveID"])
    assert (started["EnclaveName"], started["EnclaveCID"]) == ("wallet", 21)
    assert (started["NumberOfCPUs"], started["MemoryMiB"]) == (2, 256)
    assert len(started["CPUIDs"]) == 2
    assert alive(started["ProcessID"])

    assert call(state, 21, "health") == {"status": "ok", "marker": marker}
    assert call(state, 21, "pcr0")["pcr0"] == measured["PCR0"]

    listed = ok_json(cli(state, "describe-enclaves"))
    assert len(listed) == 1
    entry = listed[0]
    assert entry["EnclaveID"] == started["EnclaveID"]
    assert (entry["State"], entry["Flags"]) == ("RUNNING", "NONE")
    assert entry["Measurements"] == measured
    directory = statedir.enclave_dir(state, started["EnclaveID"])
    record = json.loads((directory / "state.json").read_text())
    enclave_pid = record["EnclaveProcessID"]
    assert alive(enclave_pid)
    assert record["Isolation"] in ("netns", "none")

    stopped = ok_json(cli(state, "terminate-enclave", "--enclave-id", started["EnclaveID"]))
    assert stopped == {"EnclaveName": "wallet", "EnclaveID": started["EnclaveID"],
                       "Terminated": True}  # fmt: skip
    assert wait_until(lambda: not alive(started["ProcessID"]) and not alive(enclave_pid))
    assert not directory.exists()
    assert not Transport.unix(statedir.vsock_dir(state)).unix_path(21, 5000).exists()
    assert ok_json(cli(state, "describe-enclaves")) == []


def test_debug_mode_zeroes_the_pcrs(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    started = run(state, path, "--debug-mode")
    cid = started["EnclaveCID"]
    assert cid >= 4
    assert call(state, cid, "pcr0")["pcr0"] == bytes(48).hex()
    listed = ok_json(cli(state, "describe-enclaves"))
    assert [e["Flags"] for e in listed] == ["DEBUG_MODE"]
    stopped = cli(state, "terminate-enclave", "--enclave-name", started["EnclaveName"])
    assert ok_json(stopped)["Terminated"] is True


def test_cid_and_name_conflicts_are_refused(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    first = run(state, path, "--enclave-cid", "30", "--enclave-name", "one")
    same_cid = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1",
                   "--memory", "256", "--enclave-cid", "30", "--enclave-name", "two")  # fmt: skip
    assert same_cid.returncode != 0
    assert "CID 30 is already in use" in same_cid.stderr
    same_name = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1",
                    "--memory", "256", "--enclave-cid", "31", "--enclave-name", "one")  # fmt: skip
    assert same_name.returncode != 0
    assert "'one' is already running" in same_name.stderr
    for bad_cid in ("3", "0", str(2**32 - 1)):
        reserved = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1",
                       "--memory", "256", "--enclave-cid", bad_cid)  # fmt: skip
        assert reserved.returncode != 0
        assert "[ E03 ]" in reserved.stderr
    no_cpu = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "0",
                 "--memory", "256")  # fmt: skip
    assert "[ E03 ]" in no_cpu.stderr
    tiny = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1", "--memory", "1")
    assert "[ E26 ]" in tiny.stderr
    listed = ok_json(cli(state, "describe-enclaves"))
    assert [e["EnclaveID"] for e in listed] == [first["EnclaveID"]]
    # A second enclave with its own CID and name runs next to the first one.
    second = run(state, path, "--enclave-cid", "31", "--enclave-name", "two")
    assert set(first["CPUIDs"]).isdisjoint(second["CPUIDs"])
    assert call(state, 31, "health")["status"] == "ok"
    unknown = cli(
        state, "terminate-enclave", "--enclave-id", "i-00000000000000000-enc0000000000000000"
    )
    assert unknown.returncode != 0
    assert "[ E39 ]" in unknown.stderr


def test_allocator_limits_are_enforced(
    image: tuple[Path, str], state: Path, tmp_path: Path
) -> None:
    path, _ = image
    allocator = tmp_path / "allocator.yaml"
    allocator.write_text("---\nmemory_mib: 512\ncpu_count: 2\n")
    limits = {"NITRO_SIM_ALLOCATOR_CONFIG": str(allocator)}
    too_many_cpus = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "3",
                        "--memory", "256", **limits)  # fmt: skip
    assert too_many_cpus.returncode != 0
    assert "[ E22 ]" in too_many_cpus.stderr
    too_much_memory = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1",
                          "--memory", "1024", **limits)  # fmt: skip
    assert too_much_memory.returncode != 0
    assert "[ E27 ]" in too_much_memory.stderr
    first = run(state, path, **limits)  # 2 CPUs, 256 MiB: the whole CPU pool
    assert sorted(first["CPUIDs"]) == [1, 2]
    exhausted = cli(state, "run-enclave", "--eif-path", str(path), "--cpu-count", "1",
                    "--memory", "128", **limits)  # fmt: skip
    assert "[ E22 ]" in exhausted.stderr
    missing = cli(state, "describe-enclaves")
    assert missing.returncode == 0
    absent = cli(
        state,
        "run-enclave",
        "--eif-path",
        str(path),
        "--cpu-count",
        "1",
        "--memory",
        "128",
        NITRO_SIM_ALLOCATOR_CONFIG=str(tmp_path / "nope.yaml"),
    )
    assert absent.returncode != 0


def test_the_image_code_is_what_runs(image: tuple[Path, str], state: Path) -> None:
    path, marker = image
    # The CLI's own PYTHONPATH points at the repository's enclave_app: it must not win.
    started = run(state, path, PYTHONPATH=str(REPO))
    who = call(state, started["EnclaveCID"], "whoami")
    image_dir = statedir.enclave_dir(state, started["EnclaveID"]) / "image"
    assert who["marker"] == marker
    assert Path(who["file"]).resolve() == (image_dir / "enclave_app" / "__init__.py").resolve()
    assert Path(who["cwd"]).resolve() == image_dir.resolve()
    assert Path(who["path0"]).resolve() == image_dir.resolve()


def test_the_enclave_gets_a_clean_environment(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    leaks = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00",
        "AWS_SECRET_ACCESS_KEY": "parent-secret-must-not-leak",
        "AWS_SESSION_TOKEN": "token",
        "AWS_PROFILE": "parent",
        "PYTHONSTARTUP": "/tmp/evil.py",
        "SOME_PARENT_SETTING": "x",
    }
    started = run(state, path, **leaks)
    env = call(state, started["EnclaveCID"], "env")["env"]
    assert not [key for key in env if key.startswith("AWS_")]
    assert "parent-secret-must-not-leak" not in json.dumps(env)
    assert "SOME_PARENT_SETTING" not in env
    assert "PYTHONSTARTUP" not in env
    assert env["NITRO_SIM_VSOCK_DIR"] == str(statedir.vsock_dir(state))
    assert env["NITRO_SIM_NSM_SOCKET"].endswith("/nsm.sock")
    allowed = {"PATH", "LANG", "NITRO_SIM_VSOCK_DIR", "NITRO_SIM_NSM_SOCKET",
               "NITRO_SIM_ENCLAVE_CID", "PWD"}  # fmt: skip
    assert set(env) <= allowed
    image_dir = statedir.enclave_dir(state, started["EnclaveID"]) / "image"
    assert env.get("PWD", str(image_dir)) == str(image_dir)


def _tcp_listener() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                conn.close()
            except OSError:
                continue

    threading.Thread(target=accept_forever, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.skipif(not netns_supported(), reason="user/network namespaces unavailable")
def test_the_enclave_has_no_network_of_its_own(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    listener, port = _tcp_listener()
    with listener:
        isolated = run(state, path, "--enclave-name", "isolated", NITRO_SIM_ISOLATION="netns")
        record = statedir.read_record(statedir.enclave_dir(state, isolated["EnclaveID"]))
        assert record is not None
        assert record["Isolation"] == "netns"
        reach = call(state, isolated["EnclaveCID"], "tcp", {"host": "127.0.0.1", "port": port})
        assert reach["connected"] is False
        # Its own loopback is up: the in-enclave KMS forwarder can listen on 127.0.0.1.
        assert call(state, isolated["EnclaveCID"], "loopback")["connected"] is True
        # Control: without isolation the same probe reaches the parent's listener.
        open_net = run(state, path, "--enclave-name", "open", NITRO_SIM_ISOLATION="none")
        reach = call(state, open_net["EnclaveCID"], "tcp", {"host": "127.0.0.1", "port": port})
        assert reach["connected"] is True


def test_a_dead_enclave_is_no_longer_listed(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    started = run(state, path)
    transport = Transport.unix(statedir.vsock_dir(state))
    with transport.connect(started["EnclaveCID"], 5000, timeout=10) as sock:
        wire.write_frame(sock, wire.request_frame(wire.Request("1", "exit", {})))
        assert sock.recv(1) == b""  # the enclave died without answering
    assert wait_until(lambda: not alive(started["ProcessID"]))
    assert ok_json(cli(state, "describe-enclaves")) == []
    log = statedir.logs_dir(state) / f"{started['EnclaveID']}.console.log"
    assert "exited with code 7" in log.read_text()
    assert not statedir.enclave_dir(state, started["EnclaveID"]).exists()


def test_a_boot_failure_is_reported(tmp_path: Path, state: Path) -> None:
    docker_dir, _ = make_image(tmp_path / "docker", boot='sys.exit("no config for you")')
    build(state, docker_dir, tmp_path / "broken.eif")
    result = cli(state, "run-enclave", "--eif-path", str(tmp_path / "broken.eif"),
                 "--cpu-count", "1", "--memory", "256")  # fmt: skip
    assert result.returncode != 0
    assert "[ E36 ]" in result.stderr
    log = next(statedir.logs_dir(state).glob("*.console.log"))
    assert "no config for you" in log.read_text()
    assert ok_json(cli(state, "describe-enclaves")) == []


def test_a_killed_runner_is_cleaned_up(image: tuple[Path, str], state: Path) -> None:
    path, _ = image
    started = run(state, path, "--enclave-cid", "40")
    directory = statedir.enclave_dir(state, started["EnclaveID"])
    enclave_pid = json.loads((directory / "state.json").read_text())["EnclaveProcessID"]
    os.kill(started["ProcessID"], signal.SIGKILL)
    assert wait_until(lambda: not alive(started["ProcessID"]))
    assert ok_json(cli(state, "describe-enclaves")) == []
    assert wait_until(lambda: not alive(enclave_pid))
    assert not directory.exists()
    # The CID is free again.
    again = run(state, path, "--enclave-cid", "40")
    assert call(state, 40, "health")["status"] == "ok"
    assert again["EnclaveID"] != started["EnclaveID"]


# --- nitro-sim dispatcher ------------------------------------------------------------


def test_nitro_sim_init_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "sim"
    command = [sys.executable, "-m", "nitro_sim", "init", "--state-dir", str(target)]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    assert first.returncode == 0, first.stderr
    root = (target / "ca" / "root.pem").read_bytes()
    principals = (target / "principals.json").read_bytes()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert (target / "ca" / "root.pem").read_bytes() == root
    assert (target / "principals.json").read_bytes() == principals
    assert first.stdout == second.stdout


def test_nitro_sim_dispatches_nitro_cli_and_refuses_unknown(tmp_path: Path, state: Path) -> None:
    dispatched = subprocess.run(
        [sys.executable, "-m", "nitro_sim", "nitro-cli", "describe-enclaves"],
        env=cli_env(state), cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(dispatched.stdout) == []
    unknown = subprocess.run([sys.executable, "-m", "nitro_sim", "frobnicate"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert unknown.returncode == 2
    assert "unknown command" in unknown.stderr


def test_eif_reader_rejects_garbage_without_crashing() -> None:
    for blob in (b"", b"NSIMEIF\x00", bytes(64), base64.b64encode(secrets.token_bytes(64))):
        with pytest.raises(eif.EifError):
            eif.parse_eif(blob)
