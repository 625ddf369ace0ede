"""Run this repository's playbooks for real from tests: ansible-playbook on the controller,
against a throwaway inventory whose hosts are the controller itself (connection local).

Tasks that would touch a real signing host never run in these tests; what runs are the
controller-side parts (release builds, the KMS key and policy against the simulated KMS)
and the guards that must stop a play before it reaches any host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def local_inventory(path: Path, hosts: tuple[str, ...] = ("h1",), **variables: Any) -> Path:
    """An inventory of `hosts` in group nitro_hosts, all the controller (connection local)."""
    host_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
    }
    inventory = {
        "all": {
            "vars": variables,
            "children": {"nitro_hosts": {"hosts": {name: dict(host_vars) for name in hosts}}},
        }
    }
    path.write_text(json.dumps(inventory))
    return path


def run_playbook(
    playbook: str | Path,
    inventory: Path,
    tmp_path: Path,
    *args: str,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: int = 600,
) -> PlaybookRun:
    """ansible-playbook with the repository's ansible.cfg; extra vars through a 0600 file."""
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), *args]
    if extra:
        extra_file = tmp_path / f"extra-{len(list(tmp_path.glob('extra-*')))}.json"
        extra_file.write_text(json.dumps(extra))
        extra_file.chmod(0o600)
        command.append(f"--extra-vars=@{extra_file}")
    command.append(str(playbook if Path(playbook).is_absolute() else ROOT / playbook))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_"))}
    environment.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        # One line per result: messages are matched as written, never wrapped.
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        **(env or {}),
    )
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PlaybookRun(result.returncode, result.stdout + result.stderr)
