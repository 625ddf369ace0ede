"""A release signing key and certificate for simulated stacks (``make dev``, tests).

Production release keys are made and kept offline by operators (docs/security.md); a
simulated stack makes its own once, in its state directory, and reuses it on every
start: its PCR8 stays the same, so the sealed key policy applied the first time keeps
allowing every image the stack signs, and accounts created in one session still sign
in the next, with the enclave code changed or not. EC P-384 (``nitro-cli``'s
documented choice), self-signed, valid ten years; the key file is 0600.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_sim.principals import write_private_file
from nitro_wallet.pcr import pcr8_of_certificate

VALIDITY = timedelta(days=3650)
CERTIFICATE_FILE = "release-certificate.pem"
KEY_FILE = "release-key.pem"


@dataclass(frozen=True)
class ReleaseSigner:
    certificate: Path
    private_key: Path

    @property
    def pcr8(self) -> str:
        return pcr8_of_certificate(self.certificate.read_bytes())

    def nitro_cli_args(self) -> list[str]:
        return [
            "--signing-certificate",
            str(self.certificate),
            "--private-key",
            str(self.private_key),
        ]


def create_release_signer(
    directory: Path,
    common_name: str,
    *,
    valid_from: datetime | None = None,
    valid_for: timedelta = VALIDITY,
) -> ReleaseSigner:
    """A new key and self-signed certificate in ``directory`` (replacing any there),
    valid from ``valid_from`` (default: five minutes ago) for ``valid_for``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nitro-wallet simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    start = valid_from or datetime.now(UTC) - timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(directory / KEY_FILE, key_pem)
    write_private_file(
        directory / CERTIFICATE_FILE, certificate.public_bytes(serialization.Encoding.PEM)
    )
    return ReleaseSigner(directory / CERTIFICATE_FILE, directory / KEY_FILE)


def load_or_create_release_signer(directory: Path, common_name: str) -> ReleaseSigner:
    """The signer kept in ``directory``, made on first use."""
    signer = ReleaseSigner(directory / CERTIFICATE_FILE, directory / KEY_FILE)
    if signer.certificate.is_file() and signer.private_key.is_file():
        return signer
    return create_release_signer(directory, common_name)


__all__ = ["ReleaseSigner", "create_release_signer", "load_or_create_release_signer"]
