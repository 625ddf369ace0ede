"""The key-administration operations amazon.aws.kms_key needs, and the module itself.

The boto3 tests pin AWS semantics of each added operation (tags, rotation, grants,
key policies, descriptions, alias updates) and their key-policy authorization and
audit lines. The last test runs the real `amazon.aws.kms_key` module through
`ansible-playbook` against the simulator: create, idempotent re-run, policy update.
"""

# ruff: noqa: F811 - test arguments are the fixtures imported below
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.principals import Principals

# The KMS server, principals and client fixtures are shared with the core KMS tests.
from tests.test_sim_kms import (  # noqa: F401 - pytest fixtures by name
    REGION,
    admin,
    client,
    error_code,
    kms,
    principals,
    role,
    state,
)


def audit_lines(state: Path) -> list[dict[str, Any]]:
    text = (state / "kms" / "audit.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


def policy_document(admin_arn: str, *extra: dict[str, Any]) -> str:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "Admin",
            "Effect": "Allow",
            "Principal": {"AWS": admin_arn},
            "Action": "kms:*",
            "Resource": "*",
        },
        *extra,
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def tags_of(kms_client: Any, key_id: str, **kwargs: Any) -> dict[str, str]:
    listed = kms_client.list_resource_tags(KeyId=key_id, **kwargs)
    return {t["TagKey"]: t["TagValue"] for t in listed["Tags"]}


# -------------------------------------------------------------------------- tags


def test_tags_create_tag_untag_and_survive_a_restart(
    state: Path, kms: KmsServer, admin: Any
) -> None:
    key = admin.create_key(Tags=[{"TagKey": "env", "TagValue": "test"}])["KeyMetadata"]
    arn = key["Arn"]
    assert tags_of(admin, key["KeyId"]) == {"env": "test"}

    admin.tag_resource(
        KeyId=arn,
        Tags=[{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": ""}],
    )
    assert tags_of(admin, arn) == {"env": "prod", "team": ""}
    admin.untag_resource(KeyId=arn, TagKeys=["team", "never-set"])
    assert tags_of(admin, arn) == {"env": "prod"}

    kms.close()
    with serve_kms(state, "127.0.0.1", 0) as again:
        restarted = client(again.url, Principals.load(state).admin_credentials())
        assert tags_of(restarted, arn) == {"env": "prod"}
    lines = [line for line in audit_lines(state) if line["op"] in {"TagResource", "UntagResource"}]
    assert [(line["op"], line["tag_keys"], line["key_arn"]) for line in lines] == [
        ("TagResource", ["env", "team"], arn),
        ("UntagResource", ["team", "never-set"], arn),
    ]
    assert all(line["decision"] == "allow" for line in lines)


def test_list_resource_tags_pages(admin: Any) -> None:
    tags = [{"TagKey": f"k{i}", "TagValue": f"v{i}"} for i in range(3)]
    key_id = admin.create_key(Tags=tags)["KeyMetadata"]["KeyId"]
    first = admin.list_resource_tags(KeyId=key_id, Limit=2)
    assert first["Truncated"] is True
    assert [t["TagKey"] for t in first["Tags"]] == ["k0", "k1"]
    second = admin.list_resource_tags(KeyId=key_id, Limit=2, Marker=first["NextMarker"])
    assert second["Truncated"] is False
    assert [t["TagKey"] for t in second["Tags"]] == ["k2"]


@pytest.mark.parametrize(
    ("tags", "code"),
    [
        ([{"TagKey": "aws:owner", "TagValue": "x"}], "TagException"),
        ([{"TagKey": "a", "TagValue": "1"}, {"TagKey": "a", "TagValue": "2"}], "TagException"),
        ([{"TagKey": "bad#key", "TagValue": "x"}], "TagException"),
        ([{"TagKey": "k", "TagValue": "v" * 257}], "ValidationException"),
    ],
)
def test_bad_tags_are_refused(admin: Any, tags: list[dict[str, str]], code: str) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as exc:
        admin.tag_resource(KeyId=key_id, Tags=tags)
    assert error_code(exc) == code
    with pytest.raises(ClientError) as exc:
        admin.create_key(Tags=tags)
    assert error_code(exc) == code
    assert tags_of(admin, key_id) == {}


def test_tag_limit_and_alias_key_id(admin: Any) -> None:
    key_id = admin.create_key(Tags=[{"TagKey": f"k{i}", "TagValue": ""} for i in range(50)])[
        "KeyMetadata"
    ]["KeyId"]
    with pytest.raises(ClientError) as exc:
        admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "one-more", "TagValue": ""}])
    assert error_code(exc) == "LimitExceededException"
    admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "k0", "TagValue": "overwrite"}])
    admin.create_alias(AliasName="alias/tagged", TargetKeyId=key_id)
    with pytest.raises(ClientError) as exc:
        admin.list_resource_tags(KeyId="alias/tagged")
    assert error_code(exc) == "NotFoundException"


