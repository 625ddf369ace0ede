"""Production artifacts carry only their layer, and the layers are enforced.

- scripts/build_wheels.py builds the relay, operator and simulator wheels reproducibly;
- the relay wheel holds parent_app and the enclave's protocol modules, nothing of
  nitro_sim or nitro_wallet and no simulator stand-in scripts, and the relay runs from
  it in a fresh virtualenv (real sockets, a real enclave protocol peer);
- the operator wheel renders the key policy from its packaged template and compiles a
  signing policy with its packaged schema;
- the import-linter contracts of pyproject.toml pass, and fail on a deliberate violation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nitro_wallet.policy import compile_policy_text
from scripts.layering import contract
from tests.fake_enclave import FakeEnclave, FakeImds, http_call, remove_tree, short_tempdir
from tests.relay_process import RelayProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


pytestmark = pytest.mark.process  # builds wheels and virtualenvs, runs lint-imports and the relay


def build(out: Path, *artifacts: str, epoch: str | None = None) -> dict[str, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    done = subprocess.run(
        [sys.executable, "-m", "scripts.build_wheels", "--out", str(out), *artifacts],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return {json.loads(line)["artifact"]: json.loads(line) for line in done.stdout.splitlines()}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    return build(tmp_path_factory.mktemp("wheels"))


def names(wheel: dict[str, object]) -> list[str]:
    with zipfile.ZipFile(str(wheel["path"])) as archive:
        return archive.namelist()


def entry_points(wheel: dict[str, object]) -> str:
    (path,) = [n for n in names(wheel) if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(str(wheel["path"])) as archive:
        return archive.read(path).decode()


def fresh_venv(directory: Path, wheel: dict[str, object]) -> Path:
    """A new virtualenv with the wheel's hashed lock and the wheel, both --no-deps."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120
    )
    python = directory / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
           "--disable-pip-version-check", "--no-deps"]  # fmt: skip
    subprocess.run(
        [*pip, "--require-hashes", "-r", str(ROOT / str(wheel["lock"]))],
        check=True,
        timeout=600,
    )
    subprocess.run([*pip, str(wheel["path"])], check=True, timeout=300)
    return python


def imports(python: Path, module: str) -> bool:
    probe = subprocess.run(
        [str(python), "-I", "-c", f"import {module}"], capture_output=True, check=False, timeout=60
    )
    return probe.returncode == 0


# ---------------------------------------------------------------- the wheels


def test_production_hosts_install_the_simulator(wheels: dict[str, dict[str, object]]) -> None:
    """Issue 10: the relay wheel shipped nitro_sim and the stand-in nitro-cli/vsock-proxy."""
    relay = wheels["relay"]
    files = [n for n in names(relay) if not n.startswith("nitro_wallet_relay-")]
    modules = {n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in files}
    assert not any(m.startswith(("nitro_sim", "nitro_wallet")) for m in modules)
    allowed = set(contract("relay")["allowed_modules"])
    assert {m for m in modules if not m.startswith("parent_app.")} <= allowed
    assert "enclave_app.signing" not in modules
    assert {"enclave_app.wire", "enclave_app.errors", "enclave_app.strict_json"} <= modules
    scripts = entry_points(relay)
    assert "nitro-wallet-relay = parent_app.__main__:main" in scripts
    for stand_in in ("nitro-cli", "vsock-proxy", "nitro-sim", "nitro-wallet ="):
        assert stand_in not in scripts
    sim_scripts = entry_points(wheels["sim"])
    assert "nitro-cli = nitro_sim.nitro_cli:main" in sim_scripts
    assert "vsock-proxy = nitro_sim.vsock_proxy:main" in sim_scripts


