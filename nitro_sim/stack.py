"""The whole appliance as plain processes on one machine, without root.

Used by ``make dev`` (``python -m nitro_sim.dev``) and by the end-to-end tests. It
drives the same production code (enclave_app, parent_app) through the same seams as
a real host, with the simulator standing in for Nitro and AWS:

    nitro-sim kms, nitro-sim imds          the AWS edges
    nitro-sim vsock-proxy 8000 -> KMS      the parent's vsock-proxy, allowlisted
    enclave_supervise.py -> nitro-cli      the enclave (simulated), under the host's
                                           own supervisor script (roles/enclave)
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

Every long-running process is a ``nitro_sim.supervisor.Service``: restarted with
backoff when it dies, as systemd restarts the units on a host.

Callers authenticate as on a host (``nitro_sim.dev_auth``): the stack keeps a stamp key,
a bearer token with every scope and the signing policy that grants both everything in
its root, builds the policy into the image, and gives the relay the token file, the
policy and the audit log. ``http_json`` sends the token of the stack whose relay it
calls (``credentials=False`` sends none).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
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

from nitro_sim import ports, statedir
from nitro_sim.dev_auth import DevAuth, prepare_dev_auth
from nitro_sim.release import ReleaseSigner, load_or_create_release_signer
from nitro_sim.supervisor import RestartPolicy, Service, ServiceError
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
SUPERVISE_SCRIPT = REPO_ROOT / "roles" / "enclave" / "files" / "enclave_supervise.py"
#: The enclave's bound on concurrent KMS calls (enclave.toml kms.max_concurrent_calls).
KMS_CONCURRENCY = 8
#: The vsock-proxy's workers: one per kept-alive KMS connection of the enclave, so at
#: least ``KMS_CONCURRENCY``, with room for a credential rotation (the old connections
#: linger while new ones open); none of the enclave's calls waits in the proxy's backlog.
KMS_PROXY_WORKERS = 2 * KMS_CONCURRENCY


class StackError(RuntimeError):
    pass


#: The old name, for callers that still pick a port first; prefer port 0 (LocalStack).
free_port = ports.free_port


#: What ``stop()`` may take in all, however the processes behave.
STOP_BUDGET_SECONDS = 20.0
#: Seconds between two checks that the enclave still runs (5 on hosts; cheaper here).
SUPERVISE_INTERVAL = 2.0
_KMS_BANNER = re.compile(r'"service": "kms", "url": "[^"]*", "port": (\d+)')
_IMDS_BANNER = re.compile(r'"service": "imds", "url": "[^"]*", "port": (\d+)')
_RELAY_BANNER = re.compile(r"relay listening on [^\s]+:(\d+)")


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
    """The appliance as supervised processes; port 0 lets a service pick a free port.

    A service given port 0 binds an ephemeral port itself and reports it (the KMS and
    IMDS banners, the relay's "listening" log line), so no port is chosen in one process
    and bound in another. A fixed port must be free at start, and every readiness
    answer counts only if the listening socket belongs to the process started here.
    """

    root: Path
    relay_port: int = 0
    kms_port: int = 0
    imds_port: int = 0
    region: str = "us-east-1"
    allow_debug: bool = False
    key_policy_mode: str = SEALED
    # The relay's default chain (anvil's and hardhat's local chain id) and optional node.
    chain_id: int = 31337
    upstream_rpc_url: str | None = None
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_event: Callable[[str], None] | None = None
    multi_region: bool = False
    replica_regions: tuple[str, ...] = ()
    # Extra relay.toml keys by section ({"enclave": {"pool_size": 4}}) and enclave.toml.j2
    # variables ({"enclave_workers": 2}), e.g. for capacity tests; keys the stack sets
    # itself cannot be given here.
    relay_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    enclave_settings: Mapping[str, Any] = field(default_factory=dict)
    shared_account_root: Path | None = None
    key_arn: str = ""
    # The signing policy (YAML, a Jinja2 template over the dev key and token names):
    # None builds policy/dev.yaml.j2, which grants the dev key and token everything.
    policy_text: str | None = None
    dev_auth: DevAuth | None = None
    measurements: Measurements | None = None
    services: dict[str, Service] = field(default_factory=dict)
    _enclave_eif: Path | None = None
    _enclave_debug: bool = False
    _interrupted: threading.Event = field(default_factory=threading.Event)
    _lock_fd: int | None = None

    # ---------------------------------------------------------------- layout
    @property
    def sim_dir(self) -> Path:
        return self.root / "sim"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

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
    def api_token(self) -> str:
        """The bearer token with every scope (``.dev-state/api-token``)."""
        return self._dev_auth.token

    @property
    def api_key_path(self) -> Path:
        """The stamp key with every scope (``.dev-state/api-key.pem``)."""
        return self._dev_auth.key_path

    @property
    def audit_log(self) -> Path:
        return self._dev_auth.audit_log

    @property
    def sim_root(self) -> Path:
        """The simulator's root certificate (``.dev-state/sim-root.pem``)."""
        return self._dev_auth.sim_root

    @property
    def _dev_auth(self) -> DevAuth:
        if self.dev_auth is None:
            raise StackError("the stack's credentials exist once start() has begun")
        return self.dev_auth

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
        self._lock_state_dir()
        if self.shared_account_root is not None:
            self._share_account(self.shared_account_root)
        try:
            self._check_ports_free()
            self._run(["-m", "nitro_sim", "init", "--state-dir", str(self.sim_dir)])
            self.dev_auth = prepare_dev_auth(self.root, self.sim_dir, self.policy_text)
            self._start_simulated_aws()
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
            wait_until(self.relay_ready, f"{self.relay_url}/readyz", timeout=60, stack=self)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, budget: float = STOP_BUDGET_SECONDS) -> None:
        """Stop every process of this stack within ``budget`` seconds; none is left behind."""
        deadline = time.monotonic() + budget
        self._interrupted.set()
        for name in ("relay", "enclave", "vsock-proxy", "imds", "kms"):
            service = self.services.get(name)
            if service is not None:
                service.stop(max(0.5, min(10.0, deadline - time.monotonic())))
        self._kill_leftover_enclaves()
        self._interrupted.clear()
        self._unlock_state_dir()

    def interrupt(self) -> None:
        """Make a ``start()`` in progress give up at its next wait (a signal handler's job)."""
        self._interrupted.set()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _lock_state_dir(self) -> None:
        fd = os.open(self.root / ".stack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StackError(
                f"another stack runs from {self.root} (pid {holder}): stop it or use "
                "another state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_state_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_ports_free(self) -> None:
        for what, port in (
            ("relay", self.relay_port),
            ("KMS", self.kms_port),
            ("IMDS", self.imds_port),
        ):
            if port:
                self._check_port_free(port, what)

    @staticmethod
    def _check_port_free(port: int, what: str) -> None:
        try:
            ports.check_free(port, what)
        except ports.PortInUse as taken:
            raise StackError(str(taken)) from None

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
        (context / "enclave.toml").write_text(self.render_enclave_config(**self.enclave_settings))
        shutil.copyfile(self._dev_auth.policy_file, context / "policy.json")
        if mutate is not None:
            mutate(context)
        return context

    def render_enclave_config(self, **overrides: Any) -> str:
        """roles/enclave/templates/enclave.toml.j2 with the simulator's values."""
        variables: dict[str, Any] = {
            "ansible_managed": "rendered by nitro_sim.stack (make dev)",
            "enclave_vsock_port": ENCLAVE_PORT,
            "enclave_max_frame_bytes": 4 * 1048576,
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
            "enclave_kms_max_concurrent_calls": KMS_CONCURRENCY,
            "enclave_kms_recipient_key_pool": 8,
            "enclave_kms_recipient_key_uses": 100,
            "enclave_kms_recipient_key_max_age_seconds": 60,
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
        """(Re)start the supervised enclave from ``eif``; its describe-enclaves record."""
        self._enclave_eif, self._enclave_debug = eif, debug
        service = self.services.get("enclave")
        if service is None:
            self._write_nitro_cli_wrapper()
            service = self._service(
                "enclave",
                self._enclave_command,
                exec_stop=self._terminate_enclave,
                notify_socket=self.run_dir / "enclave.notify",
            )
        else:
            service.stop()
        service.start()
        for record in json.loads(self.nitro_cli(["describe-enclaves"])):
            if record.get("EnclaveName") == ENCLAVE_NAME:
                found: dict[str, Any] = record
                return found
        raise StackError("the enclave is not in describe-enclaves right after it started")

    def nitro_cli(self, args: list[str], *, check: bool = True, timeout: float = 120) -> str:
        return self._run(["-m", "nitro_sim.nitro_cli", *args], check=check, timeout=timeout)

    def _write_nitro_cli_wrapper(self) -> None:
        """``nitro-cli`` for the enclave supervisor, as roles/nitro_simulator installs it."""
        wrapper = self.run_dir / "nitro-cli"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text(
            "#!/bin/sh\n"
            f"NITRO_SIM_DIR={shlex.quote(str(self.sim_dir))}\n"
            f"PYTHONPATH={shlex.quote(str(REPO_ROOT))}\n"
            "export NITRO_SIM_DIR PYTHONPATH\n"
            f'exec {shlex.quote(sys.executable)} -m nitro_sim.nitro_cli "$@"\n'
        )
        wrapper.chmod(0o755)

    def _enclave_command(self) -> list[str]:
        """roles/enclave's ExecStart: the same supervisor script as on a host."""
        if self._enclave_eif is None:
            raise StackError("run_enclave() names the EIF before the enclave starts")
        command = [
            sys.executable,
            str(SUPERVISE_SCRIPT),
            "--nitro-cli",
            str(self.run_dir / "nitro-cli"),
            "--name",
            ENCLAVE_NAME,
            "--eif-path",
            str(self._enclave_eif),
            "--cpu-count",
            "2",
            "--memory",
            "512",
            "--enclave-cid",
            str(ENCLAVE_CID),
            "--interval",
            str(SUPERVISE_INTERVAL),
        ]
        return [*command, "--debug-mode"] if self._enclave_debug else command

    def _terminate_enclave(self, budget: float) -> None:
        """roles/enclave's ExecStop."""
        self.nitro_cli(
            ["terminate-enclave", "--enclave-name", ENCLAVE_NAME], check=False, timeout=budget
        )

    def enclave_record(self) -> dict[str, Any] | None:
        """The simulator's record (state.json) of the running enclave: PIDs, CID, state."""
        root = statedir.enclaves_dir(self.sim_dir)
        for directory in sorted(root.iterdir()) if root.is_dir() else []:
            record = statedir.read_record(directory) if directory.is_dir() else None
            if record is not None and record.get("EnclaveName") == ENCLAVE_NAME:
                return record
        return None

    def _kill_leftover_enclaves(self) -> None:
        """Last resort of ``stop()``: SIGKILL any enclave runner or enclave process left."""
        root = statedir.enclaves_dir(self.sim_dir)
        if not root.is_dir():
            return
        for directory in root.iterdir():
            record = statedir.read_record(directory) if directory.is_dir() else None
            for key in ("ProcessID", "EnclaveProcessID"):
                pid = (record or {}).get(key)
                if isinstance(pid, int) and statedir.process_matches(pid, directory.name):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

    def start_vsock_proxy(self) -> None:
        allowlist = self.root / "vsock-proxy.yaml"
        allowlist.write_text(f"allowlist:\n  - {{address: 127.0.0.1, port: {self.kms_port}}}\n")
        socket_path = self.sim_dir / "vsock" / f"3_{KMS_PROXY_PORT}.sock"
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()

        def listening(service: Service) -> None:
            wait_until(socket_path.exists, "vsock-proxy socket", service=service, stack=self)

        self._service(
            "vsock-proxy",
            lambda: [
                sys.executable,
                "-m",
                "nitro_sim",
                "vsock-proxy",
                str(KMS_PROXY_PORT),
                "127.0.0.1",
                str(self.kms_port),
                "--config",
                str(allowlist),
                "--num_workers",
                str(KMS_PROXY_WORKERS),
            ],
            ready=listening,
        ).start()

    # ---------------------------------------------------------------- relay
    def relay_config(self) -> str:
        return _with_settings(self._relay_base_config(), self.relay_settings)

    def _relay_base_config(self) -> str:
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
            "[auth]\n"
            f"tokens_file = {json.dumps(str(self._dev_auth.tokens_file))}\n"
            f"policy_file = {json.dumps(str(self._dev_auth.policy_file))}\n"
            "[audit]\n"
            f"log_path = {json.dumps(str(self._dev_auth.audit_log))}\n"
        )

    def start_relay(self) -> None:
        config = self.root / "relay.toml"

        def command() -> list[str]:
            config.write_text(self.relay_config())  # the port is known after the first start
            return [sys.executable, "-m", "parent_app", "--config", str(config)]

        def serving(service: Service) -> None:
            self.relay_port = self._await_port(service, "relay", _RELAY_BANNER, self.relay_port)
            _RELAY_TOKENS[self.relay_url] = self.api_token
            wait_until(
                lambda: http_status(f"{self.relay_url}/healthz") == 200,
                f"{self.relay_url}/healthz",
                service=service,
                stack=self,
            )
            self._check_owner(service, "relay", self.relay_port)

        self._service("relay", command, ready=serving).start()

    def restart_relay(self) -> None:
        self.services["relay"].restart()

    def relay_ready(self) -> bool:
        """/readyz answers 200, from the relay this stack started."""
        relay = self.services.get("relay")
        if relay is None or relay.pid is None or http_status(f"{self.relay_url}/readyz") != 200:
            return False
        return ports.owned_by(self.relay_port, relay.pid)

    def stop_relay(self) -> None:
        """Stop the relay only (``start_relay`` brings it back), e.g. for a restore."""
        relay = self.services.pop("relay", None)
        if relay is not None:
            relay.stop()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ processes
    def _start_simulated_aws(self) -> None:
        for name, banner, attribute in (
            ("kms", _KMS_BANNER, "kms_port"),
            ("imds", _IMDS_BANNER, "imds_port"),
        ):

            def command(name: str = name, attribute: str = attribute) -> list[str]:
                command = [
                    sys.executable,
                    "-m",
                    "nitro_sim",
                    name,
                    "--state-dir",
                    str(self.sim_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(getattr(self, attribute)),
                ]
                return [*command, "--region", self.region] if name == "kms" else command

            def serving(
                service: Service,
                banner: re.Pattern[str] = banner,
                attribute: str = attribute,
            ) -> None:
                port = self._await_port(service, service.name, banner, getattr(self, attribute))
                setattr(self, attribute, port)
                self._check_owner(service, service.name, port)

            self._service(name, command, ready=serving).start()

    def _service(
        self,
        name: str,
        command: Callable[[], list[str]],
        *,
        ready: Callable[[Service], None] | None = None,
        exec_stop: Callable[[float], None] | None = None,
        notify_socket: Path | None = None,
    ) -> Service:
        service = Service(
            name,
            command,
            env=self.env(),
            cwd=REPO_ROOT,
            log_path=self.log_dir / f"{name}.log",
            ready=ready,
            exec_stop=exec_stop,
            notify_socket=notify_socket,
            policy=self.restart_policy,
            on_event=self._event,
        )
        self.services[name] = service
        return service

    def _event(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n"
        with (self.log_dir / "supervisor.log").open("a") as log:
            log.write(line)
        if self.on_event is not None:
            self.on_event(message)

    def _await_port(
        self, service: Service, what: str, banner: re.Pattern[str], configured: int
    ) -> int:
        """The port ``service`` listens on: its own report when it was given port 0."""
        found: list[int] = []

        def reported() -> bool:
            match = banner.search(service.output())
            if match:
                found.append(int(match.group(1)))
            return bool(match)

        wait_until(reported, f"{what} start", service=service, stack=self)
        if configured and found[0] != configured:
            raise StackError(f"{what} listens on {found[0]}, not on the configured {configured}")
        return found[0]

    @staticmethod
    def _check_owner(service: Service, what: str, port: int) -> None:
        if service.pid is None or not ports.owned_by(port, service.pid):
            holders = ", ".join(str(h) for h in ports.holders(port)) or "another process"
            raise StackError(
                f"the {what} port {port} answers, but from {holders}, not from the {what} "
                f"this stack started (pid {service.pid})"
            )

    def _run(self, args: list[str], *, check: bool = True, timeout: float = 120) -> str:
        try:
            completed = subprocess.run(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                env=self.env(),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            if check:
                raise StackError(f"{' '.join(args[:3])} timed out after {timeout:.0f}s") from exc
            return ""
        if check and completed.returncode != 0:
            raise StackError(
                f"{' '.join(args[:3])} failed ({completed.returncode}): "
                f"{completed.stderr.decode(errors='replace').strip()}"
            )
        return completed.stdout.decode()


def _with_settings(config: str, settings: Mapping[str, Mapping[str, Any]]) -> str:
    """``config`` (TOML) with ``settings``' keys added to their sections."""
    for section, values in settings.items():
        header = f"[{section}]\n"
        if header not in config:
            raise StackError(f"the relay configuration has no [{section}] section")
        body = config.split(header, 1)[1].split("\n[", 1)[0]
        lines = ""
        for key, value in values.items():
            if re.search(rf"^{re.escape(key)} =", body, re.MULTILINE):
                raise StackError(f"[{section}] {key} is set by the stack itself")
            lines += f"{key} = {json.dumps(value)}\n"
        config = config.replace(header, header + lines, 1)
    return config


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout: float = 30.0,
    service: Service | None = None,
    stack: LocalStack | None = None,
) -> None:
    """Poll ``predicate``; give up when the service exits, the stack is interrupted, or
    ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if service is not None:
            try:
                service.check_running()
            except ServiceError as exc:
                raise StackError(f"{what}: {exc}; see {service.log_path}") from None
        if stack is not None and stack._interrupted.is_set():
            raise StackError(f"{what}: interrupted")
        time.sleep(0.05)
    raise StackError(f"{what}: not ready after {timeout:.0f}s")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status a GET of ``url`` answers, None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


#: The bearer token of each relay a stack of this process started, by its base URL.
_RELAY_TOKENS: dict[str, str] = {}


def http_json(
    method: str,
    url: str,
    body: Mapping[str, Any] | bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    credentials: bool = True,
) -> tuple[int, dict[str, Any]]:
    """A small JSON HTTP client for the demo and tests (status, decoded body).

    A call to the relay of a stack started in this process carries that stack's bearer
    token (every scope), unless ``headers`` bring credentials of their own or
    ``credentials`` is False.
    """
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    own = {name.lower() for name in headers or {}} & {"authorization", "x-stamp"}
    token = next(
        (t for base, t in _RELAY_TOKENS.items() if url == base or url.startswith(base + "/")),
        None,
    )
    if credentials and token is not None and not own:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")
