"""Simulator fidelity for local users (issue 9: "the simulated NSM socket and CA key are
readable by the relay's user, so a parent process can get an attestation for its own
key").

A simulated host as roles/nitro_simulator lays it out (state 0750 root:ne, vsock 2770
root:ne, every service as root with the enclave unit's UMask=0007), then a real
unprivileged process in the vsock group, as the relay runs: it reaches the enclave's
vsock port (the positive control: the probe has the relay's access), and it can neither
open the enclave's NSM socket nor read the CA's keys, as on hardware.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_sim import statedir
from nitro_sim.stack import ENCLAVE_CID, ENCLAVE_PORT, LocalStack

pytestmark = pytest.mark.process

NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the venv's interpreter may sit under /root
#: Stdlib only: what an unprivileged local process can do to each path.
PROBE = r"""
import json, os, socket, sys
result = {}
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "connect":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
        elif kind == "read":
            with open(path, "rb") as f:
                f.read(1)
        else:
            os.listdir(path)
        result[path] = "ok"
    except OSError as e:
        result[path] = e.__class__.__name__
print(json.dumps({"ids": [os.getuid(), os.getgid(), sorted(os.getgroups())], "result": result}))
"""


def unused_gid() -> int:
    taken = {group.gr_gid for group in grp.getgrall()}
    return next(gid for gid in range(64100, 65000) if gid not in taken)


@pytest.fixture(scope="module")
def simulated_host() -> Iterator[tuple[LocalStack, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: services as root, the probe as an unprivileged user")
    if shutil.which("setpriv") is None or not SYSTEM_PYTHON.exists():
        pytest.skip("needs setpriv and /usr/bin/python3 to run a probe as another user")
    base = Path(tempfile.mkdtemp(prefix="nw-perm-", dir="/tmp"))
    base.chmod(0o755)  # like /var/lib: anyone may traverse to the state directory
    gid = unused_gid()
    stack = LocalStack(root=base)
    for loose in (statedir.enclaves_dir(stack.sim_dir), statedir.ca_dir(stack.sim_dir)):
        loose.mkdir(parents=True)  # an older layout, or another creation order, left these
        loose.chmod(0o755)  # open: the stack must tighten them
    previous = os.umask(0o007)  # the enclave unit's UMask=0007 (inherited by the stack)
    try:
        stack.start()
        sim = stack.sim_dir  # roles/nitro_simulator/tasks/configure.yml:
        os.chown(sim, 0, gid)
        sim.chmod(0o750)  # state directory root:ne 0750
        vsock = statedir.vsock_dir(sim)
        os.chown(vsock, 0, gid)
        vsock.chmod(0o2770)  # vsock root:ne 2770
        os.chown(vsock / f"{ENCLAVE_CID}_{ENCLAVE_PORT}.sock", 0, gid)
        yield stack, gid
    finally:
        os.umask(previous)
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def probe_as_relay_user(gid: int, checks: list[tuple[str, str]]) -> dict[str, object]:
    completed = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            f"--groups={gid}",
            "--inh-caps=-all",
            "--bounding-set=-all",
            str(SYSTEM_PYTHON),
            "-I",
            "-c",
            PROBE,
            json.dumps(checks),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    )
    answer: dict[str, object] = json.loads(completed.stdout)
    return answer


def test_the_relay_user_reaches_the_enclave_but_not_its_nsm_or_the_ca_keys(
    simulated_host: tuple[LocalStack, int],
) -> None:
    stack, gid = simulated_host
    record = stack.enclave_record()
    assert record is not None
    sim = stack.sim_dir
    enclave_socket = statedir.vsock_dir(sim) / f"{ENCLAVE_CID}_{ENCLAVE_PORT}.sock"
    nsm_socket = statedir.enclave_dir(sim, record["EnclaveID"]) / "nsm.sock"
    assert nsm_socket.is_socket()  # it exists: the refusal below is about permission
    ca = statedir.ca_dir(sim)
    checks = [
        ("connect", str(enclave_socket)),
        ("connect", str(nsm_socket)),
        ("read", str(ca / "intermediate.key")),
        ("read", str(ca / "root.key")),
        ("list", str(ca)),
        ("list", str(statedir.enclaves_dir(sim))),
        ("read", str(sim / "principals.json")),
    ]
    answer = probe_as_relay_user(gid, checks)
    assert answer["ids"] == [NOBODY, NOBODY, [gid]]
    result = answer["result"]
    assert isinstance(result, dict)
    assert result.pop(str(enclave_socket)) == "ok"  # the relay's path works
    assert result == dict.fromkeys(result, "PermissionError"), result


def test_the_modes_hold_on_disk(simulated_host: tuple[LocalStack, int]) -> None:
    stack, _ = simulated_host
    sim = stack.sim_dir
    record = stack.enclave_record()
    assert record is not None
    enclave = statedir.enclave_dir(sim, record["EnclaveID"])
    for private in (statedir.ca_dir(sim), statedir.enclaves_dir(sim), enclave):
        assert private.stat().st_mode & 0o777 == 0o700, private
    for key in ("root.key", "intermediate.key"):
        assert (statedir.ca_dir(sim) / key).stat().st_mode & 0o777 == 0o600
    assert (enclave / "nsm.sock").stat().st_mode & 0o777 == 0o600


def test_a_loose_ca_directory_is_tightened_on_load(tmp_path: Path) -> None:
    from nitro_sim.ca import SimCa

    ca_dir = tmp_path / "ca"
    SimCa.load_or_create(ca_dir)
    ca_dir.chmod(0o755)
    (ca_dir / "intermediate.key").chmod(0o644)
    SimCa.load_or_create(ca_dir)
    assert ca_dir.stat().st_mode & 0o777 == 0o700
    assert (ca_dir / "intermediate.key").stat().st_mode & 0o777 == 0o600


def test_init_makes_the_private_directories_private_and_tightens_loose_ones(
    tmp_path: Path,
) -> None:
    from nitro_sim.__main__ import init

    state = tmp_path / "sim"
    assert init(["--state-dir", str(state)]) == 0
    private = (statedir.ca_dir(state), statedir.enclaves_dir(state), state / "kms")
    for directory in private:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
        directory.chmod(0o755)  # as an older layout left them
    assert init(["--state-dir", str(state)]) == 0
    for directory in private:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
