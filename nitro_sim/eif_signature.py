"""The signature section of a signed EIF, made and checked as nitro-cli does.

``nitro-cli build-enclave --signing-certificate CERT --private-key KEY`` (source:
aws-nitro-enclaves-image-format, ``src/utils/eif_signer.rs`` and ``src/defs/mod.rs``):

- PCR0 is measured without the signature section, so signing never changes it;
- the section is a CBOR array with one ``PcrSignature``:
  ``{"signing_certificate": <the PEM certificate>, "signature": <COSE_Sign1>}``;
- the COSE_Sign1 (RFC 9052, untagged) signs the CBOR of
  ``PcrInfo {"register_index": 0, "register_value": PCR0}`` with the private key;
  its algorithm follows the key's curve: P-256 ES256, P-384 ES384, P-521 ES512;
- PCR8 = SHA-384(48 zero bytes || SHA-384(DER of the certificate)) (``nitro_wallet.pcr``).

The simulator stores byte strings as CBOR byte strings, where serde_cbor writes Rust's
``Vec<u8>`` as arrays of integers: the field set and the signed content are the real
ones, the encoding of the simulator's EIF is its own (like the rest of its format).

``verify`` is what the simulated hypervisor does before it boots a signed image and
attests PCR8: the COSE signature verifies with the certificate's key, the signed
payload is exactly this image's PCR0, and the certificate is within its validity
period. (The real ``nitro-cli run-enclave`` checks the signature and the validity
period and fails with E59; the Nitro hypervisor measures PCR8.) A signature moved
from another image therefore does not boot, and an unsigned image attests PCR8 as 48
zero bytes, as real Nitro attestation documents show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from nitro_wallet.pcr import CertificateError, load_certificate, pcr8_of_certificate

MAX_SECTION_BYTES = 64 * 1024
COSE_ALG = 1
# curve name: (COSE algorithm id, hash, bytes per signature half)
_ALGORITHMS: dict[str, tuple[int, type[hashes.HashAlgorithm], int]] = {
    "secp256r1": (-7, hashes.SHA256, 32),
    "secp384r1": (-35, hashes.SHA384, 48),
    "secp521r1": (-36, hashes.SHA512, 66),
}


class SignatureError(Exception):
    """The signing inputs are unusable, or a signature does not verify (``reason``)."""


def pcr_info(pcr0: bytes) -> bytes:
    """The signed payload: CBOR of PcrInfo for register 0."""
    return bytes(cbor2.dumps({"register_index": 0, "register_value": pcr0}))


def _curve_parameters(
    key: ec.EllipticCurvePublicKey,
) -> tuple[int, type[hashes.HashAlgorithm], int]:
    parameters = _ALGORITHMS.get(key.curve.name)
    if parameters is None:
        raise SignatureError(f"the signing key's curve {key.curve.name} is not supported")
    return parameters


@dataclass(frozen=True)
class EifSignature:
    certificate_pem: bytes
    cose_sign1: bytes

    # ------------------------------------------------------------- encoding

    def to_bytes(self) -> bytes:
        entry = {"signing_certificate": self.certificate_pem, "signature": self.cose_sign1}
        return bytes(cbor2.dumps([entry]))

    @classmethod
    def from_bytes(cls, data: bytes) -> EifSignature:
        if not 0 < len(data) <= MAX_SECTION_BYTES:
            raise SignatureError("the signature section is empty or too large")
        try:
            decoded = cbor2.loads(data)
        except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
            raise SignatureError("the signature section is not CBOR") from None
        if not isinstance(decoded, list) or len(decoded) != 1 or not isinstance(decoded[0], dict):
            raise SignatureError("the signature section must hold exactly one PCR signature")
        entry = decoded[0]
        certificate, cose = entry.get("signing_certificate"), entry.get("signature")
        if set(entry) != {"signing_certificate", "signature"} or not (
            isinstance(certificate, bytes) and isinstance(cose, bytes)
        ):
            raise SignatureError("a PCR signature is {signing_certificate, signature} bytes")
        signature = cls(certificate, cose)
        signature.certificate  # noqa: B018 - parse it now: a bad certificate is a bad EIF
        return signature

    # -------------------------------------------------------------- reading

    @property
    def certificate(self) -> x509.Certificate:
        try:
            return load_certificate(self.certificate_pem)
        except CertificateError as exc:
            raise SignatureError(f"the signing certificate is unreadable: {exc}") from None

    @property
    def pcr8(self) -> bytes:
        return bytes.fromhex(pcr8_of_certificate(self.certificate_pem))

    def _cose(self) -> tuple[bytes, bytes, bytes]:
        try:
            decoded = cbor2.loads(self.cose_sign1)
        except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
            raise SignatureError("the PCR0 signature is not CBOR") from None
        if not (isinstance(decoded, list) and len(decoded) == 4):
            raise SignatureError("the PCR0 signature is not a COSE_Sign1")
        protected, _unprotected, payload, signature = decoded
        if not all(isinstance(part, bytes) for part in (protected, payload, signature)):
            raise SignatureError("the PCR0 signature is not a COSE_Sign1")
        return protected, payload, signature

    def verify(self, pcr0: bytes, now: datetime | None = None) -> None:
        """Raise SignatureError unless this signs ``pcr0`` with a currently valid certificate."""
        certificate = self.certificate
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError("the signing certificate's key is not an EC key")
        algorithm, digest, half = _curve_parameters(key)
        protected, payload, signature = self._cose()
        try:
            header = cbor2.loads(protected)
        except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
            header = None
        if header != {COSE_ALG: algorithm}:
            raise SignatureError("the COSE algorithm does not match the certificate's key")
        if len(signature) != 2 * half:
            raise SignatureError("the COSE signature has the wrong length")
        to_verify = cbor2.dumps(["Signature1", protected, b"", payload])
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        try:
            key.verify(der, to_verify, ec.ECDSA(digest()))
        except InvalidSignature:
            raise SignatureError("the EIF signature does not verify") from None
        if payload != pcr_info(pcr0):
            raise SignatureError("the EIF signature does not cover this image's PCR0")
        when = now or datetime.now(UTC)
        if not certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc:
            raise SignatureError("the signing certificate is expired or not yet valid")

    def certificate_info(self) -> dict[str, Any]:
        """``describe-eif``'s SigningCertificate object."""
        certificate = self.certificate
        issuer = {attr.oid._name: str(attr.value) for attr in certificate.issuer}
        algorithm = certificate.signature_algorithm_oid._name
        return {
            "IssuerName": issuer,
            "Algorithm": algorithm,
            "NotBefore": _openssl_time(certificate.not_valid_before_utc),
            "NotAfter": _openssl_time(certificate.not_valid_after_utc),
            "Signature": ":".join(f"{b:02X}" for b in certificate.signature),
        }


