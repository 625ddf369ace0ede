"""The simulated Enclave Image File (EIF): a deterministic, measured archive.

A real EIF holds a kernel, its command line and ramdisks; the Nitro hypervisor
measures them into PCR0..2. The simulated EIF keeps that structure. Its application
ramdisk is a tar of the "docker dir" (``Dockerfile``, ``enclave.toml``, the
``enclave_app/`` sources) built deterministically: members sorted by path, mtime 0,
uid/gid 0 with empty owner names, modes normalized to 0755 (directories and
executables) or 0644, no ``__pycache__``/``*.pyc``/``*.pyo``, USTAR format.
Symlinks and special files are refused. Same inputs give the same bytes.

File layout (integers big-endian)::

    header   magic "NSIMEIF\\0" (8) | eif_version u16 | flags u16 (0) | section_count u32
    section  type u16 | flags u16 (0) | size u64 | data            (x section_count)
    trailer  crc32 u32 over every preceding byte

Sections, exactly once each and in this order: 1 kernel (stub), 2 cmdline,
3 boot ramdisk (stub), 4 application ramdisk (the tar), 6 signature (signed images
only, see ``nitro_sim.eif_signature``), 5 metadata (JSON: image name and version,
build time, tool and version, OS, kernel, docker info). The metadata and signature
sections are covered by the CRC but NOT by PCR0..2, so a rebuild at another time
gives the same PCRs and signing never changes PCR0; a signed image also has PCR8,
the measure of its signing certificate.

Measurements, SHA-384, with ``extend(pcr, data) = SHA384(pcr || SHA384(data))`` and
``Z`` = 48 zero bytes::

    PCR0 = extend(extend(extend(extend(Z, kernel), cmdline), boot_ramdisk), app_ramdisk)
    PCR1 = extend(extend(Z, kernel), boot_ramdisk)       constant per simulator version
    PCR2 = extend(Z, app_ramdisk)
    PCR8 = extend(Z, DER(signing certificate))            signed images only

Any byte changed in any source file changes the application ramdisk, hence PCR0 and
PCR2. Reading an EIF checks magic, version, section table and CRC and refuses
anything else.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import struct
import tarfile
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from nitro_sim.eif_signature import EifSignature, SignatureError, sign_pcr0

MAGIC = b"NSIMEIF\x00"
EIF_VERSION = 4
SIM_VERSION = "1.0.0"
BUILD_TOOL = "nitro-cli"
HASH_ALGORITHM = "Sha384 { ... }"
DEFAULT_SERVER_PORT = 5000

MAX_EIF_BYTES = 512 * 1024 * 1024
MAX_APP_BYTES = 256 * 1024 * 1024
MAX_MEMBERS = 20_000
MAX_METADATA_BYTES = 64 * 1024

SECTION_KERNEL = 1
SECTION_CMDLINE = 2
SECTION_BOOT_RAMDISK = 3
SECTION_APP_RAMDISK = 4
SECTION_METADATA = 5
SECTION_SIGNATURE = 6
_SECTION_ORDER = (
    SECTION_KERNEL,
    SECTION_CMDLINE,
    SECTION_BOOT_RAMDISK,
    SECTION_APP_RAMDISK,
    SECTION_METADATA,
)
_SIGNED_SECTION_ORDER = (*_SECTION_ORDER[:4], SECTION_SIGNATURE, SECTION_METADATA)

_HEADER = struct.Struct(">8sHHI")
_SECTION = struct.Struct(">HHQ")
_CRC = struct.Struct(">I")

# Constant boot components: they change only with the simulator version (like the
# kernel and init shipped with a given nitro-cli release).
KERNEL_STUB = f"nitro-sim kernel stub {SIM_VERSION}\n".encode()
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on init=/init"
BOOT_RAMDISK = f"nitro-sim boot ramdisk {SIM_VERSION}: init, nsm driver\n".encode()
KERNEL_VERSION = "nitro-sim-" + SIM_VERSION

REQUIRED_FILES = ("Dockerfile", "enclave.toml", "enclave_app/__main__.py")
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


class EifError(Exception):
    """The EIF (or the directory it is built from) is unusable."""


@dataclass(frozen=True)
class Measurements:
    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr8: bytes | None = None  # signed images only

    def to_json(self) -> dict[str, str]:
        measured = {
            "HashAlgorithm": HASH_ALGORITHM,
            "PCR0": self.pcr0.hex(),
            "PCR1": self.pcr1.hex(),
            "PCR2": self.pcr2.hex(),
        }
        if self.pcr8 is not None:
            measured["PCR8"] = self.pcr8.hex()
        return measured

    def as_pcrs(self) -> dict[int, bytes]:
        pcrs = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}
        if self.pcr8 is not None:
            pcrs[8] = self.pcr8
        return pcrs


def extend(pcr: bytes, data: bytes) -> bytes:
    return hashlib.sha384(pcr + hashlib.sha384(data).digest()).digest()


def measure(kernel: bytes, cmdline: bytes, boot_ramdisk: bytes, app_ramdisk: bytes) -> Measurements:
    zero = bytes(48)
    pcr0 = zero
    for component in (kernel, cmdline, boot_ramdisk, app_ramdisk):
        pcr0 = extend(pcr0, component)
    pcr1 = extend(extend(zero, kernel), boot_ramdisk)
    pcr2 = extend(zero, app_ramdisk)
    return Measurements(pcr0=pcr0, pcr1=pcr1, pcr2=pcr2)


@dataclass(frozen=True)
class Eif:
    kernel: bytes
    cmdline: bytes
    boot_ramdisk: bytes
    app_ramdisk: bytes
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = EIF_VERSION
    signature: EifSignature | None = None

    @property
    def measurements(self) -> Measurements:
        measured = measure(self.kernel, self.cmdline, self.boot_ramdisk, self.app_ramdisk)
        if self.signature is None:
            return measured
        return replace(measured, pcr8=self.signature.pcr8)

    def signed(self, certificate_pem: bytes, private_key_pem: bytes) -> Eif:
        """This image with a signature section over its PCR0 (which does not change)."""
        try:
            signature = sign_pcr0(self.measurements.pcr0, certificate_pem, private_key_pem)
        except SignatureError as exc:
            raise EifError(str(exc)) from None
        return replace(self, signature=signature)

    @property
    def image_name(self) -> str:
        return str(self.metadata.get("ImageName", ""))

    @property
    def image_version(self) -> str:
        return str(self.metadata.get("ImageVersion", ""))

    def to_bytes(self) -> bytes:
        meta = json.dumps(self.metadata, sort_keys=True, separators=(",", ":")).encode()
        sections = [
            (SECTION_KERNEL, self.kernel),
            (SECTION_CMDLINE, self.cmdline),
            (SECTION_BOOT_RAMDISK, self.boot_ramdisk),
            (SECTION_APP_RAMDISK, self.app_ramdisk),
            (SECTION_METADATA, meta),
        ]
        if self.signature is not None:
            sections.insert(4, (SECTION_SIGNATURE, self.signature.to_bytes()))
        out = bytearray(_HEADER.pack(MAGIC, self.version, 0, len(sections)))
        for kind, data in sections:
            out += _SECTION.pack(kind, 0, len(data))
            out += data
        out += _CRC.pack(zlib.crc32(out))
        return bytes(out)


# --- building --------------------------------------------------------------------


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix arcname, path) of every member under root, sorted, skipping bytecode."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        base = Path(dirpath)
        for name in dirnames:
            entries.append((_arcname(root, base / name), base / name))
        for name in filenames:
            if not name.endswith(_SKIPPED_SUFFIXES):
                entries.append((_arcname(root, base / name), base / name))
    yield from sorted(entries)


def _arcname(root: Path, path: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix()


def build_app_ramdisk(docker_dir: Path) -> bytes:
    """The deterministic tar of ``docker_dir`` (see the module docstring)."""
    if not docker_dir.is_dir():
        raise EifError(f"docker dir {docker_dir} is not a directory")
    for required in REQUIRED_FILES:
        if not (docker_dir / required).is_file():
            raise EifError(f"docker dir {docker_dir} has no {required}")
    server_port_from_toml((docker_dir / "enclave.toml").read_bytes())
    buffer = io.BytesIO()
    total = 0
    count = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for arcname, path in _walk(docker_dir):
            info = os.lstat(path)
            count += 1
            if count > MAX_MEMBERS:
                raise EifError(f"docker dir has more than {MAX_MEMBERS} entries")
            member = tarfile.TarInfo(arcname)
            member.mtime = 0
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            if stat.S_ISDIR(info.st_mode):
                member.type = tarfile.DIRTYPE
                member.mode = 0o755
                _add(tar, member, None)
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > MAX_APP_BYTES:
                    raise EifError(f"docker dir is larger than {MAX_APP_BYTES} bytes")
                data = path.read_bytes()
                member.size = len(data)
                member.mode = 0o755 if info.st_mode & 0o111 else 0o644
                _add(tar, member, io.BytesIO(data))
            else:
                raise EifError(f"{arcname}: only regular files and directories are allowed")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, member: tarfile.TarInfo, data: io.BytesIO | None) -> None:
    try:
        tar.addfile(member, data)
    except ValueError as exc:  # USTAR limits: name too long
        raise EifError(f"{member.name}: {exc}") from exc


def build_eif(
    docker_dir: Path,
    *,
    docker_uri: str,
    image_name: str | None = None,
    image_version: str = "1.0",
    build_time: datetime | None = None,
) -> Eif:
    app = build_app_ramdisk(docker_dir)
    name = image_name or docker_uri.rsplit("/", 1)[-1].split(":", 1)[0] or "enclave"
    when = (build_time or datetime.now(UTC)).astimezone(UTC)
    metadata: dict[str, Any] = {
        "ImageName": name,
        "ImageVersion": image_version,
        "BuildTime": when.isoformat(timespec="microseconds"),
        "BuildTool": BUILD_TOOL,
        "BuildToolVersion": f"{SIM_VERSION}-sim",
        "OperatingSystem": platform.system() or "Linux",
        "KernelVersion": KERNEL_VERSION,
        "DockerInfo": {
            "RepoTags": [docker_uri],
            "Id": "sha256:" + hashlib.sha256(app).hexdigest(),
            "Architecture": platform.machine() or "x86_64",
            "Os": "linux",
        },
    }
    return Eif(KERNEL_STUB, CMDLINE, BOOT_RAMDISK, app, metadata)


def write_eif(path: Path, eif: Eif) -> None:
    """Write atomically: a reader never sees a half-written EIF."""
    data = eif.to_bytes()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- reading ---------------------------------------------------------------------


def read_eif(path: Path) -> Eif:
    try:
        size = path.stat().st_size
        if size > MAX_EIF_BYTES:
            raise EifError(f"{path} is larger than {MAX_EIF_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise EifError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_eif(data)


def parse_eif(data: bytes) -> Eif:
    if len(data) < _HEADER.size + _CRC.size:
        raise EifError("file is too short to be an EIF")
    magic, version, flags, count = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise EifError("bad magic: not a simulated EIF")
    if version != EIF_VERSION or flags != 0:
        raise EifError(f"unsupported EIF version {version} (flags {flags})")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    body = data[: len(data) - _CRC.size]
    if zlib.crc32(body) != stored_crc:
        raise EifError("CRC check failed: the EIF is corrupted")
    if count not in (len(_SECTION_ORDER), len(_SIGNED_SECTION_ORDER)):
        raise EifError(f"EIF has {count} sections, expected {len(_SECTION_ORDER)} or 6 (signed)")
    order = _SECTION_ORDER if count == len(_SECTION_ORDER) else _SIGNED_SECTION_ORDER
    sections = dict(zip(order, _read_sections(body, order), strict=True))
    signature = None
    if SECTION_SIGNATURE in sections:
        try:
            signature = EifSignature.from_bytes(sections[SECTION_SIGNATURE])
        except SignatureError as exc:
            raise EifError(f"signature section: {exc}") from None
    meta = sections[SECTION_METADATA]
    if len(meta) > MAX_METADATA_BYTES:
        raise EifError("metadata section is too large")
    try:
        metadata = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EifError(f"metadata is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise EifError("metadata must be a JSON object")
    return Eif(
        sections[SECTION_KERNEL],
        sections[SECTION_CMDLINE],
        sections[SECTION_BOOT_RAMDISK],
        sections[SECTION_APP_RAMDISK],
        metadata,
        version,
        signature,
    )


def _read_sections(body: bytes, order: tuple[int, ...]) -> list[bytes]:
    offset = _HEADER.size
    sections: list[bytes] = []
    for expected in order:
        if offset + _SECTION.size > len(body):
            raise EifError("truncated section table")
        kind, section_flags, size = _SECTION.unpack_from(body, offset)
        offset += _SECTION.size
        if kind != expected or section_flags != 0:
            raise EifError(f"unexpected section type {kind} (expected {expected})")
        if size > len(body) - offset:
            raise EifError("section runs past the end of the file")
        sections.append(body[offset : offset + size])
        offset += size
    if offset != len(body):
        raise EifError("trailing bytes after the last section")
    return sections


def describe(eif: Eif) -> dict[str, Any]:
    """``describe-eif`` output (the CRC was checked when the file was read)."""
    keys = ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")
    metadata: dict[str, Any] = {key: eif.metadata.get(key, "") for key in keys}
    metadata["DockerInfo"] = eif.metadata.get("DockerInfo", {})
    measurements = eif.measurements
    described: dict[str, Any] = {
        "EifVersion": eif.version,
        "Measurements": measurements.to_json(),
        "IsSigned": eif.signature is not None,
        "CheckCRC": True,
        "ImageName": eif.image_name,
        "ImageVersion": eif.image_version,
        "Metadata": metadata,
    }
    if eif.signature is not None:
        described["SigningCertificate"] = eif.signature.certificate_info()
        try:
            eif.signature.verify(measurements.pcr0)
            described["SignatureCheck"] = True
        except SignatureError:
            described["SignatureCheck"] = False
    return described


# --- unpacking -------------------------------------------------------------------


def unpack_app(eif: Eif, destination: Path) -> None:
    """Extract the application ramdisk into a new directory, refusing unsafe members."""
    destination.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(fileobj=io.BytesIO(eif.app_ramdisk), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise EifError("application ramdisk has too many members")
                target = destination / _safe_relative(member.name)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                elif member.isfile():
                    source = tar.extractfile(member)
                    if source is None:
                        raise EifError(f"{member.name}: unreadable member")
                    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    with open(target, "xb") as handle:
                        handle.write(source.read())
                    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                else:
                    raise EifError(f"{member.name}: only files and directories are allowed")
    except tarfile.TarError as exc:
        raise EifError(f"application ramdisk is not a valid tar: {exc}") from exc
    except FileExistsError as exc:
        raise EifError(f"duplicate member in application ramdisk: {exc.filename}") from exc


def _safe_relative(name: str) -> Path:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("..", "") for part in path.parts):
        raise EifError(f"unsafe member path {name!r}")
    return Path(*path.parts)


def server_port_from_toml(raw: bytes) -> int:
    """``[server] port`` from enclave.toml (default 5000), validated."""
    try:
        config = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EifError(f"enclave.toml is not valid TOML: {exc}") from exc
    server = config.get("server", {})
    if not isinstance(server, dict):
        raise EifError("enclave.toml: [server] must be a table")
    port = server.get("port", DEFAULT_SERVER_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 2**32:
        raise EifError("enclave.toml: server.port must be an integer in [1, 2^32-1]")
    return port


def image_server_port(image_dir: Path) -> int:
    try:
        raw = (image_dir / "enclave.toml").read_bytes()
    except OSError as exc:
        raise EifError(f"image has no readable enclave.toml: {exc}") from exc
    return server_port_from_toml(raw)
