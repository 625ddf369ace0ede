"""principals.json and the simulated IMDSv2, with botocore's own IMDS client."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.utils import InstanceMetadataFetcher

from nitro_sim.imds import ImdsServer, TokenStore, serve_imds
from nitro_sim.kms import serve_kms
from nitro_sim.principals import Principals, PrincipalsError

ROLE_ARN = "arn:aws:iam::111122223333:role/nitro-wallet-parent"
ADMIN_ARN = "arn:aws:iam::111122223333:user/nitro-wallet-admin"
CREDS_PATH = "/latest/meta-data/iam/security-credentials/"
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------- principals


def test_principals_created_private_and_stable(tmp_path: Path) -> None:
    first = Principals.load_or_create(tmp_path / "s")
    path = tmp_path / "s" / "principals.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = json.loads(path.read_text())
    assert raw["account_id"] == "111122223333"
    assert raw["region"] == "us-east-1"
    arns = {p["arn"]: p for p in raw["principals"]}
    assert set(arns) == {ROLE_ARN, ADMIN_ARN}
    role, admin = arns[ROLE_ARN], arns[ADMIN_ARN]
    assert role["imds_role"]
    assert not role["administrator"]
    assert role["session_token"]
    assert role["access_key_id"].startswith("ASIA")
    assert len(role["access_key_id"]) == 20
    assert admin["administrator"]
    assert not admin["imds_role"]
    assert admin["session_token"] is None
    assert admin["access_key_id"].startswith("AKIA")
    assert len(admin["secret_access_key"]) == 40

    again = Principals.load_or_create(tmp_path / "s")
    assert again.role_credentials() == first.role_credentials()
    assert again.admin_credentials() == first.admin_credentials()
    looked_up = again.by_access_key(first.admin_credentials().access_key_id)
    assert looked_up is not None
    assert looked_up.arn == ADMIN_ARN
    assert again.by_access_key("AKIAAAAAAAAAAAAAAAAA") is None
    assert first.admin_credentials().secret_access_key not in repr(first.administrator())
    assert first.admin_credentials().secret_access_key not in repr(first.admin_credentials())

    other = Principals.load_or_create(tmp_path / "t")
    assert other.role_credentials() != first.role_credentials()


def _create(state: str) -> str:
    return Principals.load_or_create(Path(state)).role_credentials().access_key_id


@pytest.mark.process
def test_concurrent_creation_has_one_winner(tmp_path: Path) -> None:
    state = str(tmp_path / "race")
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        keys = pool.map(_create, [state] * 8)
    assert len(set(keys)) == 1
    assert [p.name for p in (tmp_path / "race").iterdir()] == ["principals.json"]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"account_id": "1", "region": "us-east-1", "principals": []}',
        json.dumps({"account_id": "111122223333", "region": "us-east-1", "principals": [{}]}),
    ],
)
def test_malformed_principals_file_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "principals.json").write_text(content)
    with pytest.raises(PrincipalsError):
        Principals.load_or_create(tmp_path)


# ------------------------------------------------------------------------ IMDS


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[ImdsServer]:
    server = serve_imds(tmp_path / "state", "127.0.0.1", 0)
    yield server
    server.close()


def request(
    imds: ImdsServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", imds.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def token(imds: ImdsServer, ttl: int = 60) -> str:
    status, body = request(
        imds, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}
    )
    assert status == 200
    return body


def test_token_ttl_bounds(imds: ImdsServer) -> None:
    for ttl in ("0", "21601", "-1", "abc", ""):
        status, _ = request(
            imds, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        )
        assert status == 400, ttl
    status, _ = request(imds, "PUT", "/latest/api/token")
    assert status == 400
    status, _ = request(
        imds,
        "PUT",
        "/latest/api/token",
        {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"},
    )
    assert status == 403
    assert token(imds, 1)
    assert token(imds, 21600)


def test_gets_require_a_valid_token(imds: ImdsServer) -> None:
    status, _ = request(imds, "GET", CREDS_PATH)  # IMDSv1
    assert status == 401
    status, _ = request(imds, "GET", CREDS_PATH, {"X-aws-ec2-metadata-token": "forged"})
    assert status == 401
    assert request(imds, "GET", CREDS_PATH, {"X-aws-ec2-metadata-token": token(imds)})[0] == 200
    issued = time.monotonic()
    short = token(imds, ttl=1)
    # Expired for certain once a second has passed since before it was issued; whether it
    # still worked in between depends on scheduling, so the boundary is tested on the
    # token store with a clock of its own (below).
    time.sleep(max(0.0, issued + 1.05 - time.monotonic()))
    assert request(imds, "GET", CREDS_PATH, {"X-aws-ec2-metadata-token": short})[0] == 401


def test_a_token_is_valid_until_its_ttl_and_not_after() -> None:
    now = [1000.0]
    tokens = TokenStore(clock=lambda: now[0])
    token = tokens.issue(ttl_seconds=60)
    assert tokens.valid(token)
    now[0] = 1059.5
    assert tokens.valid(token)
    now[0] = 1060.0
    assert not tokens.valid(token)
    assert not tokens.valid("forged")
    assert not tokens.valid(None)


def test_metadata_documents(imds: ImdsServer, tmp_path: Path) -> None:
    principals = Principals.load(tmp_path / "state")
    headers = {"X-aws-ec2-metadata-token": token(imds)}
    status, role_name = request(imds, "GET", CREDS_PATH, headers)
    assert (status, role_name) == (200, "nitro-wallet-parent")
    status, body = request(imds, "GET", CREDS_PATH + role_name, headers)
    assert status == 200
    creds = json.loads(body)
    assert set(creds) == {
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    }
    assert creds["Code"] == "Success"
    assert creds["Type"] == "AWS-HMAC"
    role = principals.role_credentials()
    assert creds["AccessKeyId"] == role.access_key_id
    assert creds["SecretAccessKey"] == role.secret_access_key
    assert creds["Token"] == role.session_token
    expires = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert datetime.now(UTC) + timedelta(hours=1) < expires < datetime.now(UTC) + timedelta(hours=7)
    assert request(imds, "GET", CREDS_PATH + "other-role", headers)[0] == 404
    assert request(imds, "GET", "/latest/meta-data/placement/region", headers) == (200, "us-east-1")
    status, body = request(imds, "GET", "/latest/dynamic/instance-identity/document", headers)
    identity = json.loads(body)
    assert identity["region"] == "us-east-1"
    assert identity["accountId"] == "111122223333"
    assert identity["instanceId"].startswith("i-")
    status, instance_id = request(imds, "GET", "/latest/meta-data/instance-id", headers)
    assert instance_id == identity["instanceId"]
    assert request(imds, "POST", "/latest/api/token")[0] == 405


def test_botocore_instance_metadata_fetcher(imds: ImdsServer, tmp_path: Path) -> None:
    fetcher = InstanceMetadataFetcher(
        timeout=5, num_attempts=1, base_url=imds.url, config={"ec2_metadata_v1_disabled": True}
    )
    creds = fetcher.retrieve_iam_role_credentials()
    role = Principals.load(tmp_path / "state").role_credentials()
    assert creds["role_name"] == "nitro-wallet-parent"
    assert creds["access_key"] == role.access_key_id
    assert creds["secret_key"] == role.secret_access_key
    assert creds["token"] == role.session_token


@pytest.mark.process
def test_boto3_session_from_environment_reaches_kms(tmp_path: Path) -> None:
    """A fresh process with only AWS_EC2_METADATA_SERVICE_ENDPOINT set calls the KMS."""
    state = tmp_path / "state"
    with serve_imds(state, "127.0.0.1", 0) as imds, serve_kms(state, "127.0.0.1", 0) as kms:
        script = (
            "import boto3, json, sys\n"
            "session = boto3.Session(region_name='us-east-1')\n"
            "creds = session.get_credentials().get_frozen_credentials()\n"
            "kms = session.client('kms', endpoint_url=sys.argv[1])\n"
            "try:\n"
            "    kms.create_key()\n"
            "    outcome = 'created'\n"
            "except kms.exceptions.ClientError as exc:\n"
            "    outcome = exc.response['Error']['Code']\n"
            "print(json.dumps({'key': creds.access_key, 'keys': kms.list_keys()['Keys'],"
            " 'create': outcome}))\n"
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(REPO),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
            "AWS_EC2_METADATA_V1_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "NO_PROXY": "127.0.0.1",
        }
        result = subprocess.run(
            [sys.executable, "-c", script, kms.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    answer = json.loads(result.stdout)
    assert answer["key"] == Principals.load(state).role_credentials().access_key_id
    assert answer["keys"] == []
    assert answer["create"] == "AccessDeniedException"  # the role is not a key administrator


@pytest.mark.process
def test_main_runs_as_a_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nitro_sim.imds", "--state-dir", str(tmp_path / "s"), "--port", "0"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        banner = json.loads(proc.stdout.readline())
        fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=banner["url"])
        assert fetcher.retrieve_iam_role_credentials()["role_name"] == "nitro-wallet-parent"
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
