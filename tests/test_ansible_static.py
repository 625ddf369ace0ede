"""Static checks of the Ansible appliance: syntax of every playbook against both
inventories, and ansible-lint with the production profile (.ansible-lint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.process  # ansible-lint and ansible-playbook run as processes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_LOCAL_TEMP"] = env["ANSIBLE_REMOTE_TEMP"] = "/tmp/.ansible-test"
    return env


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: pip install -r requirements/dev.txt")
        return found
    return str(path)


def test_every_expected_playbook_exists() -> None:
    assert set(PLAYBOOKS) >= {"site.yml", "enclave_build.yml", "key_policy.yml", "upgrade.yml"}


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", ["inventory/local", "inventory/aws_ec2.yml"])
def test_playbook_syntax(playbook: str, inventory: str) -> None:
    result = subprocess.run(
        [_tool("ansible-playbook"), "-i", inventory, "--syntax-check", f"playbooks/{playbook}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _role_includes(node: object) -> list[tuple[str, str]]:
    """(role, tasks_from) of every include_role/import_role in a parsed playbook or task file."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.removeprefix("ansible.builtin.") in ("include_role", "import_role"):
                if isinstance(value, dict) and "tasks_from" in value:
                    found.append((str(value["name"]), str(value["tasks_from"])))
            else:
                found.extend(_role_includes(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_role_includes(item))
    return found


def test_role_includes_name_their_argument_spec_entry_point() -> None:
    # ansible-core looks the entry point up by tasks_from exactly as written: "build.yml"
    # matches no entry point, so the role's argument spec for "build" would never run.
    includes = [
        (path.relative_to(ROOT), role, tasks_from)
        for path in sorted((ROOT / "playbooks").rglob("*.yml"))
        for role, tasks_from in _role_includes(yaml.safe_load(path.read_text()))
    ]
    assert includes
    for path, role, tasks_from in includes:
        specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
        entry_points = set(specs["argument_specs"])
        assert tasks_from.removesuffix(".yml") not in entry_points or tasks_from in entry_points, (
            f"{path}: include of {role} tasks_from {tasks_from} skips its argument spec"
        )
    assert {(role, tasks_from) for _, role, tasks_from in includes} >= {
        ("enclave", "build"),
        ("parent_relay", "canary"),
        ("kms_key_policy", "key"),
    }


@pytest.mark.parametrize(
    "role", sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "defaults/main.yml").exists())
)
def test_argument_spec_defaults_are_the_role_defaults(role: str) -> None:
    # ansible-doc shows the spec's default; the play uses defaults/main.yml: a literal default
    # must be the same in both (a templated one is documented by its usual value).
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    literal = {k: v for k, v in defaults.items() if "{{" not in json.dumps(v)}
    assert literal
    for entry_point, spec in specs["argument_specs"].items():
        for name, option in spec.get("options", {}).items():
            if name in literal and "default" in option:
                assert option["default"] == literal[name], (entry_point, name)


def test_ansible_lint_production_profile() -> None:
    result = subprocess.run(
        [_tool("ansible-lint"), "--nocolor", "playbooks", "roles", "molecule", "inventory"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output
