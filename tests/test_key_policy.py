"""The KMS key policy: golden renderings of templates/kms_key_policy.json.j2 in both modes,
the validator that stands between any rendered policy and KMS (each refusal names its
rule), the CLI, the Ansible filter plugin and the PCR8 of a release certificate."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nitro_wallet.key_policy import (
    KeyPolicyError,
    render_key_policy,
    validate_key_policy,
)
from nitro_wallet.pcr import CertificateError, pcr8_of_certificate

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
ADMIN = "arn:aws:iam::111122223333:user/nitro-wallet-admin"
ROLE = "arn:aws:iam::111122223333:role/nitro-wallet-parent"
GLASS = "arn:aws:iam::111122223333:role/nitro-wallet-break-glass"
PCR_A = "a" * 96
PCR_B = "B" * 48 + "b" * 48
CERT_A = "c" * 96
CERT_B = "d" * 96
ZERO = "0" * 96

CASES: dict[str, dict[str, Any]] = {
    "sealed_release_certificate": {"mode": "sealed", "pcr8s": [CERT_A]},
    "sealed_certificate_rotation_and_pinned_images": {
        "mode": "sealed",
        "pcr8s": [CERT_B, CERT_A, CERT_A],
        "pcr0s": [PCR_A, PCR_B],
    },
    "pcr0_one_host": {"mode": "pcr0", "pcr0s": [PCR_A]},
    "pcr0_upgrade_in_progress": {"mode": "pcr0", "pcr0s": [PCR_A, PCR_B, PCR_A]},
    "pcr0_break_glass_deletion": {"mode": "pcr0", "pcr0s": [PCR_A], "break_glass_arns": [GLASS]},
    "pcr0_debug_allowed_explicitly": {"mode": "pcr0", "pcr0s": [ZERO], "allow_debug": True},
}


def render(mode: str = "sealed", **spec: Any) -> dict[str, Any]:
    return render_key_policy(admin_arns=[ADMIN], enclave_arns=[ROLE], mode=mode, **spec)


def sealed() -> dict[str, Any]:
    return render("sealed", pcr8s=[CERT_A])


def pcr0() -> dict[str, Any]:
    return render("pcr0", pcr0s=[PCR_A])


def rules_of(policy: object, **kwargs: Any) -> list[str]:
    with pytest.raises(KeyPolicyError) as exc:
        validate_key_policy(policy, **kwargs)
    return exc.value.rules


def statement(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    (found,) = [s for s in policy["Statement"] if s.get("Sid") == sid]
    assert isinstance(found, dict)
    return found


def drop(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != sid]
    return policy


# ------------------------------------------------------------------------ goldens


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_renderings(case: str) -> None:
    spec = dict(CASES[case])
    allow_debug = spec.pop("allow_debug", False)
    policy = render(**spec)
    golden = GOLDEN / f"key_policy_{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(policy, indent=2) + "\n")
    assert policy == json.loads(golden.read_text())
    summary = validate_key_policy(policy, allow_debug=allow_debug, mode=spec["mode"])
    assert summary.mode == spec["mode"]
    assert summary.pcr8s == sorted({p.lower() for p in spec.get("pcr8s", [])})
    assert summary.pcr0s == sorted({p.lower() for p in spec.get("pcr0s", [])})
    assert summary.admin_arns == [ADMIN]
    assert summary.enclave_arns == [ROLE]
    assert summary.break_glass_arns == spec.get("break_glass_arns", [])


def test_sealed_mode_leaves_administrators_describe_tag_enable_disable_only() -> None:
    policy = sealed()
    actions = set(statement(policy, "KeyAdministrationWithoutDecrypt")["Action"])
    assert actions == {
        "kms:DescribeKey",
        "kms:GetKeyPolicy",
        "kms:GetKeyRotationStatus",
        "kms:ListResourceTags",
        "kms:ListKeyPolicies",
        "kms:ListGrants",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:EnableKeyRotation",
        "kms:EnableKey",
        "kms:DisableKey",
    }
    summary = validate_key_policy(policy)
    assert summary.policy_holders == []
    assert summary.warnings == []
    for sid, action in (
        ("DenyKeyPolicyChanges", "kms:PutKeyPolicy"),
        ("DenyKeyDeletion", "kms:ScheduleKeyDeletion"),
    ):
        deny = statement(policy, sid)
        assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", action)
        assert "Condition" not in deny


def test_the_deny_covers_a_missing_and_a_wrong_measurement() -> None:
    deny = statement(sealed(), "DenyDataKeysUnlessSignedByTheReleaseCertificate")
    assert deny["Condition"] == {
        "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR8": [CERT_A]}
    }
    assert deny["Principal"] == "*"
    image_deny = statement(pcr0(), "DenyDataKeysUnlessAllowedImage")
    assert image_deny["Condition"] == {
        "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": [PCR_A]}
    }


def test_pcr0_mode_warns_in_plain_words_that_policy_holders_can_decrypt() -> None:
    summary = validate_key_policy(pcr0())
    assert summary.mode == "pcr0"
    assert summary.policy_holders == [ADMIN]
    (warning,) = summary.warnings
    assert ADMIN in warning
    assert "kms:PutKeyPolicy" in warning
    assert "allow themselves Decrypt" in warning


# --------------------------------------------- hostile policies from issue 10


def test_validator_refuses_the_same_arn_as_administrator_and_enclave_role() -> None:
    for policy in (
        render_key_policy(admin_arns=[ROLE], enclave_arns=[ROLE], pcr8s=[CERT_A]),
        render_key_policy(admin_arns=[ROLE], enclave_arns=[ROLE], mode="pcr0", pcr0s=[PCR_A]),
    ):
        assert "admin-enclave-overlap" in rules_of(policy)


def test_validator_refuses_account_root_administration_as_an_overlap() -> None:
    policy = render_key_policy(
        admin_arns=["arn:aws:iam::111122223333:root"], enclave_arns=[ROLE], pcr8s=[CERT_A]
    )
    assert "admin-enclave-overlap" in rules_of(policy)


def test_validator_refuses_allow_star_put_key_policy() -> None:
    for policy in (sealed(), pcr0()):
        policy["Statement"].append(
            {"Effect": "Allow", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*"}
        )
        assert "open-principal" in rules_of(policy)


def test_validator_refuses_a_policy_with_no_deny() -> None:
    for policy in (sealed(), pcr0()):
        policy["Statement"] = [s for s in policy["Statement"] if s["Effect"] != "Deny"]
        assert "missing-deny" in rules_of(policy)


def test_validator_refuses_a_deny_that_only_covers_a_missing_attestation() -> None:
    policy = drop(pcr0(), "DenyDataKeysUnlessAllowedImage")
    policy["Statement"].append(
        {
            "Sid": "DenyDataKeysWithoutAttestation",
            "Effect": "Deny",
            "Principal": "*",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": "*",
            "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}},
        }
    )
    assert rules_of(policy) == ["missing-deny"]


# ------------------------------------------------------------ each rule by name


def _set_values(sid: str, key: str, values: list[str]) -> Callable[[dict[str, Any]], object]:
    def change(policy: dict[str, Any]) -> None:
        for block in statement(policy, sid)["Condition"].values():
            if key in block:
                block[key] = values

    return change


def _append(extra: dict[str, Any]) -> Callable[[dict[str, Any]], object]:
    return lambda policy: policy["Statement"].append(copy.deepcopy(extra))


def _admin_actions(*actions: str) -> Callable[[dict[str, Any]], object]:
    return lambda p: statement(p, "KeyAdministrationWithoutDecrypt")["Action"].extend(actions)


def _attested(change: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], object]:
    return lambda policy: change(statement(policy, "AttestedEnclaveDataKeys"))


PCR8_KEY = "kms:RecipientAttestation:PCR8"
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
ROOT_DELEGATION = {
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
    "Action": "kms:*",
    "Resource": "*",
}

MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], object], str]] = [
    ("sealed", "no condition", _attested(lambda s: s.pop("Condition")), "unattested-data-keys"),
    (
        "sealed",
        "IfExists operator",
        _attested(lambda s: s.update(Condition={"StringEqualsIfExists": {PCR8_KEY: CERT_A}})),
        "unattested-data-keys",
    ),
    (
        "sealed",
        "condition on another key",
        _attested(lambda s: s.update(Condition={"StringEquals": {"kms:EncryptionContext:x": "y"}})),
        "unattested-data-keys",
    ),
    (
        "sealed",
        "open enclave principal",
        _attested(lambda s: s.update(Principal={"AWS": "*"})),
        "open-principal",
    ),
    ("sealed", "root delegation", _append(ROOT_DELEGATION), "unattested-data-keys"),
    ("pcr0", "root delegation", _append(ROOT_DELEGATION), "admin-enclave-overlap"),
    ("pcr0", "admin wildcard", _admin_actions("kms:Generate*"), "unattested-data-keys"),
    (
        "sealed",
        "re-encrypt",
        _attested(lambda s: s["Action"].append("kms:ReEncrypt*")),
        "unattested-data-keys",
    ),
    ("pcr0", "grant", _admin_actions("kms:CreateGrant"), "unattested-data-keys"),
    ("sealed", "replicate the key", _admin_actions("kms:ReplicateKey"), "unattested-data-keys"),
    (
        "sealed",
        "not action",
        _append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": ADMIN},
                "NotAction": "kms:Sign",
                "Resource": "*",
            }
        ),
        "not-action",
    ),
    (
        "pcr0",
        "short measurement",
        _set_values("AttestedEnclaveDataKeys", IMAGE_KEY, ["abcd"]),
        "bad-measurement",
    ),
    (
        "sealed",
        "empty allowed list",
        _set_values("AttestedEnclaveDataKeys", PCR8_KEY, []),
        "empty-allowed-list",
    ),
    (
        "sealed",
        "deny allows another certificate",
        _set_values("DenyDataKeysUnlessSignedByTheReleaseCertificate", PCR8_KEY, [CERT_A, CERT_B]),
        "deny-mismatch",
    ),
    (
        "sealed",
        "deny weakened by an extra condition",
        lambda p: statement(p, "DenyDataKeysUnlessSignedByTheReleaseCertificate")[
            "Condition"
        ].update({"StringEquals": {"kms:CallerAccount": "444455556666"}}),
        "missing-deny",
    ),
    (
        "sealed",
        "deny scoped to another key",
        lambda p: statement(p, "DenyDataKeysUnlessSignedByTheReleaseCertificate").update(
            Resource="arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000"
        ),
        "missing-deny",
    ),
    (
        "sealed",
        "deny for one principal only",
        lambda p: statement(p, "DenyDataKeysUnlessSignedByTheReleaseCertificate").update(
            Principal={"AWS": ROLE}
        ),
        "missing-deny",
    ),
    (
        "sealed",
        "unsigned image (zero PCR8)",
        lambda p: [
            _set_values(sid, PCR8_KEY, [ZERO])(p)
            for sid in (
                "AttestedEnclaveDataKeys",
                "DenyDataKeysUnlessSignedByTheReleaseCertificate",
            )
        ],
        "debug-measurement",
    ),
    (
        "sealed",
        "admin holds PutKeyPolicy",
        _admin_actions("kms:PutKeyPolicy"),
        "sealed-policy-holder",
    ),
    ("sealed", "admin holds kms:Put*", _admin_actions("kms:Put*"), "sealed-policy-holder"),
    ("sealed", "admin holds kms:*", _admin_actions("kms:*"), "sealed-policy-holder"),
    ("sealed", "admin holds *", _admin_actions("*"), "sealed-policy-holder"),
    ("sealed", "admin may delete", _admin_actions("kms:ScheduleKeyDeletion"), "key-deletion"),
    ("sealed", "no deletion deny", lambda p: drop(p, "DenyKeyDeletion"), "key-deletion"),
    ("pcr0", "admin may delete", _admin_actions("kms:ScheduleKeyDeletion"), "key-deletion"),
    (
        "pcr0",
        "break-glass is the admin",
        _append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": ADMIN},
                "Action": "kms:ScheduleKeyDeletion",
                "Resource": "*",
            }
        ),
        "key-deletion",
    ),
    (
        "pcr0",
        "break-glass is the enclave role",
        _append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": ROLE},
                "Action": "kms:ScheduleKeyDeletion",
                "Resource": "*",
            }
        ),
        "key-deletion",
    ),
    (
        "pcr0",
        "deletion window deny missing",
        lambda p: [
            _append(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": GLASS},
                    "Action": "kms:ScheduleKeyDeletion",
                    "Resource": "*",
                }
            )(p),
            drop(p, "DenyKeyDeletionWindowUnder30Days"),
        ],
        "key-deletion",
    ),
]


@pytest.mark.parametrize(
    ("mode", "change", "rule"),
    [(m, c, r) for m, _, c, r in MUTATIONS],
    ids=[f"{m}: {name}" for m, name, _, _ in MUTATIONS],
)
def test_each_broken_rule_is_refused_by_name(
    mode: str, change: Callable[[dict[str, Any]], object], rule: str
) -> None:
    policy = sealed() if mode == "sealed" else pcr0()
    validate_key_policy(policy)  # the unmodified policy passes
    change(policy)
    with pytest.raises(KeyPolicyError) as exc:
        validate_key_policy(policy)
    assert rule in exc.value.rules
    assert any(problem.startswith(f"[{rule}]") for problem in exc.value.problems)


def test_debug_measurements_are_refused_unless_explicitly_allowed() -> None:
    policy = render("pcr0", pcr0s=[ZERO])
    assert rules_of(policy) == ["debug-measurement"]
    assert validate_key_policy(policy, allow_debug=True).pcr0s == [ZERO]
    upgrade_with_debug = render("pcr0", pcr0s=[PCR_A, ZERO])
    assert rules_of(upgrade_with_debug) == ["debug-measurement"]


def test_a_required_mode_is_enforced() -> None:
    assert rules_of(pcr0(), mode="sealed") == ["mode-mismatch"]
    assert rules_of(sealed(), mode="pcr0") == ["mode-mismatch"]


def test_a_mixed_policy_with_one_unsealed_enclave_statement_is_pcr0_mode() -> None:
    policy = sealed()
    policy["Statement"].append(
        {
            "Sid": "SecondEnclaveStatement",
            "Effect": "Allow",
            "Principal": {"AWS": ROLE},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {IMAGE_KEY: PCR_A}},
        }
    )
    assert "mode-mismatch" in rules_of(policy, mode="sealed")


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ({"mode": "sealed"}, "empty-allowed-list"),
        ({"mode": "pcr0"}, "empty-allowed-list"),
        ({"mode": "pcr0", "pcr0s": [PCR_A], "pcr8s": [CERT_A]}, "empty-allowed-list"),
        ({"mode": "sealed", "pcr8s": [CERT_A], "break_glass_arns": [GLASS]}, "key-deletion"),
        ({"mode": "open", "pcr8s": [CERT_A]}, "mode-mismatch"),
        ({"mode": "sealed", "pcr8s": CERT_A}, "policy-shape"),
    ],
)
def test_render_refuses_inputs_that_cannot_make_a_valid_policy(
    spec: dict[str, Any], rule: str
) -> None:
    with pytest.raises(KeyPolicyError) as exc:
        render(**spec)
    assert exc.value.rules == [rule]


@pytest.mark.parametrize(
    "bad",
    [None, [], {"Version": "2012-10-17", "Statement": []}, {"Statement": [{}]}, "policy"],
)
def test_not_json_objects_and_empty_policies_are_refused(bad: object) -> None:
    assert "policy-shape" in rules_of(bad)


# -------------------------------------------------------------------------- PCR8


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A P-384 release certificate made by openssl, and its DER encoding."""
    directory = tmp_path_factory.mktemp("release")
    key, cert, der = directory / "key.pem", directory / "cert.pem", directory / "cert.der"
    subprocess.run(
        ["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-sha384",
            "-key",
            str(key),
            "-out",
            str(cert),
            "-days",
            "30",
            "-subj",
            "/CN=nitro-wallet release test",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)],
        check=True,
        capture_output=True,
    )
    return cert, der.read_bytes()