def test_tagging_is_authorized_by_the_key_policy_with_tag_conditions(
    state: Path, admin: Any, role: Any, principals: Principals
) -> None:
    role_arn = principals.imds_role().arn
    document = policy_document(
        principals.administrator().arn,
        {
            "Effect": "Allow",
            "Principal": {"AWS": role_arn},
            "Action": ["kms:TagResource", "kms:ListResourceTags"],
            "Resource": "*",
            "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["env"]}},
        },
    )
    key_id = admin.create_key(Policy=document)["KeyMetadata"]["KeyId"]
    role.tag_resource(KeyId=key_id, Tags=[{"TagKey": "env", "TagValue": "dev"}])
    with pytest.raises(ClientError) as exc:
        role.tag_resource(KeyId=key_id, Tags=[{"TagKey": "owner", "TagValue": "me"}])
    assert error_code(exc) == "AccessDeniedException"
    assert "kms:TagResource" in str(exc.value)
    with pytest.raises(ClientError) as exc:
        role.untag_resource(KeyId=key_id, TagKeys=["env"])
    assert error_code(exc) == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        role.get_key_rotation_status(KeyId=key_id)
    assert error_code(exc) == "AccessDeniedException"
    assert tags_of(role, key_id) == {"env": "dev"}
    denied = [line for line in audit_lines(state) if line["decision"] == "deny"]
    assert [line["op"] for line in denied] == [
        "TagResource",
        "UntagResource",
        "GetKeyRotationStatus",
    ]
    assert all(line["principal"] == role_arn for line in denied)


# ---------------------------------------------------------------------- rotation


