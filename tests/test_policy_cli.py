"""``nitro-wallet policy check`` and ``compile``: the compiled bytes are deterministic and
load in the enclave, ``check`` shows the evaluation order, refusals name their path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from enclave_app.policy import load_policy
from nitro_wallet import cli
from nitro_wallet.policy import PolicyCompileError, compile_policy_text
from tests.policy_helpers import public_pem

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "policy.yaml"
DEV_TEMPLATE = ROOT / "policy" / "dev.yaml.j2"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_writes_the_canonical_bytes_the_enclave_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "build" / "policy.json"
    code, out, err = run(capsys, "policy", "compile", str(EXAMPLE), "-o", str(output))
    assert (code, err) == (0, "")
    report = json.loads(out)
    data = output.read_bytes()
    assert report == {"output": str(output), "sha256": hashlib.sha256(data).hexdigest()}
    loaded = load_policy(output)
    assert loaded.sha256 == report["sha256"]
    assert [rule.name for rule in loaded.rules][:2] == [
        "no-sanctioned-contracts",
        "no-usdc-approvals-to-unknown-spenders",
    ]


def test_compiling_is_deterministic_and_ignores_yaml_layout() -> None:
    text = EXAMPLE.read_text()
    first = compile_policy_text(text)
    assert compile_policy_text(text).canonical == first.canonical
    # The same document written differently: flow style, reordered keys, no comments.
    document = yaml.safe_load(text)
    relaid = yaml.safe_dump(
        {key: document[key] for key in reversed(list(document))}, default_flow_style=True
    )
    assert relaid != text
    assert compile_policy_text(relaid).sha256 == first.sha256
    as_json = json.dumps(document, indent=3)
    assert compile_policy_text(as_json).sha256 == first.sha256


def test_a_changed_policy_has_another_hash() -> None:
    text = EXAMPLE.read_text()
    changed = text.replace("max_count: 200", "max_count: 201")
    assert changed != text
    assert compile_policy_text(changed).sha256 != compile_policy_text(text).sha256


def test_check_prints_deny_rules_then_allow_rules_then_the_implicit_default_deny(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "policy", "check", str(EXAMPLE))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"policy sha256: {compile_policy_text(EXAMPLE.read_text()).sha256}"
    numbered = [line.split()[1] for line in lines if line.strip()[:2].rstrip(".").isdigit()]
    assert numbered == [
        "no-sanctioned-contracts",
        "no-usdc-approvals-to-unknown-spenders",
        "bot-eth-to-exchange",
        "bot-usdc-to-exchange",
        "ops-uniswap-swaps",
        "ops-usdc-permits",
        "ops-login-messages",
        "treasury-with-two-approvals",
        "default-deny",
    ]
    assert "needs 2 of alice, bob, carol" in out
    assert "hot-daily-eth: max_value 5000000000000000000 per 86400 s" in out


def test_deny_rules_come_first_whatever_their_place_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nprincipals: {relay_identities: [{id: bot, scopes: [sign]}]}\nrules:\n"
        "  - {name: a, effect: allow, principals: {relay_identities: any}, accounts: all,"
        " condition: {message: {}}}\n"
        "  - {name: z, effect: deny, principals: {relay_identities: any}, accounts: all,"
        " condition: {message: {}}}\n"
    )
    code, out, _ = run(capsys, "policy", "check", str(path))
    assert code == 0
    assert out.index("1. z [deny]") < out.index("2. a [allow]") < out.index("3. default-deny")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("version: 1.0\n", "floats are not accepted"),
        ("version: 01\n", "write it in decimal or 0x-hex"),
        ("version: 1\nprincipals: {}\nrules: []\nextra: 1\n", "Additional properties"),
        (
            "version: 1\nprincipals: {}\nrules:\n  - {name: r, effect: allow, accounts: all,"
            " principals: {stamp_keys: [nobody]}, condition: {message: {}}}\n",
            "is not declared in principals",
        ),
        ("{unclosed\n", "YAML:"),
    ],
)
def test_a_bad_policy_is_refused_with_each_problem_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    output = tmp_path / "out.json"
    for argv in (["check", str(path)], ["compile", str(path), "-o", str(output)]):
        code, out, err = run(capsys, "policy", *argv)
        assert (code, out) == (1, "")
        assert problem in err
        assert err.startswith("policy refused: ")
    assert not output.exists()


def test_schema_problems_are_reported_with_their_paths() -> None:
    text = (
        "version: 1\nprincipals: {}\nrules:\n  - {name: r, effect: allow, accounts: all,"
        " principals: {stamp_keys: any}, condition: {transaction: {value: {max: -1}}}}\n"
    )
    with pytest.raises(PolicyCompileError) as error:
        compile_policy_text(text)
    assert error.value.problems == [
        "policy.rules[0].condition.transaction.value.max: -1 is less than the minimum of 0"
    ]


def test_an_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "absent.yaml"))
    assert code == 1
    assert "policy unreadable" in err


def test_the_dev_policy_template_grants_the_dev_key_and_token_everything() -> None:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    environment.filters["to_json"] = json.dumps
    text = environment.from_string(DEV_TEMPLATE.read_text()).render(
        dev_stamp_key_id="dev-key",
        dev_stamp_public_key=public_pem("p256", 42),
        dev_relay_identity="dev",
    )
    compiled = compile_policy_text(text)
    (rule,) = compiled.policy.rules
    assert rule.name == "dev-everything"
    assert compiled.policy.stamp_keys["dev-key"].scopes == {"create", "sign", "read"}
    assert compiled.policy.relay_identities["dev"] == {"create", "sign", "read"}
    assert set(compiled.document["rules"][0]["condition"]) == {
        "transaction",
        "message",
        "typed_data",
        "authorization",
    }


@pytest.mark.process
def test_the_console_script_runs_as_a_process(tmp_path: Path) -> None:
    output = tmp_path / "policy.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_wallet",
            "policy",
            "compile",
            str(EXAMPLE),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
