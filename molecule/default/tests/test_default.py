"""Verify the whole appliance on the simulated host (molecule scenario `default`).

Runs on the controller with testinfra (the `host` fixture reaches the podman host). The
relay is reached from inside the host with curl; signatures are checked on the controller
with eth-account. The last test runs the converge playbook again in check mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

SERVICES = (
    "nitro-sim-kms.service",
    "nitro-sim-imds.service",
    "nitro-enclaves-allocator.service",
    "vsock-proxy@kms.service",
    "nitro-wallet-enclave.service",
    "nitro-wallet-relay.service",
)
RELAY_VENV = "/opt/nitro-wallet/relay/venv"
RELEASES = "/opt/nitro-wallet/releases"


@pytest.fixture(scope="module")
def relay_config(host: Any) -> dict[str, Any]:
    # The test host's connection is root already (the image has no sudo).
    return tomllib.loads(host.file("/etc/nitro-wallet/relay.toml").content_string)


@pytest.fixture(scope="module")
def relay_url(relay_config: dict[str, Any]) -> str:
    relay = relay_config["relay"]
    return f"http://{relay['listen_host']}:{relay['listen_port']}"


# The development bearer token playbooks/local_site.yml made on this controller
# (python -m nitro_sim.dev_auth build/dev-auth) and gave the relay as a token hash.
DEV_TOKEN_FILE = Path(__file__).resolve().parents[3] / "build" / "dev-auth" / "api-token"


def curl_json(
    host: Any, method: str, url: str, body: object | None = None, *, token: bool = True
) -> tuple[int, Any]:
    command = ["curl", "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-X", method, url]
    if token:
        bearer = DEV_TOKEN_FILE.read_text().strip()
        command[1:1] = ["-H", f"Authorization: Bearer {bearer}"]
    if body is not None:
        command[1:1] = ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    result = host.run(" ".join(_quote(part) for part in command))
    assert result.rc == 0, result.stderr
    payload, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(payload) if payload else None


def _quote(part: str) -> str:
    return "'" + part.replace("'", "'\\''") + "'"


@pytest.mark.parametrize("name", SERVICES)
def test_service_running_and_enabled(host: Any, name: str) -> None:
    service = host.service(name)
    journal = host.run(f"journalctl -u {name} -n 40 --no-pager").stdout
    assert service.is_running or name == "nitro-enclaves-allocator.service", journal
    assert service.is_enabled, journal
    assert service.systemd_properties["ActiveState"] == "active", journal


def test_allocator_config_leaves_room_for_the_probe_enclave(host: Any) -> None:
    allocator = host.file("/etc/nitro_enclaves/allocator.yaml")
    assert (allocator.user, allocator.mode) == ("root", 0o644)
    content = allocator.content_string
    assert "memory_mib: 1024" in content
    assert "cpu_count: 4" in content
    assert "cpu_pool" not in content


def test_hugepages_left_to_the_allocator(host: Any) -> None:
    """The role sets no vm.nr_hugepages; the allocator's reservation (1 GiB pages first)
    shows in the hugepage counters, which the simulator keeps under its sysfs root."""
    assert not host.file("/etc/sysctl.d/99-nitro-enclaves.conf").exists
    pools = "/var/lib/nitro-sim/sysfs/kernel/mm/hugepages"
    gib = host.file(f"{pools}/hugepages-1048576kB/nr_hugepages").content_string.strip()
    mib2 = host.file(f"{pools}/hugepages-2048kB/nr_hugepages").content_string.strip()
    assert (int(gib), int(mib2)) == (1, 0)


def test_vsock_proxy_runs_unprivileged_with_the_kms_concurrency_as_workers(host: Any) -> None:
    allowlist = host.file("/etc/nitro_enclaves/vsock-proxy.yaml").content_string
    assert 'allowlist:\n  - {address: "127.0.0.1", port: 14566}' in allowlist
    env = host.file("/etc/nitro_enclaves/vsock-proxy.d/kms.env").content_string
    assert "VSOCK_PROXY_LOCAL_PORT=8000" in env
    assert "VSOCK_PROXY_WORKERS=8" in env
    properties = host.service("vsock-proxy@kms.service").systemd_properties
    assert properties["User"] == "vsock-proxy"
    assert properties["NoNewPrivileges"] == "yes"
    proxy = host.process.get(user="vsock-proxy", comm="nitro-sim")
    assert "--num_workers" in proxy.args
    assert proxy.args.split()[-1] == "8"


def test_relay_config_file_is_private(host: Any, relay_config: dict[str, Any]) -> None:
    config = host.file("/etc/nitro-wallet/relay.toml")
    assert (config.user, config.group, config.mode) == ("root", "nitro-wallet", 0o640)
    assert relay_config["relay"]["listen_host"] == "127.0.0.1"
    assert relay_config["kms"]["key_id"].startswith("arn:aws:kms:us-east-1:")
    assert relay_config["enclave"]["transport"] == "unix:/var/lib/nitro-sim/vsock"


def test_relay_user_is_a_system_user_in_group_ne(host: Any) -> None:
    user = host.user("nitro-wallet")
    assert user.exists
    assert "ne" in user.groups
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000


SIM_STATE = "/var/lib/nitro-sim"
#: What the relay's user may do to a path, run as that user (stdlib python3 only).
_AS_RELAY_USER = (
    "import socket, sys\n"
    "kind, path = sys.argv[1], sys.argv[2]\n"
    "if kind == 'connect':\n"
    "    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)\n"
    "else:\n"
    "    open(path, 'rb').read(1)\n"
)


def _as_relay_user(host: Any, kind: str, path: str) -> Any:
    return host.run(
        f"runuser -u nitro-wallet -- python3 -I -c {_quote(_AS_RELAY_USER)} {kind} {_quote(path)}"
    )


def test_the_relay_user_reaches_the_enclave_but_not_its_nsm_or_the_ca_keys(host: Any) -> None:
    """As on hardware: the NSM is the enclave's and the PKI keys are not the parent's."""
    nsm_sockets = host.check_output(f"find {SIM_STATE}/enclaves -name nsm.sock").split()
    assert len(nsm_sockets) == 1, nsm_sockets
    reach = _as_relay_user(host, "connect", f"{SIM_STATE}/vsock/16_5000.sock")
    assert reach.rc == 0, reach.stderr  # the positive control: the relay's own path
    for kind, path in [
        ("connect", nsm_sockets[0]),
        ("read", f"{SIM_STATE}/ca/intermediate.key"),
        ("read", f"{SIM_STATE}/ca/root.key"),
        ("read", f"{SIM_STATE}/principals.json"),
    ]:
        refused = _as_relay_user(host, kind, path)
        assert refused.rc != 0, path
        assert "PermissionError" in refused.stderr, (path, refused.stderr)
    for private in ("ca", "enclaves", "kms"):
        directory = host.file(f"{SIM_STATE}/{private}")
        assert (directory.user, directory.group, directory.mode) == ("root", "root", 0o700)


def test_relay_unit_is_hardened(host: Any) -> None:
    properties = host.service("nitro-wallet-relay.service").systemd_properties
    assert properties["User"] == "nitro-wallet"
    assert properties["NoNewPrivileges"] == "yes"
    assert properties["ProtectSystem"] == "strict"
    assert properties["PrivateTmp"] == "yes"
    assert "/var/lib/nitro-wallet" in properties["ReadWritePaths"]


def test_relay_listens_on_loopback_only(host: Any, relay_config: dict[str, Any]) -> None:
    port = relay_config["relay"]["listen_port"]
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening


def test_production_relay_install_holds_no_simulator(host: Any) -> None:
    """The relay's virtualenv has the nitro-wallet-relay wheel only: no nitro_sim module, no
    stand-in nitro-cli or vsock-proxy, no operator package; the simulator lives elsewhere."""
    probe = host.run(
        f"{RELAY_VENV}/bin/python -c "
        "'import importlib.util as u, json; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        '["parent_app", "nitro_sim", "nitro_wallet", "enclave_app.ops"]}))\''
    )
    assert probe.rc == 0, probe.stderr
    assert json.loads(probe.stdout) == {
        "parent_app": True,
        "nitro_sim": False,
        "nitro_wallet": False,
        "enclave_app.ops": False,
    }
    leftovers = host.run(f"find {RELAY_VENV} -path '*nitro_sim*' -print").stdout.split()
    assert leftovers == []
    for script in ("nitro-cli", "vsock-proxy", "nitro-sim", "nitro-wallet"):
        assert not host.file(f"{RELAY_VENV}/bin/{script}").exists
    assert host.file("/opt/nitro-sim/venv/bin/nitro-sim").exists


def test_host_fetched_the_release_and_never_built(host: Any) -> None:
    """enclave_build_does_not_run_on_signing_hosts: no build context, no Docker."""
    current = host.file(f"{RELEASES}/current")
    assert current.is_symlink
    assert current.linked_to == f"{RELEASES}/local"
    release = json.loads(host.file(f"{RELEASES}/local/release.json").content_string)
    eif = host.file(f"{RELEASES}/local/nitro-wallet.eif")
    assert eif.sha256sum == release["eif_sha256"]
    assert not host.file("/opt/nitro-wallet/enclave/build").exists
    assert not host.exists("docker")


def test_enclave_runs_the_trusted_release(host: Any) -> None:
    pcrs = json.loads(host.file("/etc/nitro-wallet/pcrs.json").content_string)
    release = json.loads(host.file(f"{RELEASES}/local/release.json").content_string)
    assert pcrs["PCR0"] == release["measurements"]["PCR0"]
    enclaves = json.loads(host.check_output("nitro-cli describe-enclaves"))
    running = [e for e in enclaves if e["EnclaveName"] == "nitro-wallet"]
    assert len(running) == 1
    assert running[0]["State"] == "RUNNING"
    assert running[0]["EnclaveCID"] == 16
    assert running[0]["Flags"] == "NONE"  # not debug mode
    assert running[0]["Measurements"]["PCR0"].lower() == pcrs["PCR0"]
    described = json.loads(
        host.check_output(f"nitro-cli describe-eif --eif-path {RELEASES}/current/nitro-wallet.eif")
    )
    assert described["Measurements"]["PCR0"].lower() == pcrs["PCR0"]


def test_sealed_policy_pins_the_release_certificate(host: Any) -> None:
    """The release is signed (PCR8) and the policy on the key is sealed: it pins that PCR8
    and leaves no principal able to put another policy (applied once, lockout check
    bypassed on purpose)."""
    from nitro_wallet.key_policy import validate_key_policy  # noqa: PLC0415 - controller

    release = json.loads(host.file(f"{RELEASES}/local/release.json").content_string)
    assert release["signed"] is True
    pcr8 = release["measurements"]["PCR8"]
    policy_file = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "artifacts/kms-key-policy.json"
    summary = validate_key_policy(json.loads(policy_file.read_text()), allow_debug=False)
    assert summary.mode == "sealed"
    assert summary.pcr8s == [pcr8]
    assert summary.to_json()["policy_holders"] == []
    enclaves = json.loads(host.check_output("nitro-cli describe-enclaves"))
    assert [e["Measurements"]["PCR8"].lower() for e in enclaves] == [pcr8]


def test_readyz(host: Any, relay_url: str) -> None:
    status, body = curl_json(host, "GET", f"{relay_url}/readyz")
    assert status == 200
    assert body["status"] == "ready"


def test_without_a_token_the_relay_refuses_with_401(host: Any, relay_url: str) -> None:
    status, body = curl_json(host, "POST", f"{relay_url}/v1/accounts", {}, token=False)
    assert status == 401, body
    assert body["error"]["code"] == "unauthenticated"


def test_account_creation_and_eip1559_signature_recover_to_the_address(
    host: Any, relay_url: str
) -> None:
    status, account = curl_json(host, "POST", f"{relay_url}/v1/accounts", {})
    assert status == 201, account
    address = account["address"]
    assert address.startswith("0x")
    assert len(address) == 42
    transaction = {
        "type": "0x2",
        "chainId": "0x1",
        "nonce": "0x0",
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": "0xde0b6b3a7640000",
        "gas": "0x5208",
        "maxFeePerGas": "0x4a817c800",
        "maxPriorityFeePerGas": "0x3b9aca00",
        "data": "0x",
    }
    status, signed = curl_json(
        host,
        "POST",
        f"{relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
        {"transaction": transaction},
    )
    assert status == 200, signed
    raw = signed["raw_transaction"]
    assert raw.startswith("0x02")  # EIP-1559 envelope
    assert Account.recover_transaction(raw) == address


def test_the_demo_walkthrough_ends_with_a_verified_stamped_signature(relay_url: str) -> None:
    """What `make demo` runs once the host has converged: scripts/walkthrough.sh with the
    development credentials (build/dev-auth), from the controller. It must end with a
    message signed under an X-Stamp (nitro-wallet stamp) that eth-account recovers to the
    account, after the 401 and the refused float amount it shows on the way."""
    project = Path(__file__).resolve().parents[3]
    walkthrough = project / "scripts" / "walkthrough.sh"
    result = subprocess.run(
        [str(walkthrough), relay_url, str(project / "build" / "dev-auth")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert '"code":"unauthenticated"' in output.replace(" ", ""), output
    assert "recovered sender" in output, output
    assert "X-Stamp: $(nitro-wallet stamp --key" in output, output
    lines = output.splitlines()
    signer = next(i for i, line in enumerate(lines) if line.startswith("recovered signer"))
    recovered, address = lines[signer].split()[-1], lines[signer + 1]
    assert address == f"account address  {recovered}", lines[signer : signer + 2]


def _wait_until_ready(host: Any, relay_url: str, timeout: float) -> float:
    """Seconds until /readyz answers 200 (asserts it does within ``timeout``)."""
    began = time.monotonic()
    while True:
        # While the relay restarts, nothing listens: curl fails to connect (not ready).
        answer = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' {_quote(relay_url)}/readyz")
        if answer.rc == 0 and answer.stdout.strip() == "200":
            return time.monotonic() - began
        assert time.monotonic() - began < timeout, f"not ready after {timeout} s: {answer}"
        time.sleep(1)


def _signs(host: Any, relay_url: str) -> None:
    """A new account (a KMS data key for the running image) signs a message that
    recovers to its address."""
    status, account = curl_json(host, "POST", f"{relay_url}/v1/accounts", {})
    assert status == 201, account
    status, signed = curl_json(
        host,
        "POST",
        f"{relay_url}/v1/accounts/{account['account_id']}/sign/message",
        {"message": "after the restart"},
    )
    assert status == 200, signed
    message = encode_defunct(text="after the restart")
    assert Account.recover_message(message, signature=signed["signature"]) == account["address"]


def test_a_killed_relay_is_restarted_by_systemd_and_signs_again(host: Any, relay_url: str) -> None:
    """Issue 9: the relay killed (SIGKILL) on a converged host comes back by itself."""
    before = host.check_output("systemctl show -p MainPID --value nitro-wallet-relay.service")
    host.run_test("systemctl kill -s KILL nitro-wallet-relay.service")
    took = _wait_until_ready(host, relay_url, timeout=90)
    after = host.check_output("systemctl show -p MainPID --value nitro-wallet-relay.service")
    assert after != before
    print(f"relay killed: ready again after {took:.1f} s")
    _signs(host, relay_url)


def test_a_killed_enclave_is_restarted_by_systemd_and_signs_again(
    host: Any, relay_url: str
) -> None:
    """Issue 9: the enclave's process killed (SIGKILL, as a crash) on a converged host: the
    supervisor sees it gone, systemd starts a new enclave, the relay signs again."""
    enclaves = json.loads(host.check_output("nitro-cli describe-enclaves"))
    assert len(enclaves) == 1
    host.run_test(f"kill -KILL {int(enclaves[0]['ProcessID'])}")
    began = time.monotonic()
    while True:
        now = json.loads(host.check_output("nitro-cli describe-enclaves"))
        if now and now[0]["EnclaveID"] != enclaves[0]["EnclaveID"]:
            break
        assert time.monotonic() - began < 120, "no new enclave after 120 s"
        time.sleep(1)
    _wait_until_ready(host, relay_url, timeout=120)
    print(f"enclave killed: ready again after {time.monotonic() - began:.1f} s")
    _signs(host, relay_url)


# A whole converge in check mode: minutes on a shared 2-core machine, more than pytest's 300 s.
@pytest.mark.timeout(1800)
def test_check_mode_on_a_converged_host_changes_nothing() -> None:
    """check_mode_fails: `ansible-playbook --check` of the converge playbook on this converged
    host reports no change and no failure (read-only commands run, restarts are skipped)."""
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": os.environ.get("ANSIBLE_CONFIG", str(ephemeral / "ansible.cfg")),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        [
            "ansible-playbook",
            "--check",
            "--inventory",
            os.environ["MOLECULE_INVENTORY_FILE"],
            f"--extra-vars=kms_key_policy_artifact_dir={ephemeral}/artifacts",
            f"--extra-vars=enclave_release_root={ephemeral}/releases",
            str(scenario / "converge.yml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert "{" in result.stdout, (result.stdout + result.stderr)[-4000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    changed = {
        (play["play"]["name"], task["task"]["name"], name)
        for play in report["plays"]
        for task in play["tasks"]
        for name, outcome in task["hosts"].items()
        if outcome.get("changed")
    }
    assert result.returncode == 0, result.stderr[-4000:]
    assert changed == set()
    assert all(stats["failures"] == 0 for stats in report["stats"].values())
    assert all(stats["changed"] == 0 for stats in report["stats"].values())