def test_key_rotation_lifecycle(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    status = admin.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is False
    assert "RotationPeriodInDays" not in status

    before = time.time()
    admin.enable_key_rotation(KeyId=key_id)
    status = admin.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True
    assert status["KeyId"] == key_id
    assert status["RotationPeriodInDays"] == 365
    next_rotation = status["NextRotationDate"].timestamp()
    assert before + 365 * 86400 - 5 <= next_rotation <= time.time() + 365 * 86400 + 5

    admin.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    assert admin.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 90
    admin.disable_key_rotation(KeyId=key_id)
    assert admin.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_key_rotation_key_states(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as exc:
        admin.enable_key_rotation(KeyId=key_id)
    assert error_code(exc) == "DisabledException"
    admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as exc:
        admin.disable_key_rotation(KeyId=key_id)
    assert error_code(exc) == "KMSInvalidStateException"
    assert admin.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


# ---------------------------------------------- grants, policies, description


def test_grants_are_listed_empty_and_cannot_be_created(admin: Any) -> None:
    key = admin.create_key()["KeyMetadata"]
    assert admin.list_grants(KeyId=key["Arn"])["Grants"] == []
    full = admin.get_paginator("list_grants").paginate(KeyId=key["KeyId"]).build_full_result()
    assert full["Grants"] == []
    with pytest.raises(ClientError) as exc:
        admin.create_grant(
            KeyId=key["KeyId"],
            GranteePrincipal="arn:aws:iam::111122223333:root",
            Operations=["Decrypt"],
        )
    assert error_code(exc) == "UnsupportedOperationException"
    assert "key policy" in exc.value.response["Error"]["Message"]


def test_list_key_policies(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    listed = admin.list_key_policies(KeyId=key_id)
    assert listed["PolicyNames"] == ["default"]
    assert listed["Truncated"] is False
    with pytest.raises(ClientError) as exc:
        admin.list_key_policies(KeyId="00000000-0000-4000-8000-000000000000")
    assert error_code(exc) == "NotFoundException"


def test_update_key_description(admin: Any) -> None:
    key_id = admin.create_key(Description="old")["KeyMetadata"]["KeyId"]
    admin.update_key_description(KeyId=key_id, Description="new")
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "new"
    admin.update_key_description(KeyId=key_id, Description="")
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == ""
    admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as exc:
        admin.update_key_description(KeyId=key_id, Description="late")
    assert error_code(exc) == "KMSInvalidStateException"


# ----------------------------------------------------------------------- aliases


def test_update_and_delete_alias(state: Path, admin: Any) -> None:
    first = admin.create_key()["KeyMetadata"]
    second = admin.create_key()["KeyMetadata"]
    admin.create_alias(AliasName="alias/wallet", TargetKeyId=first["KeyId"])
    admin.update_alias(AliasName="alias/wallet", TargetKeyId=second["Arn"])
    described = admin.describe_key(KeyId="alias/wallet")["KeyMetadata"]
    assert described["KeyId"] == second["KeyId"]
    aliases = admin.list_aliases()["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in aliases] == [
        ("alias/wallet", second["KeyId"])
    ]

    admin.delete_alias(AliasName="alias/wallet")
    with pytest.raises(ClientError) as exc:
        admin.describe_key(KeyId="alias/wallet")
    assert error_code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        admin.delete_alias(AliasName="alias/wallet")
    assert error_code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        admin.update_alias(AliasName="alias/wallet", TargetKeyId=first["KeyId"])
    assert error_code(exc) == "NotFoundException"
    ops = [(line["op"], line.get("alias"), line["decision"]) for line in audit_lines(state)]
    assert ("UpdateAlias", "alias/wallet", "allow") in ops
    assert ("DeleteAlias", "alias/wallet", "allow") in ops


def test_update_alias_needs_permission_on_both_keys(
    admin: Any, role: Any, principals: Principals
) -> None:
    role_arn = principals.imds_role().arn
    allow_role = {
        "Effect": "Allow",
        "Principal": {"AWS": role_arn},
        "Action": ["kms:UpdateAlias", "kms:DeleteAlias"],
        "Resource": "*",
    }
    admin_arn = principals.administrator().arn
    open_key = admin.create_key(Policy=policy_document(admin_arn, allow_role))["KeyMetadata"]
    closed_key = admin.create_key(Policy=policy_document(admin_arn))["KeyMetadata"]
    admin.create_alias(AliasName="alias/moving", TargetKeyId=closed_key["KeyId"])
    with pytest.raises(ClientError) as exc:
        role.update_alias(AliasName="alias/moving", TargetKeyId=open_key["KeyId"])
    assert error_code(exc) == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        role.delete_alias(AliasName="alias/moving")
    assert error_code(exc) == "AccessDeniedException"
    admin.update_alias(AliasName="alias/moving", TargetKeyId=open_key["KeyId"])
    role.delete_alias(AliasName="alias/moving")
    assert admin.list_aliases()["Aliases"] == []


def test_unsimulated_operation_is_still_a_clean_error(admin: Any) -> None:
    with pytest.raises(ClientError) as exc:
        admin.list_retirable_grants(RetiringPrincipal="arn:aws:iam::111122223333:root")
    assert error_code(exc) == "UnknownOperationException"


# ------------------------------------------------------- amazon.aws.kms_key itself


def _ansible_available() -> bool:
    try:
        found = importlib.util.find_spec("ansible_collections.amazon.aws.plugins.modules.kms_key")
    except ModuleNotFoundError:
        return False
    return found is not None and Path(sys.executable).with_name("ansible-playbook").exists()


def _kms_key_task(name: str, register: str, **params: Any) -> dict[str, Any]:
    auth = {
        "access_key": "{{ kms_access_key }}",
        "secret_key": "{{ kms_secret_key }}",
        "endpoint_url": "{{ kms_endpoint_url }}",
        "region": REGION,
    }
    return {"name": name, "amazon.aws.kms_key": {**params, **auth}, "register": register}


def _run_playbook(tmp_path: Path, tasks: list[dict[str, Any]], variables: dict[str, Any]) -> Any:
    playbook = tmp_path / "playbook.json"
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": {"ansible_python_interpreter": sys.executable},
                    "tasks": tasks,
                }
            ]
        )
    )
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps(variables))
    extra_vars.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_"))}
    env.update(
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            "localhost,",
            "-e",
            f"@{extra_vars}",
            str(playbook),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return json.loads(completed.stdout)


@pytest.mark.process
@pytest.mark.skipif(not _ansible_available(), reason="ansible collections are not installed")
def test_amazon_aws_kms_key_module_converges_idempotently(
    tmp_path: Path, state: Path, kms: KmsServer, admin: Any, principals: Principals
) -> None:
    admin_arn = principals.administrator().arn
    role_arn = principals.imds_role().arn
    initial = policy_document(admin_arn)
    applied = policy_document(
        admin_arn,
        {
            "Sid": "EnclaveDecrypt",
            "Effect": "Allow",
            "Principal": {"AWS": role_arn},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "00" * 48}},
        },
    )
    common = {"alias": "nitro-wallet-test", "description": "wallet key", "state": "present"}
    tags = {"env": "test", "owner": "ci"}
    tasks = [
        _kms_key_task("create", "r1", **common, tags=tags, policy=initial),
        _kms_key_task(
            "again", "r2", **common, tags=tags, policy=initial, enable_key_rotation=False
        ),
        _kms_key_task("new policy", "r3", **common, policy=applied),
        _kms_key_task("same policy", "r4", **common, policy=applied),
        _kms_key_task(
            "converge the rest",
            "r5",
            alias="nitro-wallet-test",
            description="wallet key v2",
            tags={"env": "prod"},
            policy=applied,
            enable_key_rotation=True,
        ),
        _kms_key_task(
            "rest converged",
            "r6",
            alias="nitro-wallet-test",
            description="wallet key v2",
            tags={"env": "prod"},
            policy=applied,
            enable_key_rotation=True,
        ),
    ]
    credentials = principals.admin_credentials()
    started = time.monotonic()
    output = _run_playbook(
        tmp_path,
        tasks,
        {
            "kms_access_key": credentials.access_key_id,
            "kms_secret_key": credentials.secret_access_key,
            "kms_endpoint_url": kms.url,
        },
    )
    elapsed = time.monotonic() - started
    results = {
        task["task"]["name"]: task["hosts"]["localhost"] for task in output["plays"][0]["tasks"]
    }
    assert [results[t["name"]].get("failed", False) for t in tasks] == [False] * len(tasks)
    changed = {name: result["changed"] for name, result in results.items()}
    assert changed == {
        "create": True,
        "again": False,
        "new policy": True,
        "same policy": False,
        "converge the rest": True,
        "rest converged": False,
    }, f"playbook took {elapsed:.1f}s"

    created = results["create"]
    key_arn = created["key_arn"]
    assert created["aliases"] == ["nitro-wallet-test"]
    assert created["tags"] == tags
    assert created["description"] == "wallet key"
    assert created["enable_key_rotation"] is False
    assert created["key_policies"] == [json.loads(initial)]
    assert results["new policy"]["key_arn"] == key_arn
    assert results["new policy"]["key_policies"] == [json.loads(applied)]

    # The simulator's own state, read back through boto3 after ansible is done.
    assert [k["KeyArn"] for k in admin.list_keys()["Keys"]] == [key_arn]
    assert json.loads(admin.get_key_policy(KeyId=key_arn)["Policy"]) == json.loads(applied)
    metadata = admin.describe_key(KeyId="alias/nitro-wallet-test")["KeyMetadata"]
    assert (metadata["Arn"], metadata["Description"]) == (key_arn, "wallet key v2")
    assert tags_of(admin, key_arn) == {"env": "prod"}
    assert admin.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True

    ops = [line["op"] for line in audit_lines(state)]
    assert ops.count("CreateKey") == 1
    assert ops.count("CreateAlias") == 1
    assert ops.count("PutKeyPolicy") == 1
    assert ops.count("EnableKeyRotation") == 1
    assert ops.count("UpdateKeyDescription") == 1
    assert ops.count("UntagResource") == 1
    lines = audit_lines(state)
    assert all(line["decision"] == "allow" for line in lines if line["op"] != "DescribeKey")
    assert credentials.secret_access_key not in (state / "kms" / "audit.log").read_text()


def test_state_written_before_tags_and_rotation_still_loads(state: Path, kms: KmsServer) -> None:
    admin = client(kms.url, Principals.load(state).admin_credentials())
    key_id = admin.create_key(Tags=[{"TagKey": "env", "TagValue": "x"}])["KeyMetadata"]["KeyId"]
    admin.enable_key_rotation(KeyId=key_id)
    kms.close()
    path = state / "kms" / "state.json"
    document = json.loads(path.read_text())
    for record in document["keys"]:
        for name in ("tags", "rotation_period_days", "rotation_enabled_date"):
            del record[name]
    path.write_text(json.dumps(document))
    with serve_kms(state, "127.0.0.1", 0) as again:
        restarted = client(again.url, Principals.load(state).admin_credentials())
        assert tags_of(restarted, key_id) == {}
        assert restarted.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
