"""AWS Nitro Enclaves attestation document verifier (operator side, never in the EIF).

An attestation document is a COSE_Sign1 structure (RFC 9052) signed with ES384 by a
per-enclave leaf certificate that chains up to the AWS Nitro root G1. This module
follows the checks AWS documents in "Verifying the root of trust": strict CBOR
types and sizes, a certificate chain whose root is pinned by the SHA-256 of its
DER encoding, validity of every certificate at the verification time, and the
ECDSA P-384 signature over the COSE Sig_structure.

The production root is pinned (``AWS_NITRO_ROOT_G1_SHA256``); callers pass another
fingerprint only when told to trust the simulator's root. Only ``cbor2`` and
``cryptography`` are used.

CLI: ``nitro-wallet attestation verify`` (``nitro_wallet.commands.attestation``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NoReturn

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

MAX_DOCUMENT_BYTES = 32 * 1024
MAX_CBOR_DEPTH = 8
MAX_PCRS = 32
PCR_LENGTHS = frozenset({32, 48, 64})
MAX_CERT_BYTES = 1024
MAX_USER_DATA_BYTES = 512
MAX_NONCE_BYTES = 512
MAX_PUBLIC_KEY_BYTES = 1024
MAX_CABUNDLE = 16
COSE_SIGN1_TAG = 18
COSE_ALG = 1
COSE_ALG_ES384 = -35
ES384_SIGNATURE_BYTES = 96
_REQUIRED_FIELDS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL_FIELDS = ("public_key", "user_data", "nonce")
# cbor2 turns these tags into Python objects (ints, shared or referenced values) that
# would slip past the type checks below: an attestation document never uses them.
_REFUSED_SEMANTIC_TAGS = (2, 3, 25, 28, 29, 256)


class AttestationError(Exception):
    """The document is malformed, untrusted, expired or its signature is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AttestationDocument:
    module_id: str
    digest: str
    timestamp: datetime
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    def pcr_hex(self, index: int) -> str:
        """PCR ``index`` as lowercase hex (the format of KMS condition keys)."""
        try:
            return self.pcrs[index].hex()
        except KeyError:
            raise AttestationError(f"PCR{index} is not in the document") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape printed by the CLI."""
        return {
            "module_id": self.module_id,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "digest": self.digest,
            "pcrs": {str(index): value.hex() for index, value in sorted(self.pcrs.items())},
            "public_key": _hex_or_none(self.public_key),
            "user_data": _hex_or_none(self.user_data),
            "nonce": _hex_or_none(self.nonce),
        }


@dataclass(frozen=True)
class _CoseSign1:
    protected: bytes
    payload: bytes
    signature: bytes


def root_fingerprint(cert_pem_or_der: bytes) -> str:
    """Lowercase hex SHA-256 of a certificate's DER encoding (PEM or DER input)."""
    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(cert_pem_or_der)
        else:
            cert = x509.load_der_x509_certificate(cert_pem_or_der)
    except ValueError as exc:
        raise AttestationError("not a valid X.509 certificate") from exc
    return _fingerprint(cert)


def parse_unverified(document: bytes) -> AttestationDocument:
    """Decode and type-check a document WITHOUT verifying its chain or signature.

    Only for displaying a document or choosing a verification time; never use the
    result to make a trust decision.
    """
    return _parse_payload(_parse_cose(document).payload)


def verify_attestation(
    document: bytes,
    trusted_roots: Iterable[str] = (AWS_NITRO_ROOT_G1_SHA256,),
    at: datetime | None = None,
) -> AttestationDocument:
    """Verify a Nitro attestation document and return its fields.

    ``trusted_roots`` are lowercase hex SHA-256 fingerprints of root certificates (DER).
    ``at`` is the verification time (timezone-aware; default now, UTC).
    """
    roots = frozenset(_normalise_fingerprint(root) for root in trusted_roots)
    if not roots:
        raise AttestationError("no trusted root configured")
    when = _as_utc(at) if at is not None else datetime.now(UTC)
    cose = _parse_cose(document)
    parsed = _parse_payload(cose.payload)
    try:
        _verify_chain(parsed, roots, when)
        _verify_signature(cose, parsed.certificate)
    except AttestationError:
        raise
    except Exception as exc:  # fail closed on anything a hostile certificate can provoke
        raise AttestationError(f"certificate processing failed ({type(exc).__name__})") from exc
    return parsed


# --- COSE_Sign1 -----------------------------------------------------------------


