"""Guards of the Ansible appliance, each named after the defect of issue 10 it fixes, run for
real with ansible-playbook on the controller (hosts are the controller itself, connection
local): --limit refused before anything is touched, the relay's Python on Amazon Linux 2023,
hugepages left to the allocator, the SSM inventory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible_runner import ROOT, local_inventory, run_playbook

pytestmark = pytest.mark.process  # ansible-playbook runs as a process

PCR0 = "a1" * 48
PINS = {
    "nitro_wallet_key_policy_mode": "pcr0",
    "nitro_wallet_trusted_pcr0s": [PCR0],
    "kms_key_policy_admin_arns": ["arn:aws:iam::111122223333:role/admin"],
    "kms_key_policy_enclave_arns": ["arn:aws:iam::111122223333:role/parent"],
}


def test_key_policy_refuses_limit_and_says_why(tmp_path: Path) -> None:
    """limit_locks_the_fleet_out: applying the fleet's lock from a run limited to some hosts
    is refused before any credential is read or any host touched."""
    inventory = local_inventory(tmp_path / "inventory.json", ("h1", "h2"))
    run = run_playbook(
        "playbooks/key_policy.yml",
        inventory,
        tmp_path,
        "--limit",
        "h1",
        extra={**PINS, "kms_key_policy_apply": True},
    )
    assert not run.ok
    assert "Refusing to apply the KMS key policy under --limit h1" in run.output
    assert "locked out" in run.output
    assert "Use the controller's AWS credentials" not in run.output


def test_upgrade_refuses_limit_before_anything_moves(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path / "inventory.json", ("h1", "h2"))
    run = run_playbook(
        "playbooks/upgrade.yml",
        inventory,
        tmp_path,
        "--limit",
        "h1",
        extra={**PINS, "nitro_wallet_release": "r2"},
    )
    assert not run.ok
    assert "Refusing to roll under --limit h1" in run.output
    assert "Fetch and check the new release" not in run.output


def _python_reporting(tmp_path: Path, version: str) -> Path:
    fake = tmp_path / f"python{version}"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize(("version", "ok"), [("3.9", False), ("3.11", True)])
def test_relay_never_starts_on_al2023_python_3_9(tmp_path: Path, version: str, ok: bool) -> None:
    """relay_never_starts_on_al2023: the package role refuses a host Python older than 3.11
    (AL2023's /usr/bin/python3 is 3.9) with a message naming python3.11; it installs and
    uses /usr/bin/python3.11 by default."""
    playbook = tmp_path / "python.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Check the host Python",
                    "hosts": "nitro_hosts",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run the package role up to its Python check",
                            "ansible.builtin.include_role": {
                                "name": "nitro_wallet_package",
                                "tasks_from": "main.yml",
                            },
                            "vars": {
                                "nitro_wallet_package_venv": str(tmp_path / "venv"),
                                "nitro_wallet_package_host_python": str(
                                    _python_reporting(tmp_path, version)
                                ),
                                "nitro_wallet_package_dnf_packages": [],
                                "nitro_wallet_package_controller_python": "/bin/false",
                            },
                        }
                    ],
                }
            ]
        )
    )
    run = run_playbook(playbook, local_inventory(tmp_path / "inventory.json"), tmp_path)
    assert not run.ok  # the wheel build (/bin/false) comes after the check either way
    if ok:
        assert "Build the wheels on the controller" in run.output
    else:
        assert "is 3.9; nitro-wallet needs Python 3.11" in run.output
        assert "/usr/bin/python3.11" in run.output
        assert "Build the wheels on the controller" not in run.output
    defaults = yaml.safe_load((ROOT / "roles/nitro_wallet_package/defaults/main.yml").read_text())
    assert defaults["nitro_wallet_package_host_python"] == "/usr/bin/python3.11"
    assert defaults["nitro_wallet_package_dnf_packages"] == ["python3.11"]


def _hugepages_play(tmp_path: Path, pools: dict[int, int], memory_mib: int) -> Path:
    root = tmp_path / "sys"
    for size_kb, pages in pools.items():
        pool = root / "kernel/mm/hugepages" / f"hugepages-{size_kb}kB"
        pool.mkdir(parents=True)
        (pool / "nr_hugepages").write_text(f"{pages}\n")
    playbook = tmp_path / "hugepages.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Read the allocator's hugepages",
                    "hosts": "nitro_hosts",
                    "gather_facts": False,
                    "vars": {
                        "nitro_enclaves_sysfs_root": str(root),
                        "nitro_enclaves_allocator_memory_mib": memory_mib,
                    },
                    "tasks": [
                        {
                            "name": "Check the hugepages",
                            "ansible.builtin.include_role": {
                                "name": "nitro_enclaves",
                                "tasks_from": "hugepages.yml",
                            },
                        },
                        {
                            "name": "Show the facts",
                            "ansible.builtin.debug": {
                                "msg": "sizes={{ nitro_enclaves_hugepage_sizes }} "
                                "mib={{ nitro_enclaves_hugepages_mib }}"
                            },
                        },
                    ],
                }
            ]
        )
    )
    return playbook


def test_hugepages_left_to_the_allocator_are_checked_and_recorded(tmp_path: Path) -> None:
    """hugepages_break_idempotence: no role sets vm.nr_hugepages; the allocator's reservation
    (1 GiB pages first, then 2 MiB) is read back, asserted and recorded as facts."""
    playbook = _hugepages_play(tmp_path, {1048576: 1, 2048: 256}, memory_mib=1536)
    run = run_playbook(playbook, local_inventory(tmp_path / "inventory.json"), tmp_path)
    assert run.ok, run.output[-3000:]
    assert "sizes=[2048, 1048576] mib=1536" in run.output
    for path in (ROOT / "roles").rglob("tasks/*.yml"):
        assert "vm.nr_hugepages" not in path.read_text(), path
        assert "sysctl" not in path.read_text(), path


def test_hugepages_short_of_the_enclave_memory_stop_the_play(tmp_path: Path) -> None:
    playbook = _hugepages_play(tmp_path, {1048576: 0, 2048: 100}, memory_mib=1024)
    run = run_playbook(playbook, local_inventory(tmp_path / "inventory.json"), tmp_path)
    assert not run.ok
    assert "should hold 1024 MiB in hugepages" in run.output
    assert "200 MiB" in run.output


def test_aws_inventory_connects_with_ssm() -> None:
    """inventory_points_ssh_at_instance_ids: the instance id is the address of the SSM
    connection, which group_vars select, with its region and transfer bucket."""
    inventory = yaml.safe_load((ROOT / "inventory/aws_ec2.yml").read_text())
    assert inventory["plugin"] == "amazon.aws.aws_ec2"
    assert inventory["compose"]["ansible_host"] == "instance_id"
    group_vars = yaml.safe_load((ROOT / "inventory/group_vars/all.yml").read_text())
    assert group_vars["ansible_connection"] == "amazon.aws.aws_ssm"
    assert group_vars["ansible_aws_ssm_region"] == "{{ nitro_wallet_region }}"
    assert "ansible_aws_ssm_bucket_name" in group_vars
    assert group_vars["nitro_wallet_key_policy_mode"] == "sealed"
    assert group_vars["nitro_wallet_package_host_python"] == "/usr/bin/python3.11"
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize(
    ("playbook", "refused"),
    [
        (
            "playbooks/key_policy.yml",
            "value of kms_key_policy_mode must be one of: sealed, pcr0, got: open",
        ),
        (
            "playbooks/upgrade.yml",
            "value of enclave_trust_mode must be one of: sealed, pcr0, got: open",
        ),
    ],
)
def test_an_unknown_key_policy_mode_is_refused_by_the_argument_spec(
    tmp_path: Path, playbook: str, refused: str
) -> None:
    """The roles' argument specs (validated at every entry point) are the check of the mode."""
    inventory = local_inventory(tmp_path / "inventory.json", ("h1", "h2"))
    extra = {**PINS, "nitro_wallet_key_policy_mode": "open", "nitro_wallet_release": "r2"}
    run = run_playbook(playbook, inventory, tmp_path, extra={**extra, "kms_key_policy_apply": True})
    assert not run.ok
    assert refused in run.output