def test_the_relay_runs_from_its_wheel_in_a_fresh_virtualenv(
    tmp_path: Path, wheels: dict[str, dict[str, object]]
) -> None:
    python = fresh_venv(tmp_path / "venv", wheels["relay"])
    bin_dir = python.parent
    assert (bin_dir / "nitro-wallet-relay").is_file()
    for absent in ("nitro-cli", "vsock-proxy", "nitro-sim", "nitro-wallet"):
        assert not (bin_dir / absent).exists()
    assert imports(python, "parent_app.__main__")
    for module in ("nitro_sim", "nitro_wallet", "enclave_app.signing", "coincurve", "cbor2"):
        assert not imports(python, module), f"{module} is installed on the relay"
    vsock = short_tempdir()
    enclave, imds = FakeEnclave(vsock).start(), FakeImds().start()
    relay = None
    try:
        relay = RelayProcess(
            write_config(tmp_path, enclave, imds),
            command=[str(bin_dir / "nitro-wallet-relay")],
            cwd=tmp_path,
        )
        created = http_call(relay.port, "POST", "/v1/accounts", {})
        assert created.status == 201
        account_id = created.json()["account_id"]
        signed = http_call(
            relay.port,
            "POST",
            f"/v1/accounts/{account_id}/sign/transaction",
            {"transaction": {"nonce": 1}},
        )
        assert signed.status == 200
    finally:
        if relay is not None:
            relay.process.send_signal(signal.SIGTERM)
            assert relay.process.wait(10) == 0
        imds.stop()
        enclave.stop()
        remove_tree(vsock)


def test_the_operator_wheel_renders_the_key_policy_from_its_packaged_template(
    tmp_path: Path, wheels: dict[str, dict[str, object]]
) -> None:
    operator = wheels["operator"]
    assert "nitro_wallet/templates/kms_key_policy.json.j2" in names(operator)
    assert not any(n.startswith("nitro_sim/") for n in names(operator))
    assert "parent_app/__main__.py" not in names(operator)  # only what it imports
    python = fresh_venv(tmp_path / "venv", operator)
    rendered = subprocess.run(
        [str(python.parent / "nitro-wallet"), "key-policy", "render",
         "--admin-arn", "arn:aws:iam::111122223333:user/admin",
         "--enclave-arn", "arn:aws:iam::111122223333:role/parent", "--pcr8", "ab" * 48],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout)["Id"] == "nitro-wallet-key-policy-sealed"


def test_the_operator_wheel_compiles_a_signing_policy_with_its_packaged_schema(
    tmp_path: Path, wheels: dict[str, dict[str, object]]
) -> None:
    operator = wheels["operator"]
    assert "nitro_wallet/policy.schema.json" in names(operator)
    assert "enclave_app/policy/document.py" in names(operator)  # the enclave's validator
    python = fresh_venv(tmp_path / "venv", operator)
    output = tmp_path / "policy.json"
    compiled = subprocess.run(
        [str(python.parent / "nitro-wallet"), "policy", "compile",
         str(ROOT / "docs" / "examples" / "policy.yaml"), "-o", str(output)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    expected = compile_policy_text((ROOT / "docs" / "examples" / "policy.yaml").read_text())
    assert output.read_bytes() == expected.canonical
    assert json.loads(compiled.stdout)["sha256"] == expected.sha256


def test_wheels_are_reproducible(tmp_path: Path) -> None:
    first = build(tmp_path / "a", "relay", "operator", epoch="1700000000")
    second = build(tmp_path / "b", "relay", "operator", epoch="1700000000")
    for name in ("relay", "operator"):
        a, b = Path(str(first[name]["path"])), Path(str(second[name]["path"]))
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
        assert first[name]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    with zipfile.ZipFile(str(first["relay"]["path"])) as archive:
        assert {i.date_time for i in archive.infolist()} == {(2023, 11, 14, 22, 13, 20)}
        assert not any(n.endswith(".pyc") for n in archive.namelist())


# ---------------------------------------------------------- import contracts


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The four packages, pyproject.toml and the contract type, in a scratch copy."""
    copy = tmp_path / "checkout"
    for package in ("enclave_app", "parent_app", "nitro_wallet", "nitro_sim"):
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "layering.py", copy / "scripts" / "layering.py")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def lint_imports(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache"],
        cwd=directory,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_import_contracts_pass_on_this_tree() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("parent_app/storage.py", "import nitro_sim", "parent_app imports only itself"),
        ("parent_app/rawtx.py", "from enclave_app.signing import keys", "parent_app imports only"),
        ("enclave_app/wire.py", "import nitro_wallet", "enclave_app imports nothing of ours"),
        ("nitro_sim/eif.py", "import parent_app.storage", "nitro_sim never imports the relay"),
        ("nitro_wallet/cli.py", "import nitro_sim.eif", "nothing of the product imports"),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(
    checkout: Path, module: str, line: str, broken: str
) -> None:
    assert lint_imports(checkout).returncode == 0
    path = checkout / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate violation\n")
    result = lint_imports(checkout)
    assert result.returncode == 1
    assert f"{broken}" in result.stdout
    assert "BROKEN" in result.stdout