def test_pcr8_is_the_extend_of_the_certificate_digest_as_nitro_cli_computes_it(
    certificate: tuple[Path, bytes],
) -> None:
    cert, der = certificate
    expected = hashlib.sha384(bytes(48) + hashlib.sha384(der).digest()).hexdigest()
    assert pcr8_of_certificate(cert.read_bytes()) == expected
    assert pcr8_of_certificate(der) == expected  # PEM and DER measure the same
    with pytest.raises(CertificateError):
        pcr8_of_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# --------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nitro_wallet", "key-policy", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_validate_cli_prints_the_mode_and_the_pcr0_warning(tmp_path: Path) -> None:
    sealed_file, pcr0_file, bad = tmp_path / "s.json", tmp_path / "p.json", tmp_path / "b.json"
    sealed_file.write_text(json.dumps(sealed()))
    pcr0_file.write_text(json.dumps(pcr0()))
    bad.write_text(json.dumps(drop(sealed(), "DenyKeyDeletion")))
    ok = cli("validate", str(sealed_file), "--mode", "sealed")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["mode"] == "sealed"
    assert json.loads(ok.stdout)["pcr8s"] == [CERT_A]
    assert ok.stderr == ""
    warned = cli("validate", str(pcr0_file))
    assert warned.returncode == 0
    assert json.loads(warned.stdout)["mode"] == "pcr0"
    assert "warning: pcr0 mode" in warned.stderr
    assert "allow themselves Decrypt" in warned.stderr
    required = cli("validate", str(pcr0_file), "--mode", "sealed")
    assert required.returncode == 1
    assert "[mode-mismatch]" in required.stderr
    refused = cli("validate", str(bad))
    assert refused.returncode == 1
    assert "key policy refused: [key-deletion]" in refused.stderr


