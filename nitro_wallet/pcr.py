"""Nitro measurements computed off the host: PCR8 of a release signing certificate.

``nitro-cli build-enclave --signing-certificate CERT --private-key KEY`` measures the
certificate into PCR8 exactly as the Nitro hypervisor does when it boots the signed
image (aws-nitro-enclaves-image-format, ``src/utils/mod.rs``: ``EifBuilder::measure``
feeds the certificate's DER encoding to a SHA-384 hasher, and
``tpm_extend_finalize_reset`` extends a zeroed register with that digest;
``src/defs/eif_hasher.rs``)::

    PCR8 = SHA-384( 48 zero bytes || SHA-384( DER(certificate) ) )

The certificate is stored in the EIF as PEM, so PEM and DER of the same certificate
give the same PCR8. The value depends on the certificate only, never on the image: a
new release signed with the same certificate keeps PCR8, which is what lets a sealed
key policy (nitro_wallet.key_policy) survive upgrades without a policy change.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

PCR_BYTES = 48
ZERO_PCR = bytes(PCR_BYTES)


class CertificateError(ValueError):
    """The data is not one X.509 certificate in PEM or DER form."""


def extend(register: bytes, data: bytes) -> bytes:
    """The TPM-style extend Nitro uses: SHA-384(register || SHA-384(data))."""
    if len(register) != PCR_BYTES:
        raise ValueError(f"a PCR is {PCR_BYTES} bytes, got {len(register)}")
    return hashlib.sha384(register + hashlib.sha384(data).digest()).digest()


def load_certificate(data: bytes) -> x509.Certificate:
    """One X.509 certificate from PEM or DER bytes."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not an X.509 certificate: {exc}") from None


def pcr8_of_certificate(data: bytes) -> str:
    """PCR8 (lowercase hex) of an image signed with this certificate (PEM or DER)."""
    der = load_certificate(data).public_bytes(Encoding.DER)
    return extend(ZERO_PCR, der).hex()


__all__ = ["CertificateError", "extend", "load_certificate", "pcr8_of_certificate"]
