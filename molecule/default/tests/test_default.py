"""Verify the whole appliance on the simulated host (molecule scenario `default`).

Runs on the controller with testinfra (the `host` fixture reaches the podman host). The
relay is reached from inside the host with curl; the signature is checked on the
controller with eth-account.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from eth_account import Account

SERVICES = (
    "nitro-sim-kms.service",
    "nitro-sim-imds.service",
    "nitro-enclaves-allocator.service",
    "vsock-proxy@kms.service",
    "nitro-wallet-enclave.service",
    "nitro-wallet-relay.service",
)


@pytest.fixture(scope="module")
def relay_config(host: Any) -> dict[str, Any]:
    # The test host's connection is root already (the image has no sudo).
    return tomllib.loads(host.file("/etc/nitro-wallet/relay.toml").content_string)


@pytest.fixture(scope="module")
def relay_url(relay_config: dict[str, Any]) -> str:
    relay = relay_config["relay"]
    return f"http://{relay['listen_host']}:{relay['listen_port']}"


def curl_json(host: Any, method: str, url: str, body: object | None = None) -> tuple[int, Any]:
    command = ["curl", "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-X", method, url]
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
    assert service.is_running or name == "nitro-enclaves-allocator.service"
    assert service.is_enabled
    assert host.run(f"systemctl is-active {name}").stdout.strip() == "active"


def test_allocator_config(host: Any) -> None:
    allocator = host.file("/etc/nitro_enclaves/allocator.yaml")
    assert allocator.user == "root"
    assert allocator.mode == 0o644
    content = allocator.content_string
    assert "memory_mib: 1024" in content
    assert "cpu_count: 2" in content
    assert "cpu_pool" not in content


def test_vsock_proxy_allowlist_holds_the_local_kms(host: Any) -> None:
    allowlist = host.file("/etc/nitro_enclaves/vsock-proxy.yaml").content_string
    assert 'allowlist:\n  - {address: "127.0.0.1", port: 14566}' in allowlist
    env = host.file("/etc/nitro_enclaves/vsock-proxy.d/kms.env").content_string
    assert "VSOCK_PROXY_LOCAL_PORT=8000" in env


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
    shown = host.run(
        "systemctl show nitro-wallet-relay.service "
        "-p User -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p ReadWritePaths"
    ).stdout
    properties = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert properties["User"] == "nitro-wallet"
    assert properties["NoNewPrivileges"] == "yes"
    assert properties["ProtectSystem"] == "strict"
    assert properties["PrivateTmp"] == "yes"
    assert "/var/lib/nitro-wallet" in properties["ReadWritePaths"]


def test_relay_listens_on_loopback_only(host: Any, relay_config: dict[str, Any]) -> None:
    port = relay_config["relay"]["listen_port"]
    listeners = host.run(f"ss -Hltn 'sport = :{port}'").stdout.split("\n")
    local_addresses = [line.split()[3] for line in listeners if line.strip()]
    assert local_addresses == [f"127.0.0.1:{port}"]


def test_enclave_runs_with_the_pcr0_of_the_facts(host: Any) -> None:
    pcrs = json.loads(host.file("/etc/nitro-wallet/pcrs.json").content_string)
    assert len(pcrs["PCR0"]) == 96
    enclaves = json.loads(host.check_output("nitro-cli describe-enclaves"))
    running = [e for e in enclaves if e["EnclaveName"] == "nitro-wallet"]
    assert len(running) == 1
    assert running[0]["State"] == "RUNNING"
    assert running[0]["EnclaveCID"] == 16
    assert running[0]["Flags"] == "NONE"  # not debug mode
    assert running[0]["Measurements"]["PCR0"].lower() == pcrs["PCR0"]
    eif = "/opt/nitro-wallet/enclave/nitro-wallet.eif"
    described = json.loads(host.check_output(f"nitro-cli describe-eif --eif-path {eif}"))
    assert described["Measurements"]["PCR0"].lower() == pcrs["PCR0"]


def test_readyz(host: Any, relay_url: str) -> None:
    status, body = curl_json(host, "GET", f"{relay_url}/readyz")
    assert status == 200
    assert body["status"] == "ready"


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
