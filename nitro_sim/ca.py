"""The simulator's certificate authority: the stand-in for the AWS Nitro PKI.

AWS signs attestation documents with a short-lived P-384 leaf under a chain rooted
at the AWS Nitro root G1. The simulator does the same with its own root
("nitro-sim root") and one intermediate, kept in ``$NITRO_SIM_DIR/ca/``:
``root.pem``, ``root.key``, ``intermediate.pem``, ``intermediate.key``: a 0700
directory, keys 0600, tightened on every load, so only the CA's owner (root on a
simulated host, never the relay's user) can sign as the simulated Nitro PKI.
Verifiers trust this root only when explicitly told to (by its SHA-256 fingerprint).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_sim.statedir import private_dir
from nitro_wallet.attestation import root_fingerprint

ROOT_NAME = "nitro-sim root"
INTERMEDIATE_NAME = "nitro-sim intermediate"
ROOT_VALIDITY = timedelta(days=30 * 365)
INTERMEDIATE_VALIDITY = timedelta(days=10 * 365)
LEAF_VALIDITY = timedelta(hours=3)
LEAF_BACKDATE = timedelta(minutes=1)
_FILES = ("root.pem", "root.key", "intermediate.pem", "intermediate.key")


class CaError(Exception):
    """The CA directory is unusable (partial, corrupt or unreadable)."""


@dataclass(frozen=True)
class SimCa:
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, directory: Path) -> SimCa:
        """Load the CA from ``directory``, creating it once if absent (safe across processes)."""
        private_dir(directory)
        with _locked(directory / ".lock"):
            present = [name for name in _FILES if (directory / name).exists()]
            if not present:
                _create(directory)
            elif len(present) != len(_FILES):
                raise CaError(f"{directory} holds a partial CA ({present}); remove it to recreate")
            for key in ("root.key", "intermediate.key"):
                if (directory / key).stat().st_mode & 0o077:
                    os.chmod(directory / key, 0o600)
            return cls._load(directory)

    @classmethod
    def _load(cls, directory: Path) -> SimCa:
        try:
            root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
            intermediate = x509.load_pem_x509_certificate(
                (directory / "intermediate.pem").read_bytes()
            )
            key = serialization.load_pem_private_key(
                (directory / "intermediate.key").read_bytes(), password=None
            )
        except (OSError, ValueError) as exc:
            raise CaError(f"cannot load the CA from {directory}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP384R1
        ):
            raise CaError("intermediate.key must be an EC P-384 key")
        if key.public_key() != intermediate.public_key():
            raise CaError("intermediate.key does not match intermediate.pem")
        return cls(root=root, intermediate=intermediate, intermediate_key=key)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 of the root's DER: what verifiers pass as a trusted root."""
        return root_fingerprint(self.root.public_bytes(serialization.Encoding.DER))

    @property
    def cabundle(self) -> tuple[x509.Certificate, ...]:
        """Root first, as in an AWS attestation document."""
        return (self.root, self.intermediate)

    def issue_leaf(
        self, now: datetime | None = None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A fresh P-384 leaf valid for 3 hours from a minute before ``now``."""
        start = (now or datetime.now(UTC)) - LEAF_BACKDATE
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nitro-sim"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"i-{secrets.token_hex(8)}.enclave"),
            ]
        )
        cert = (
            _builder(name, self.intermediate.subject, key.public_key(), start, LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .sign(self.intermediate_key, hashes.SHA384())
        )
        return cert, key


def _create(directory: Path) -> None:
    now = datetime.now(UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = _name(ROOT_NAME)
    root = (
        _builder(root_name, root_name, root_key.public_key(), now, ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = (
        _builder(
            _name(INTERMEDIATE_NAME), root_name, inter_key.public_key(), now, INTERMEDIATE_VALIDITY
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    # Keys first and certificates last: a crash leaves a partial CA, which load refuses.
    _write(directory / "root.key", _key_pem(root_key), 0o600)
    _write(directory / "intermediate.key", _key_pem(inter_key), 0o600)
    _write(directory / "intermediate.pem", inter.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "root.pem", root.public_bytes(serialization.Encoding.PEM), 0o644)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime,
    validity: timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nitro-sim"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