def _parse_cose(document: bytes) -> _CoseSign1:
    if not isinstance(document, bytes | bytearray | memoryview):
        raise AttestationError("document must be bytes")
    raw = bytes(document)
    if not raw or len(raw) > MAX_DOCUMENT_BYTES:
        raise AttestationError(f"document size must be 1..{MAX_DOCUMENT_BYTES} bytes")
    # COSE_Sign1 may carry tag 18 (0xd2); AWS sends it untagged. The tag is stripped
    # here because cbor2 decodes tagged content into immutable containers.
    if raw[0] == 0xC0 | COSE_SIGN1_TAG:
        raw = raw[1:]
    outer = _strict_cbor(raw)
    if isinstance(outer, cbor2.CBORTag):
        raise AttestationError(f"unexpected CBOR tag {outer.tag} (COSE_Sign1 is 18)")
    if not isinstance(outer, list) or len(outer) != 4:
        raise AttestationError("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes):
        raise AttestationError("COSE protected header must be a byte string")
    if not isinstance(unprotected, dict):
        raise AttestationError("COSE unprotected header must be a map")
    if not isinstance(payload, bytes) or not payload:
        raise AttestationError("COSE payload must be a non-empty byte string")
    if not isinstance(signature, bytes) or len(signature) != ES384_SIGNATURE_BYTES:
        raise AttestationError("COSE signature must be 96 bytes (ES384 r||s)")
    header = _strict_cbor(protected) if protected else {}
    if not _is_es384_header(header):
        raise AttestationError("COSE protected header must be exactly {alg: ES384 (-35)}")
    return _CoseSign1(protected=protected, payload=payload, signature=signature)


def _is_es384_header(header: object) -> bool:
    if not isinstance(header, dict) or len(header) != 1:
        return False
    ((key, value),) = header.items()
    # type() not isinstance(): CBOR true/false must not pass for 1.
    return type(key) is int and key == COSE_ALG and type(value) is int and value == COSE_ALG_ES384


def _strict_cbor(data: bytes) -> Any:
    """Decode exactly one CBOR item with no duplicate keys or trailing bytes.

    Indefinite-length items are allowed: the AWS NSM encodes the payload map that way
    (real documents start the payload with 0xbf). Depth stays bounded.
    """
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders=dict.fromkeys(_REFUSED_SEMANTIC_TAGS, _refuse_tag),
            max_depth=MAX_CBOR_DEPTH,
            allow_indefinite=True,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise AttestationError("malformed CBOR") from exc
    if stream.tell() != len(data):
        raise AttestationError("trailing bytes after CBOR item")
    return value


def _refuse_tag(*_args: object) -> NoReturn:
    raise cbor2.CBORDecodeError("CBOR tag not allowed in an attestation document")


# --- payload --------------------------------------------------------------------


def _parse_payload(payload: bytes) -> AttestationDocument:
    fields = _strict_cbor(payload)
    if not isinstance(fields, dict):
        raise AttestationError("payload must be a CBOR map")
    unknown = set(fields) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS)
    if unknown:
        raise AttestationError(f"unknown payload fields: {sorted(map(str, unknown))}")
    missing = [name for name in _REQUIRED_FIELDS if name not in fields]
    if missing:
        raise AttestationError(f"missing payload fields: {missing}")

    module_id = fields["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise AttestationError("module_id must be a non-empty text string")
    if fields["digest"] != "SHA384":
        raise AttestationError("digest must be 'SHA384'")
    timestamp_ms = fields["timestamp"]
    if type(timestamp_ms) is not int or not 0 < timestamp_ms < 2**63:
        raise AttestationError("timestamp must be a positive integer (ms since epoch)")
    try:
        timestamp = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise AttestationError("timestamp out of range") from exc

    certificate = _load_cert(fields["certificate"], "certificate")
    bundle = fields["cabundle"]
    if not isinstance(bundle, list) or not 1 <= len(bundle) <= MAX_CABUNDLE:
        raise AttestationError(f"cabundle must be a list of 1..{MAX_CABUNDLE} certificates")
    cabundle = tuple(_load_cert(item, f"cabundle[{i}]") for i, item in enumerate(bundle))

    return AttestationDocument(
        module_id=module_id,
        digest="SHA384",
        timestamp=timestamp,
        pcrs=_parse_pcrs(fields["pcrs"]),
        certificate=certificate,
        cabundle=cabundle,
        public_key=_optional_bytes(fields, "public_key", 1, MAX_PUBLIC_KEY_BYTES),
        user_data=_optional_bytes(fields, "user_data", 0, MAX_USER_DATA_BYTES),
        nonce=_optional_bytes(fields, "nonce", 0, MAX_NONCE_BYTES),
    )


def _parse_pcrs(value: object) -> Mapping[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCRS:
        raise AttestationError(f"pcrs must be a map of 1..{MAX_PCRS} entries")
    pcrs: dict[int, bytes] = {}
    for index, digest in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise AttestationError("PCR index must be an integer in 0..31")
        if not isinstance(digest, bytes) or len(digest) not in PCR_LENGTHS:
            raise AttestationError(f"PCR{index} must be 32, 48 or 64 bytes")
        pcrs[index] = digest
    return MappingProxyType(dict(sorted(pcrs.items())))


def _optional_bytes(fields: Mapping[str, object], name: str, low: int, high: int) -> bytes | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise AttestationError(f"{name} must be null or {low}..{high} bytes")
    return value


def _load_cert(value: object, name: str) -> x509.Certificate:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_CERT_BYTES:
        raise AttestationError(f"{name} must be 1..{MAX_CERT_BYTES} bytes of DER")
    try:
        cert = x509.load_der_x509_certificate(value)
    except Exception as exc:  # ValueError, InvalidVersion, ...: all mean "not a certificate"
        raise AttestationError(f"{name} is not a valid DER certificate") from exc
    return cert


# --- chain and signature ---------------------------------------------------------


def _verify_chain(doc: AttestationDocument, roots: frozenset[str], at: datetime) -> None:
    root = doc.cabundle[0]
    if not any(hmac.compare_digest(_fingerprint(root), trusted) for trusted in roots):
        raise AttestationError("root certificate is not trusted")
    chain: Sequence[x509.Certificate] = (*doc.cabundle, doc.certificate)
    if len({_fingerprint(cert) for cert in chain}) != len(chain):
        raise AttestationError("certificate chain repeats a certificate")
    cas = doc.cabundle
    for position, ca in enumerate(cas):
        _check_ca(ca, position, cas_below=len(cas) - position - 1)
    _check_leaf(doc.certificate)
    for position, cert in enumerate(chain):
        _check_validity(cert, position, at)
    for position in range(1, len(chain)):
        try:
            chain[position].verify_directly_issued_by(chain[position - 1])
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationError(
                f"certificate {position} is not issued by certificate {position - 1}"
            ) from exc
    if not isinstance(root.public_key(), ec.EllipticCurvePublicKey):
        raise AttestationError("root key must be an EC key")
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AttestationError("root certificate is not self-signed") from exc


def _check_ca(cert: x509.Certificate, position: int, cas_below: int) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise AttestationError(f"CA certificate {position} has no basicConstraints") from None
    except ValueError as exc:
        raise AttestationError(f"CA certificate {position} has malformed extensions") from exc
    if not constraints.ca:
        raise AttestationError(f"certificate {position} in cabundle is not a CA")
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise AttestationError(f"CA certificate {position} path length exceeded")
    usage = _key_usage(cert, position)
    if usage is not None and not usage.key_cert_sign:
        raise AttestationError(f"CA certificate {position} may not sign certificates")


def _check_leaf(cert: x509.Certificate) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("leaf certificate key must be EC P-384")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as exc:
        raise AttestationError("leaf certificate has malformed extensions") from exc
    if constraints is not None and constraints.ca:
        raise AttestationError("leaf certificate must not be a CA")
    usage = _key_usage(cert, -1)
    if usage is not None and not usage.digital_signature:
        raise AttestationError("leaf certificate may not sign")


def _key_usage(cert: x509.Certificate, position: int) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise AttestationError(f"certificate {position} has malformed extensions") from exc


def _check_validity(cert: x509.Certificate, position: int, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise AttestationError(
            f"certificate {position} is not valid at {at.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()})"
        )


def _verify_signature(cose: _CoseSign1, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):  # checked in the chain; keeps mypy exact
        raise AttestationError("leaf certificate key must be EC P-384")
    sig_structure = cbor2.dumps(["Signature1", cose.protected, b"", cose.payload])
    r = int.from_bytes(cose.signature[:48], "big")
    s = int.from_bytes(cose.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError("COSE signature does not verify") from None


# --- helpers ---------------------------------------------------------------------


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _normalise_fingerprint(value: str) -> str:
    text = value.strip().lower().replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise AttestationError("trusted root fingerprints must be 64 hex digits (SHA-256)")
    return text


def _as_utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise AttestationError("verification time must be timezone-aware")
    return at.astimezone(UTC)


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()
