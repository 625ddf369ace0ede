"""The whole appliance as plain processes on one machine, without root.

Used by ``make dev`` (``python -m nitro_sim.dev``) and by the end-to-end tests. It
drives the same production code (enclave_app, parent_app) through the same seams as
a real host, with the simulator standing in for Nitro and AWS:

    nitro-sim kms, nitro-sim imds          the AWS edges
    nitro-sim vsock-proxy 8000 -> KMS      the parent's vsock-proxy, allowlisted
    nitro-cli build-enclave / run-enclave  the EIF and the enclave (simulated)
    python -m parent_app                   the relay on 127.0.0.1

The KMS key is created first (its ARN is baked into the image), then the EIF is
built and measured, then the key policy is rendered, validated and applied: the same
order as the Ansible playbooks. ``key_policy_mode`` is ``sealed`` by default, as in
production: the EIF is signed with the stack's own release certificate (made once in
``<root>/release/``, see ``nitro_sim.release``), the policy pins its PCR8 and is
applied once with the lockout safety check bypassed; later starts find it in place and
leave it alone, and every image the stack signs (changed code included) keeps access.
``pcr0`` mode builds unsigned images and pins their PCR0, as before.

A second region (disaster recovery): the primary stack makes its key multi-Region
(``multi_region``) and replicates it into ``replica_regions`` with the same policy
rendering, before the policy is applied (a sealed policy denies ReplicateKey). A stack
with ``shared_account_root`` is a host in another region of the same AWS account: it
shares the primary's principals, KMS state and Nitro root of trust (and release
certificate), runs its own KMS endpoint (``--region``), enclave, vsock-proxy and relay,
and uses ``key_arn``, its region's replica: the enclave pins it, the relay names it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import jinja2
from botocore.exceptions import ClientError

from nitro_sim.release import ReleaseSigner, load_or_create_release_signer
from nitro_wallet.key_policy import PCR0, SEALED, render_key_policy, validate_key_policy
from nitro_wallet.kms_replicas import ensure_replica

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_CONTEXT_SCRIPT = REPO_ROOT / "roles" / "enclave" / "files" / "build_context.py"
ENCLAVE_TEMPLATE = REPO_ROOT / "roles" / "enclave" / "templates" / "enclave.toml.j2"
ENCLAVE_CID = 16
ENCLAVE_PORT = 5000
KMS_PROXY_PORT = 8000
ENCLAVE_NAME = "nitro-wallet"
KEY_ALIAS = "alias/nitro-wallet"


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Measurements:
    eif: Path
    pcr0: str
    pcr1: str
    pcr2: str
    pcr8: str | None = None  # signed images only

    def pcrs(self) -> dict[int, bytes]:
        """As the NSM attests them (PCR8 is 48 zero bytes for an unsigned image)."""
        values = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2, 8: self.pcr8 or "00" * 48}
        return {index: bytes.fromhex(value) for index, value in values.items()}


@dataclass
class LocalStack:
    root: Path
    relay_port: int = 8080
    kms_port: int = field(default_factory=free_port)
    imds_port: int = field(default_factory=free_port)
    region: str = "us-east-1"
    allow_debug: bool = False
    key_policy_mode: str = SEALED
    # The relay's default chain (anvil's and hardhat's local chain id) and optional node.
    chain_id: int = 31337
    upstream_rpc_url: str | None = None
    multi_region: bool = False
    replica_regions: tuple[str, ...] = ()
    shared_account_root: Path | None = None
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    key_arn: str = ""
    measurements: Measurements | None = None

    # ---------------------------------------------------------------- layout
    @property
    def sim_dir(self) -> Path:
        return self.root / "sim"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    @property
    def kms_url(self) -> str:
        return f"http://127.0.0.1:{self.kms_port}"

    @property
    def relay_db(self) -> Path:
        return self.root / "relay" / "accounts.db"

    @property
    def release_signer(self) -> ReleaseSigner:
        """The stack's release signing key and certificate, made on first use."""
        return load_or_create_release_signer(self.root / "release", "nitro-wallet dev release")

    @property
    def sealed(self) -> bool:
        return self.key_policy_mode == SEALED

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["NITRO_SIM_DIR"] = str(self.sim_dir)
        env["PYTHONPATH"] = str(REPO_ROOT)
        return env

    # ------------------------------------------------------------- lifecycle
    def start(self) -> LocalStack:
        for directory in (self.root, self.sim_dir, self.log_dir, self.relay_db.parent):
            directory.mkdir(parents=True, exist_ok=True)
        if self.shared_account_root is not None:
            self._share_account(self.shared_account_root)
        try:
            self._run(["-m", "nitro_sim", "init", "--state-dir", str(self.sim_dir)])
            self._spawn(
                "kms",
                [
                    "-m",
                    "nitro_sim",
                    "kms",
                    "--state-dir",
                    str(self.sim_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.kms_port),
                    "--region",
                    self.region,
                ],
            )
            self._spawn(
                "imds",
                [
                    "-m",
                    "nitro_sim",
                    "imds",
                    "--state-dir",
                    str(self.sim_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.imds_port),
                ],
            )
            wait_for_port(self.kms_port, "KMS simulator", self._processes["kms"])
            wait_for_port(self.imds_port, "IMDS simulator", self._processes["imds"])
            if self.key_policy_mode not in (SEALED, PCR0):
                raise StackError(
                    f"key_policy_mode must be sealed or pcr0, not {self.key_policy_mode!r}"
                )
            self.key_arn = self.ensure_key()
            self.measurements = self.build_eif("nitro-wallet")
            pcr0s = () if self.sealed else [self.measurements.pcr0]
            for region in self.replica_regions:
                self.replicate_key(region, pcr0s)
            self.apply_policy(pcr0s)
            self.start_vsock_proxy()
            self.run_enclave(self.measurements.eif)
            self.start_relay()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop_process("relay")
        if self.sim_dir.exists():
            self.nitro_cli(["terminate-enclave", "--all"], check=False)
        for name in list(self._processes):
            self._stop_process(name)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- principals
    def principals(self) -> list[dict[str, Any]]:
        raw = json.loads((self.sim_dir / "principals.json").read_text())
        principals: list[dict[str, Any]] = raw["principals"]
        return principals

    def _principal(self, flag: str) -> dict[str, Any]:
        for principal in self.principals():
            if principal.get(flag):
                return principal
        raise StackError(f"principals.json has no principal with {flag}")

    @property
    def admin_arn(self) -> str:
        return str(self._principal("administrator")["arn"])

    @property
    def role_arn(self) -> str:
        return str(self._principal("imds_role")["arn"])

    def kms_client(self, who: str = "administrator") -> KMSClient:
        """A boto3 KMS client signed with the admin's or the instance role's keys."""
        principal = self._principal(who)
        return boto3.session.Session().client(
            "kms",
            region_name=self.region,
            endpoint_url=self.kms_url,
            aws_access_key_id=principal["access_key_id"],
            aws_secret_access_key=principal["secret_access_key"],
            aws_session_token=principal.get("session_token"),
        )

    # ------------------------------------------------------------------ KMS
    def ensure_key(self) -> str:
        kms = self.kms_client()
        if self.key_arn:  # given, e.g. this region's replica of a multi-Region key
            return kms.describe_key(KeyId=self.key_arn)["KeyMetadata"]["Arn"]
        for alias in kms.list_aliases()["Aliases"]:
            if alias.get("AliasName") == KEY_ALIAS and alias.get("TargetKeyId"):
                return kms.describe_key(KeyId=alias["TargetKeyId"])["KeyMetadata"]["Arn"]
        key = kms.create_key(
            Description="nitro-wallet data keys (simulator)", MultiRegion=self.multi_region
        )["KeyMetadata"]
        kms.create_alias(AliasName=KEY_ALIAS, TargetKeyId=key["KeyId"])
        return key["Arn"]

    def apply_policy(
        self,
        pcr0s: Iterable[str] = (),
        *,
        pcr8s: Iterable[str] | None = None,
        allow_debug: bool | None = None,
    ) -> None:
        """Render, validate and apply the key policy in the stack's mode.

        sealed: pins ``pcr8s`` (default: the stack's release certificate) and ``pcr0s``
        if given; applied with BypassPolicyLockoutSafetyCheck, and only when the key does
        not carry exactly this policy already (after that nobody can change it).
        pcr0: pins ``pcr0s``.
        """
        policy = self.key_policy(pcr0s, pcr8s=pcr8s, allow_debug=allow_debug)
        (self.root / "kms-key-policy.json").write_text(json.dumps(policy, indent=2) + "\n")
        kms = self.kms_client()
        current = json.loads(kms.get_key_policy(KeyId=self.key_arn, PolicyName="default")["Policy"])
        if current == policy:
            return
        try:
            kms.put_key_policy(
                KeyId=self.key_arn,
                PolicyName="default",
                Policy=json.dumps(policy),
                BypassPolicyLockoutSafetyCheck=self.sealed,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "AccessDeniedException":
                raise
            raise StackError(
                f"the KMS key {self.key_arn} is sealed with another policy than "
                f"{self.root / 'kms-key-policy.json'} (its release certificate or mode "
                f"changed?): nobody can change a sealed policy; remove {self.root} to start "
                "over with a new key"
            ) from exc

    def key_policy(
        self,
        pcr0s: Iterable[str] = (),
        *,
        pcr8s: Iterable[str] | None = None,
        allow_debug: bool | None = None,
    ) -> dict[str, Any]:
        """The key policy in the stack's mode, rendered and validated (see apply_policy)."""
        policy = render_key_policy(
            mode=self.key_policy_mode,
            admin_arns=[self.admin_arn],
            enclave_arns=[self.role_arn],
            pcr0s=pcr0s,
            pcr8s=([self.release_signer.pcr8] if pcr8s is None else pcr8s) if self.sealed else (),
        )
        validate_key_policy(
            policy,
            allow_debug=self.allow_debug if allow_debug is None else allow_debug,
            mode=self.key_policy_mode,
        )
        return policy

    # --------------------------------------------------------- second region
    def replicate_key(self, region: str, pcr0s: Iterable[str] = ()) -> str:
        """The ARN of the key's replica in ``region``, made (once) with the same policy
        rendering as the key itself: before the policy is applied, since a sealed policy
        denies ReplicateKey to everyone."""
        policy = json.dumps(self.key_policy(pcr0s))
        return ensure_replica(self.kms_client(), self.key_arn, region, policy, self.sealed)

    def _share_account(self, primary_root: Path) -> None:
        """Be a host of ``primary_root``'s AWS account in another region: the account's
        principals and KMS state, the Nitro root of trust and the release certificate are
        the primary's; vsock, enclaves, relay and logs are this host's own."""
        links = {
            self.sim_dir / "principals.json": primary_root / "sim" / "principals.json",
            self.sim_dir / "ca": primary_root / "sim" / "ca",
            self.sim_dir / "kms": primary_root / "sim" / "kms",
            self.root / "release": primary_root / "release",  # made in sealed mode only
        }
        for link, target in links.items():
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            if not target.exists():
                if target.name == "release":
                    continue
                raise StackError(f"{target} does not exist: start the primary stack first")
            if link.exists() or link.is_symlink():
                raise StackError(f"{link} exists: this state directory has an account of its own")
            link.symlink_to(target.resolve())

    # -------------------------------------------------------------- enclave
    def stage_enclave_context(
        self, name: str, mutate: Callable[[Path], None] | None = None
    ) -> Path:
        """The build context, made exactly as the enclave role makes it on a host:
        roles/enclave/files/build_context.py packs it, the role's template renders
        enclave.toml. ``mutate`` lets a test change the image (a different PCR0)."""
        context = self.root / "build" / name
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        archive = self.root / "build" / f"{name}.tar.gz"
        subprocess.run(
            [
                sys.executable,
                str(BUILD_CONTEXT_SCRIPT),
                "--repo-root",
                str(REPO_ROOT),
                "--output",
                str(archive),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with tarfile.open(archive) as packed:
            packed.extractall(context, filter="data")
        (context / "enclave.toml").write_text(self.render_enclave_config())
        if mutate is not None:
            mutate(context)
        return context

    def render_enclave_config(self, **overrides: Any) -> str:
        """roles/enclave/templates/enclave.toml.j2 with the simulator's values."""
        variables: dict[str, Any] = {
            "ansible_managed": "rendered by nitro_sim.stack (make dev)",
            "enclave_vsock_port": ENCLAVE_PORT,
            "enclave_max_frame_bytes": 1048576,
            "enclave_max_connections": 4096,
            "enclave_workers": 16,
            "enclave_queue_depth": 64,
            "enclave_idle_timeout_seconds": 60,
            "enclave_frame_timeout_seconds": 10,
            "enclave_max_buffered_bytes": 64 * 1024 * 1024,
            "enclave_region": self.region,
            "enclave_kms_endpoint_scheme": "http",
            "enclave_kms_endpoint_host": "127.0.0.1",
            "enclave_kms_proxy_port": KMS_PROXY_PORT,
            "enclave_kms_timeout_seconds": 10,
            "enclave_kms_key_ids": [self.key_arn],
            "enclave_kms_max_concurrent_calls": 8,
            "enclave_kms_recipient_key_pool": 8,
            "enclave_kms_probe_interval_seconds": 30,
            "enclave_key_cache_max_entries": 20000,
            "enclave_key_cache_ttl_seconds": 900,
            "enclave_allow_pre_eip155": False,
        }
        variables.update(overrides)
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(ENCLAVE_TEMPLATE.parent),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - renders TOML
            keep_trailing_newline=True,
        )
        environment.filters["to_json"] = json.dumps
        environment.filters["bool"] = bool
        return environment.get_template(ENCLAVE_TEMPLATE.name).render(**variables)

    def build_eif(
        self,
        name: str,
        mutate: Callable[[Path], None] | None = None,
        *,
        signer: ReleaseSigner | None = None,
        signed: bool | None = None,
    ) -> Measurements:
        """Build an EIF. Signed with ``signer``, or (``signed`` defaults to the stack being
        sealed) with the stack's release certificate; unsigned with ``signed=False``."""
        context = self.stage_enclave_context(name, mutate)
        eif = self.root / f"{name}.eif"
        if signer is None and (self.sealed if signed is None else signed):
            signer = self.release_signer
        output = self.nitro_cli(
            [
                "build-enclave",
                "--docker-uri",
                f"{name}:dev",
                "--docker-dir",
                str(context),
                "--output-file",
                str(eif),
                *(signer.nitro_cli_args() if signer is not None else []),
            ]
        )
        pcrs = json.loads(output)["Measurements"]
        return Measurements(
            eif=eif,
            pcr0=pcrs["PCR0"],
            pcr1=pcrs["PCR1"],
            pcr2=pcrs["PCR2"],
            pcr8=pcrs.get("PCR8"),
        )

    def run_enclave(self, eif: Path, *, debug: bool = False) -> dict[str, Any]:
        self.nitro_cli(["terminate-enclave", "--enclave-name", ENCLAVE_NAME], check=False)
        args = [
            "run-enclave",
            "--eif-path",
            str(eif),
            "--cpu-count",
            "2",
            "--memory",
            "512",
            "--enclave-cid",
            str(ENCLAVE_CID),
            "--enclave-name",
            ENCLAVE_NAME,
        ]
        if debug:
            args.append("--debug-mode")
        result: dict[str, Any] = json.loads(self.nitro_cli(args))
        return result

    def nitro_cli(self, args: list[str], *, check: bool = True) -> str:
        return self._run(["-m", "nitro_sim.nitro_cli", *args], check=check)

    def start_vsock_proxy(self) -> None:
        allowlist = self.root / "vsock-proxy.yaml"
        allowlist.write_text(f"allowlist:\n  - {{address: 127.0.0.1, port: {self.kms_port}}}\n")
        self._spawn(
            "vsock-proxy",
            [
                "-m",
                "nitro_sim",
                "vsock-proxy",
                str(KMS_PROXY_PORT),
                "127.0.0.1",
                str(self.kms_port),
                "--config",
                str(allowlist),
                # One worker per kept-alive KMS connection: at least the enclave's
                # kms.max_concurrent_calls (8), with room for a credential rotation.
                "--num_workers",
                "16",
            ],
        )
        socket_path = self.sim_dir / "vsock" / f"3_{KMS_PROXY_PORT}.sock"
        wait_until(socket_path.exists, "vsock-proxy socket", self._processes["vsock-proxy"])

    # ---------------------------------------------------------------- relay
    def relay_config(self) -> str:
        upstream = self.upstream_rpc_url
        upstream_line = f"upstream_rpc_url = {json.dumps(upstream)}\n" if upstream else ""
        return (
            "[relay]\n"
            f'listen_host = "127.0.0.1"\nlisten_port = {self.relay_port}\n'
            f"chain_id = {self.chain_id}\n{upstream_line}"
            "[enclave]\n"
            f'transport = "unix:{self.sim_dir / "vsock"}"\n'
            f"cid = {ENCLAVE_CID}\nport = {ENCLAVE_PORT}\ntimeout_seconds = 30\n"
            "[kms]\n"
            f'key_id = "{self.key_arn}"\nregion = "{self.region}"\n'
            "[storage]\n"
            f'backend = "sqlite"\nsqlite_path = "{self.relay_db}"\n'
            "[credentials]\n"
            f'source = "imds"\nimds_endpoint = "http://127.0.0.1:{self.imds_port}"\n'
        )

    def start_relay(self) -> None:
        config = self.root / "relay.toml"
        config.write_text(self.relay_config())
        self._spawn("relay", ["-m", "parent_app", "--config", str(config)])
        wait_for_http(f"{self.relay_url}/readyz", self._processes["relay"])

    def restart_relay(self) -> None:
        self._stop_process("relay")
        self.start_relay()

    def stop_relay(self) -> None:
        """Stop the relay only (``start_relay`` brings it back), e.g. for a restore."""
        self._stop_process("relay")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ processes
    def _run(self, args: list[str], *, check: bool = True) -> str:
        completed = subprocess.run(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=self.env(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if check and completed.returncode != 0:
            raise StackError(
                f"{' '.join(args[:3])} failed ({completed.returncode}): "
                f"{completed.stderr.decode(errors='replace').strip()}"
            )
        return completed.stdout.decode()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._processes[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _stop_process(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise StackError(f"{what}: process exited with {process.returncode}")
        time.sleep(0.05)
    raise StackError(f"{what}: not ready after {timeout:.0f}s")


def wait_for_port(port: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    def accepting() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(accepting, what, process)


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, url, process, timeout=60)


def http_json(
    method: str,
    url: str,
    body: Mapping[str, Any] | bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """A small JSON HTTP client for the demo and tests (status, decoded body)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")