def _openssl_time(moment: datetime) -> str:
    """OpenSSL's ASN1_TIME text, e.g. ``Mar  8 17:34:26 2023 GMT``."""
    return f"{moment:%b} {moment.day:>2} {moment:%H:%M:%S %Y} GMT"


def sign_pcr0(pcr0: bytes, certificate_pem: bytes, private_key_pem: bytes) -> EifSignature:
    """Sign an image's PCR0 as ``nitro-cli build-enclave --signing-certificate`` does."""
    try:
        load_certificate(certificate_pem)
    except CertificateError as exc:
        raise SignatureError(f"could not read the signing certificate: {exc}") from None
    if not certificate_pem.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        raise SignatureError("the signing certificate must be PEM")
    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"could not read the PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError("the private key must be an EC key (P-256, P-384 or P-521)")
    algorithm, digest, half = _curve_parameters(key.public_key())
    protected = cbor2.dumps({COSE_ALG: algorithm})
    payload = pcr_info(pcr0)
    r, s = decode_dss_signature(
        key.sign(cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(digest()))
    )
    cose = cbor2.dumps([protected, {}, payload, r.to_bytes(half, "big") + s.to_bytes(half, "big")])
    return EifSignature(bytes(certificate_pem), bytes(cose))


__all__ = ["EifSignature", "SignatureError", "pcr_info", "sign_pcr0"]
