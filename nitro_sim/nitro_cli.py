"""Simulated ``nitro-cli``: the real command shapes and JSON output, without Nitro hardware.

    nitro-cli build-enclave --docker-uri URI --docker-dir DIR --output-file FILE
                            [--signing-certificate CERT.pem --private-key KEY.pem]
    nitro-cli describe-eif --eif-path FILE
    nitro-cli run-enclave --eif-path FILE --cpu-count N --memory MIB
                          [--enclave-cid CID] [--enclave-name NAME] [--debug-mode]
    nitro-cli describe-enclaves
    nitro-cli terminate-enclave (--enclave-id ID | --enclave-name NAME | --all)

Results go to stdout as pretty-printed JSON, progress lines to stderr; errors go to
stderr as ``[ Exx ] <title> <detail>`` with the real error numbers, and exit 1.
State lives under ``$NITRO_SIM_DIR`` (see ``nitro_sim.statedir``). Environment knobs
for the simulator only: ``NITRO_SIM_ALLOCATOR_CONFIG`` (else
``/etc/nitro_enclaves/allocator.yaml``), ``NITRO_SIM_ISOLATION`` (auto|netns|none),
``NITRO_SIM_BOOT_TIMEOUT`` (seconds), ``SOURCE_DATE_EPOCH`` (build time of an EIF).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

from nitro_sim import eif as eif_mod
from nitro_sim import statedir
from nitro_sim.eif_signature import SignatureError
from nitro_sim.enclave_runner import ISOLATION_MODES, remove_cid_sockets

ERRORS_URL = "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html"
DEFAULT_ALLOCATOR_CONFIG = Path("/etc/nitro_enclaves/allocator.yaml")
ALLOCATOR_ENV = "NITRO_SIM_ALLOCATOR_CONFIG"
ISOLATION_ENV = "NITRO_SIM_ISOLATION"
BOOT_TIMEOUT_ENV = "NITRO_SIM_BOOT_TIMEOUT"
MIN_CID = 4
MAX_CID = 0xFFFFFFFE  # 0xFFFFFFFF is VMADDR_CID_ANY
FIRST_AUTO_CID = 16
MIN_MEMORY_MIB = 64
TERMINATE_TIMEOUT = 15.0
_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_ID_RE = re.compile(r"\Ai-[0-9a-f]{17}-enc[0-9a-f]{16}\Z")

_TITLES = {
    1: "Missing mandatory argument.",
    3: "Invalid argument provided.",
    19: "File operation failure.",
    22: "Insufficient CPUs available in the pool.",
    26: "Insufficient memory requested.",
    27: "Insufficient memory available.",
    33: "Enclave start ioctl failure.",
    35: "EIF file parsing error.",
    36: "Enclave boot failure.",
    39: "Enclave process connection failure.",
    48: "Enclave image building error.",
    59: "EIF signature checker error.",
}


class NitroCliError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def render(self) -> str:
        title = _TITLES.get(self.code, "Unspecified error.")
        return (
            f"[ E{self.code:02d} ] {title} {self.detail}\n\n"
            f"For more details, please visit {ERRORS_URL}#E{self.code:02d}"
        )


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- build-enclave / describe-eif ----------------------------------------------------


def build_enclave(args: argparse.Namespace) -> None:
    if not args.docker_dir:
        raise NitroCliError(
            1,
            "--docker-dir is required by the simulated nitro-cli: there is no Docker engine, "
            "so the image is built from a directory holding the Dockerfile, enclave.toml and "
            "the enclave_app/ sources.",
        )
    signing = _signing_material(args)
    _progress("Start building the Enclave Image...")
    try:
        image = eif_mod.build_eif(
            Path(args.docker_dir),
            docker_uri=args.docker_uri,
            image_name=args.name,
            image_version=args.version,
            build_time=_source_date(),
        )
        if signing is not None:
            image = image.signed(*signing)
    except eif_mod.EifError as exc:
        raise NitroCliError(48, str(exc)) from exc
    except OSError as exc:
        raise NitroCliError(19, f"cannot read the docker dir: {exc}") from exc
    try:
        eif_mod.write_eif(Path(args.output_file), image)
    except OSError as exc:
        raise NitroCliError(19, f"cannot write {args.output_file}: {exc.strerror or exc}") from exc
    _progress("Enclave Image successfully created.")
    _print_json({"Measurements": image.measurements.to_json()})


def _signing_material(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """(certificate PEM, private key PEM), or None for an unsigned image."""
    if args.signing_certificate is None and args.private_key is None:
        return None
    if args.signing_certificate is None or args.private_key is None:
        missing = "--private-key" if args.private_key is None else "--signing-certificate"
        raise NitroCliError(1, f"{missing} is required to sign the image (give both or neither)")
    if args.private_key.startswith("arn:"):
        raise NitroCliError(
            3, "signing with a KMS key (--private-key ARN) is not simulated: give a PEM file"
        )
    material: list[bytes] = []
    for path in (args.signing_certificate, args.private_key):
        try:
            material.append(Path(path).read_bytes())
        except OSError as exc:
            raise NitroCliError(19, f"cannot read {path}: {exc.strerror or exc}") from exc
    return material[0], material[1]


def _source_date() -> datetime | None:
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return None
    if not raw.isdigit():
        raise NitroCliError(3, "SOURCE_DATE_EPOCH must be a non-negative integer")
    return datetime.fromtimestamp(int(raw), UTC)


def _load_eif(path_text: str) -> eif_mod.Eif:
    path = Path(path_text)
    if not path.is_file():
        raise NitroCliError(19, f"cannot open the EIF file {path}: no such file")
    try:
        return eif_mod.read_eif(path)
    except eif_mod.EifError as exc:
        raise NitroCliError(35, f"{path}: {exc}") from exc


def describe_eif(args: argparse.Namespace) -> None:
    _print_json(eif_mod.describe(_load_eif(args.eif_path)))


# --- the enclave table -----------------------------------------------------------------


def live_enclaves(state: Path) -> list[dict[str, Any]]:
    """Records of enclaves whose runner is alive; stale entries are cleaned (hold the lock)."""
    live: list[dict[str, Any]] = []
    root = statedir.enclaves_dir(state)
    if not root.is_dir():
        return live
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or not _ID_RE.match(directory.name):
            continue
        record = statedir.read_record(directory)
        if record is not None and statedir.process_matches(record.get("ProcessID"), directory.name):
            live.append(record)
        else:
            _remove_stale(state, directory, record)
    return live


def _remove_stale(state: Path, directory: Path, record: dict[str, Any] | None) -> None:
    if record is not None:
        enclave_pid = record.get("EnclaveProcessID")
        if statedir.process_matches(enclave_pid, directory.name) and isinstance(enclave_pid, int):
            with contextlib.suppress(OSError):
                os.kill(enclave_pid, signal.SIGKILL)
        cid = record.get("EnclaveCID")
        if isinstance(cid, int) and not isinstance(cid, bool):
            remove_cid_sockets(state, cid)
    shutil.rmtree(directory, ignore_errors=True)


def describe_enclaves(state: Path) -> None:
    with statedir.locked(state):
        records = live_enclaves(state)
    _print_json([_describe(record) for record in records if record.get("State") == "RUNNING"])


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "EnclaveName",
        "EnclaveID",
        "ProcessID",
        "EnclaveCID",
        "NumberOfCPUs",
        "CPUIDs",
        "MemoryMiB",
        "State",
        "Flags",
        "Measurements",
    )
    return {key: record.get(key) for key in keys}


# --- run-enclave ---------------------------------------------------------------------


@dataclass(frozen=True)
class AllocatorLimits:
    memory_mib: int
    cpu_ids: tuple[int, ...]


def allocator_limits() -> AllocatorLimits | None:
    explicit = os.environ.get(ALLOCATOR_ENV)
    path = Path(explicit) if explicit else DEFAULT_ALLOCATOR_CONFIG
    if not path.is_file():
        if explicit:
            raise NitroCliError(19, f"{ALLOCATOR_ENV} names {path}, which does not exist")
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NitroCliError(19, f"cannot read the allocator config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise NitroCliError(3, f"allocator config {path} must be a mapping")
    memory = raw.get("memory_mib")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
        raise NitroCliError(3, f"allocator config {path}: memory_mib must be a positive integer")
    if raw.get("cpu_pool") is not None:
        cpu_ids = _parse_cpu_pool(str(raw["cpu_pool"]))
    else:
        count = raw.get("cpu_count")
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise NitroCliError(3, f"allocator config {path}: cpu_count must be a positive integer")
        cpu_ids = tuple(range(1, count + 1))
    return AllocatorLimits(memory_mib=memory, cpu_ids=cpu_ids)


def _parse_cpu_pool(text: str) -> tuple[int, ...]:
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d{1,4})(?:-(\d{1,4}))?", part)
        if match is None:
            raise NitroCliError(3, f"allocator cpu_pool {text!r} is malformed")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise NitroCliError(3, f"allocator cpu_pool {text!r} is malformed")
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))


def _instance_id(state: Path) -> str:
    path = state / "instance-id"
    with contextlib.suppress(OSError):
        value = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"i-[0-9a-f]{17}", value):
            return value
    value = "i-" + secrets.token_hex(9)[:17]
    path.write_text(value + "\n", encoding="ascii")
    return value


def _validate_run_args(args: argparse.Namespace) -> None:
    if args.cpu_count < 1:
        raise NitroCliError(3, f"--cpu-count must be at least 1, not {args.cpu_count}")
    if args.memory < 1:
        raise NitroCliError(3, f"--memory must be a positive number of MiB, not {args.memory}")
    if args.enclave_cid is not None and not MIN_CID <= args.enclave_cid <= MAX_CID:
        raise NitroCliError(
            3, f"--enclave-cid must be in [{MIN_CID}, {MAX_CID}], not {args.enclave_cid}"
        )
    if args.enclave_name is not None and not _NAME_RE.match(args.enclave_name):
        raise NitroCliError(3, "--enclave-name must be 1-128 characters of [A-Za-z0-9._-]")


def minimum_memory_mib(eif_size: int) -> int:
    """Like nitro-cli: the enclave needs memory for several times the image size."""
    return max(MIN_MEMORY_MIB, math.ceil(4 * eif_size / (1024 * 1024)))


def run_enclave(state: Path, args: argparse.Namespace) -> None:
    _validate_run_args(args)
    image = _load_eif(args.eif_path)
    needed = minimum_memory_mib(Path(args.eif_path).stat().st_size)
    if args.memory < needed:
        raise NitroCliError(
            26,
            f"User provided `memory` is {args.memory} MB, but based on the EIF "
            f"file size, the minimum memory should be {needed} MB",
        )
    if image.signature is not None:
        try:
            image.signature.verify(image.measurements.pcr0)
        except SignatureError as exc:
            raise NitroCliError(59, f"Invalid signing certificate: {exc}") from exc
    name = args.enclave_name or _default_name(args.eif_path)
    isolation = os.environ.get(ISOLATION_ENV, "auto")
    if isolation not in ISOLATION_MODES:
        raise NitroCliError(3, f"{ISOLATION_ENV} must be one of {', '.join(ISOLATION_MODES)}")
    boot_timeout = _boot_timeout()
    _progress("Start allocating memory...")
    statedir.vsock_dir(state).mkdir(parents=True, exist_ok=True)
    with statedir.locked(state):
        live = live_enclaves(state)
        name, cid, cpu_ids = _reserve(args, name, live)
        enclave_id = f"{_instance_id(state)}-enc{secrets.token_hex(8)}"
        directory = statedir.enclave_dir(state, enclave_id)
        directory.mkdir()
        record: dict[str, Any] = {
            "EnclaveName": name,
            "EnclaveID": enclave_id,
            "ProcessID": None,
            "EnclaveCID": cid,
            "NumberOfCPUs": args.cpu_count,
            "CPUIDs": cpu_ids,
            "MemoryMiB": args.memory,
            "State": "STARTING",
            "Flags": "DEBUG_MODE" if args.debug_mode else "NONE",
            "Measurements": image.measurements.to_json(),
            "ServerPort": eif_mod.DEFAULT_SERVER_PORT,
            "Isolation": None,
            "EnclaveProcessID": None,
            "CreatedAt": time.time(),
        }
        try:
            eif_mod.unpack_app(image, directory / "image")
            record["ServerPort"] = eif_mod.image_server_port(directory / "image")
            statedir.write_record(directory, record)
            runner = _spawn_runner(state, enclave_id, isolation, boot_timeout)
        except (eif_mod.EifError, OSError) as exc:
            shutil.rmtree(directory, ignore_errors=True)
            code = 35 if isinstance(exc, eif_mod.EifError) else 19
            raise NitroCliError(code, f"cannot prepare the enclave: {exc}") from exc
        record["ProcessID"] = runner.pid
        statedir.write_record(directory, record)
    _wait_booted(state, directory, runner, record, boot_timeout)
    _progress(
        f"Started enclave with enclave-cid: {cid}, memory: {args.memory} MiB, cpu-ids: {cpu_ids}"
    )
    keys = (
        "EnclaveName",
        "EnclaveID",
        "ProcessID",
        "EnclaveCID",
        "NumberOfCPUs",
        "CPUIDs",
        "MemoryMiB",
    )
    _print_json({key: record[key] for key in keys})


def _default_name(eif_path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(eif_path).stem)[:128].lstrip("._-")
    return stem or "enclave"


def _boot_timeout() -> float:
    raw = os.environ.get(BOOT_TIMEOUT_ENV, "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise NitroCliError(3, f"{BOOT_TIMEOUT_ENV} must be a number of seconds in (0, 600]")
    return value


def _reserve(
    args: argparse.Namespace, name: str, live: Sequence[dict[str, Any]]
) -> tuple[str, int, list[int]]:
    names = {record.get("EnclaveName") for record in live}
    if args.enclave_name is None:  # a defaulted name gets a suffix instead of an error
        base, suffix = name, 1
        while name in names:
            name, suffix = f"{base[:120]}-{suffix}", suffix + 1
    if name in names:
        raise NitroCliError(
            3, f"an enclave named {name!r} is already running; choose another --enclave-name"
        )
    used_cids = {record.get("EnclaveCID") for record in live}
    if args.enclave_cid is not None:
        cid = int(args.enclave_cid)
        if cid in used_cids:
            raise NitroCliError(33, f"The enclave CID {cid} is already in use by another enclave")
    else:
        cid = next(c for c in range(FIRST_AUTO_CID, MAX_CID) if c not in used_cids)
    used_cpus = {cpu for record in live for cpu in record.get("CPUIDs") or []}
    used_memory = sum(int(record.get("MemoryMiB") or 0) for record in live)
    limits = allocator_limits()
    if limits is None:
        free_cpus = [
            cpu for cpu in range(1, 1 + len(used_cpus) + args.cpu_count) if cpu not in used_cpus
        ]
    else:
        free_cpus = [cpu for cpu in limits.cpu_ids if cpu not in used_cpus]
        if args.cpu_count > len(free_cpus):
            raise NitroCliError(
                22,
                f"{args.cpu_count} CPUs requested but only {len(free_cpus)} "
                "are free in the pool configured in the allocator",
            )
        if used_memory + args.memory > limits.memory_mib:
            free = limits.memory_mib - used_memory
            raise NitroCliError(
                27,
                f"{args.memory} MiB requested but only {free} MiB are free "
                "in the pool configured in the allocator",
            )
    return name, cid, free_cpus[: args.cpu_count]


def _spawn_runner(
    state: Path, enclave_id: str, isolation: str, boot_timeout: float
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    directory = statedir.enclave_dir(state, enclave_id)
    with open(directory / "console.log", "ab") as console:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nitro_sim.enclave_runner",
                "--state-dir",
                str(state),
                "--enclave-id",
                enclave_id,
                "--isolation",
                isolation,
                "--boot-timeout",
                str(boot_timeout),
            ],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
        )


def _wait_booted(
    state: Path,
    directory: Path,
    runner: subprocess.Popen[bytes],
    record: dict[str, Any],
    boot_timeout: float,
) -> None:
    enclave_id = record["EnclaveID"]
    log = statedir.logs_dir(state) / f"{enclave_id}.console.log"
    deadline = time.monotonic() + boot_timeout + 15
    while time.monotonic() < deadline:
        code = runner.poll()
        if code is not None:
            raise NitroCliError(
                36,
                f"the enclave {enclave_id} failed to boot (runner exit code "
                f"{code}); its console output is in {log}",
            )
        current = statedir.read_record(directory)
        if current is not None and current.get("State") == "RUNNING":
            return
        time.sleep(0.05)
    runner.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        runner.wait(timeout=TERMINATE_TIMEOUT)
    raise NitroCliError(
        36, f"the enclave {enclave_id} did not boot in time; its console output is in {log}"
    )


# --- terminate-enclave ---------------------------------------------------------------


def terminate_enclave(state: Path, args: argparse.Namespace) -> None:
    with statedir.locked(state):
        live = live_enclaves(state)
    if args.all:
        targets = live
    elif args.enclave_id is not None:
        targets = [r for r in live if r.get("EnclaveID") == args.enclave_id]
        if not targets:
            raise NitroCliError(39, f"No running enclave has the ID {args.enclave_id!r}")
    else:
        targets = [r for r in live if r.get("EnclaveName") == args.enclave_name]
        if not targets:
            raise NitroCliError(39, f"No running enclave is named {args.enclave_name!r}")
    for record in targets:
        _terminate(state, record)
        _progress(f"Successfully terminated enclave {record['EnclaveID']}.")
        _print_json(
            {
                "EnclaveName": record.get("EnclaveName"),
                "EnclaveID": record["EnclaveID"],
                "Terminated": True,
            }
        )


def _terminate(state: Path, record: dict[str, Any]) -> None:
    enclave_id = str(record["EnclaveID"])
    pid = record.get("ProcessID")
    if isinstance(pid, int) and statedir.process_matches(pid, enclave_id):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_TIMEOUT
        while statedir.process_matches(pid, enclave_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        if statedir.process_matches(pid, enclave_id):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    directory = statedir.enclave_dir(state, enclave_id)
    with statedir.locked(state):
        if directory.exists():
            _remove_stale(state, directory, statedir.read_record(directory) or record)


# --- command line --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nitro-cli", description="Simulated AWS Nitro CLI")
    # The real CLI prints "Nitro CLI <version>"; PCR1 depends on it, so roles key
    # rebuilds on it.
    parser.add_argument(
        "--version", action="version", version=f"Nitro CLI {eif_mod.SIM_VERSION} (simulator)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-enclave", help="build an enclave image (EIF)")
    build.add_argument("--docker-uri", required=True)
    build.add_argument("--docker-dir")
    build.add_argument("--output-file", required=True)
    build.add_argument("--name", help="image name (default: from the docker URI)")
    build.add_argument("--version", default="1.0", help="image version (default 1.0)")
    build.add_argument("--signing-certificate", help="PEM certificate: sign the image (PCR8)")
    build.add_argument("--private-key", help="PEM private key of the signing certificate")

    describe = commands.add_parser("describe-eif", help="describe an EIF")
    describe.add_argument("--eif-path", required=True)

    run = commands.add_parser("run-enclave", help="start an enclave from an EIF")
    run.add_argument("--eif-path", required=True)
    run.add_argument("--cpu-count", type=int, required=True)
    run.add_argument("--memory", type=int, required=True)
    run.add_argument("--enclave-cid", type=int)
    run.add_argument("--enclave-name")
    run.add_argument("--debug-mode", action="store_true")

    commands.add_parser("describe-enclaves", help="list running enclaves")

    terminate = commands.add_parser("terminate-enclave", help="stop enclaves")
    which = terminate.add_mutually_exclusive_group(required=True)
    which.add_argument("--enclave-id")
    which.add_argument("--enclave-name")
    which.add_argument("--all", action="store_true")
    return parser


def _fail(error: NitroCliError) -> NoReturn:
    print(error.render(), file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build-enclave":
            build_enclave(args)
        elif args.command == "describe-eif":
            describe_eif(args)
        else:
            state = statedir.resolve()
            state.mkdir(parents=True, exist_ok=True)
            if args.command == "run-enclave":
                run_enclave(state, args)
            elif args.command == "describe-enclaves":
                describe_enclaves(state)
            else:
                terminate_enclave(state, args)
    except NitroCliError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(NitroCliError(19, str(exc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