def test_render_and_pcr8_cli_use_the_release_certificate(certificate: tuple[Path, bytes]) -> None:
    cert, _ = certificate
    measured = cli("pcr8", str(cert))
    assert measured.returncode == 0
    rendered = cli(
        "render", "--admin-arn", ADMIN, "--enclave-arn", ROLE, "--release-certificate", str(cert)
    )
    assert rendered.returncode == 0, rendered.stderr
    summary = validate_key_policy(json.loads(rendered.stdout), mode="sealed")
    assert summary.pcr8s == [measured.stdout.strip()]
    refused = cli("render", "--admin-arn", ROLE, "--enclave-arn", ROLE, "--pcr8", CERT_A)
    assert refused.returncode == 1
    assert "[admin-enclave-overlap]" in refused.stderr


# ------------------------------------------------------------ Ansible filter plugin


@pytest.fixture(scope="module")
def filters() -> ModuleType:
    pytest.importorskip("ansible")
    path = ROOT / "roles/kms_key_policy/filter_plugins/key_policy.py"
    spec = importlib.util.spec_from_file_location("nw_key_policy_filters", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def filter_error() -> type[Exception]:
    error: type[Exception] = pytest.importorskip("ansible.errors").AnsibleFilterError
    return error


def test_filter_plugin_registers_its_filters(filters: ModuleType) -> None:
    assert set(filters.FilterModule().filters()) == {
        "nitro_wallet_render_key_policy",
        "nitro_wallet_validate_key_policy",
        "nitro_wallet_pcr8",
    }


def test_filters_render_and_validate_both_modes(
    filters: ModuleType, certificate: tuple[Path, bytes]
) -> None:
    cert, _ = certificate
    pcr8 = filters.pcr8(cert.read_text())
    policy = filters.render_key_policy([ADMIN], [ROLE], [], mode="sealed", pcr8s=[pcr8])
    result = filters.validate_key_policy(policy, False, "sealed")
    assert (result["mode"], result["pcr8s"], result["warnings"]) == ("sealed", [pcr8], [])
    json.dumps(policy)  # valid JSON document
    upgrade = filters.render_key_policy([ADMIN], [ROLE], [PCR_B, PCR_A.upper()], mode="pcr0")
    result = filters.validate_key_policy(upgrade, False)
    assert result["pcr0s"] == sorted([PCR_A, PCR_B.lower()])
    assert result["warnings"]


def test_filters_refuse_with_the_rule_name(filters: ModuleType) -> None:
    policy = filters.render_key_policy([ADMIN], [ROLE], ["0" * 96], mode="pcr0")
    with pytest.raises(filter_error(), match=r"\[debug-measurement\]"):
        filters.validate_key_policy(policy, False)
    assert filters.validate_key_policy(policy, True)["pcr0s"] == ["0" * 96]
    with pytest.raises(filter_error(), match="list of strings"):
        filters.render_key_policy(ADMIN, [ROLE], [PCR_A], mode="pcr0")
    with pytest.raises(filter_error(), match=r"\[empty-allowed-list\]"):
        filters.render_key_policy([ADMIN], [ROLE], [], mode="sealed")
    with pytest.raises(filter_error(), match="PEM"):
        filters.pcr8("")
