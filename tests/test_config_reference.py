"""docs/configuration.md is generated from the code and the roles, and stays true.

- the committed file is exactly what ``python -m scripts.config_reference`` builds now;
- every key the relay and the enclave read can be set through the Ansible roles (or
  is listed, with the reason, as deliberately not set);
- the roles' templates, rendered with the roles' own defaults, are files the real
  loaders accept, and they carry every key the reference says the role sets.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from enclave_app.config import EnclaveConfig
from parent_app.config import RelayConfig
from scripts import config_reference

ROOT = Path(__file__).resolve().parent.parent
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-4567-89ab-0123456789ab"


def test_the_reference_is_not_stale() -> None:
    text, _ = config_reference.build()
    assert config_reference.OUTPUT.read_text() == text, (
        "docs/configuration.md is stale: run .venv/bin/python -m scripts.config_reference"
    )


def test_check_mode_fails_on_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(config_reference.OUTPUT.read_text().replace("| `port` |", "| `prt` |", 1))
    monkeypatch.setattr(config_reference, "OUTPUT", stale)
    assert config_reference.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    stale.write_text(config_reference.build()[0])
    assert config_reference.main(["--check"]) == 0


def test_every_key_is_settable_through_the_roles() -> None:
    _, keys = config_reference.build()
    unsettable = sorted(
        f"{key.file}: [{key.section}] {key.name}"
        for file, members in keys.items()
        for key in members
        if not key.ansible and key.dotted not in config_reference.NOT_SET_BY_ANSIBLE[file]
    )
    assert not unsettable, f"keys the Ansible roles cannot set: {unsettable}"


def test_the_exceptions_are_real_keys() -> None:
    _, keys = config_reference.build()
    for file, exceptions in config_reference.NOT_SET_BY_ANSIBLE.items():
        known = {key.dotted: key for key in keys[file]}
        for dotted in exceptions:
            assert dotted in known, f"{file}: {dotted} is not a key any more"
            assert not known[dotted].ansible, f"{file}: the role sets {dotted} now"


def _role_defaults(role: str, overrides: dict[str, Any]) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    values: dict[str, Any] = {**raw, **overrides, "ansible_managed": "test"}
    environment = _environment()
    for _ in range(3):  # defaults that refer to other defaults
        for name, value in list(values.items()):
            if isinstance(value, str) and "{{" in value:
                try:
                    values[name] = environment.from_string(value).render(**values)
                except jinja2.TemplateError:
                    continue  # Ansible-only filters or variables: not used by the TOML
    return values


def _ansible_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true", "y")
    return bool(value)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (renders TOML, as Ansible's template module does)
        keep_trailing_newline=True,
    )
    environment.filters["to_json"] = json.dumps
    environment.filters["bool"] = _ansible_bool
    return environment


def _render(file: str, values: dict[str, Any]) -> dict[str, Any]:
    template = config_reference.TEMPLATES[file].read_text()
    document: dict[str, Any] = tomllib.loads(_environment().from_string(template).render(**values))
    return document


RELAY_CASES = {
    "sqlite": {},
    "dynamodb": {
        "parent_relay_storage_backend": "dynamodb",
        "parent_relay_dynamodb_table": "accounts",
        "parent_relay_dynamodb_region": "eu-west-1",
        "parent_relay_dynamodb_endpoint_url": "https://dynamodb.example.com",
        "parent_relay_chain_id": 1,
        "parent_relay_upstream_rpc_url": "https://node.example.com",
        "parent_relay_signing_policy_file": "/etc/nitro-wallet/policy.json",
    },
}


@pytest.mark.parametrize("case", sorted(RELAY_CASES))
def test_relay_template_with_role_defaults_loads_and_sets_what_the_reference_says(
    case: str,
) -> None:
    values = _role_defaults("parent_relay", {"parent_relay_kms_key_id": KEY_ARN})
    values.update(RELAY_CASES[case])
    document = _render("relay.toml", values)
    RelayConfig.from_mapping(document)
    _, keys = config_reference.build()
    for key in keys["relay.toml"]:
        if not key.ansible or (key.only and case not in key.only):
            continue
        if key.default == "(unset)" and case == "sqlite":
            continue  # optional keys are rendered only when set (the dynamodb case sets all)
        assert key.name in document.get(key.section, {}), f"{case}: {key.dotted} not rendered"


def test_enclave_template_with_role_defaults_loads_and_sets_every_key() -> None:
    values = _role_defaults("enclave", {"enclave_kms_key_ids": [KEY_ARN]})
    document = _render("enclave.toml", values)
    EnclaveConfig.from_mapping(document, environ={})
    _, keys = config_reference.build()
    for key in keys["enclave.toml"]:
        assert key.name in document.get(key.section, {}), f"{key.dotted} not rendered"
