"""Test helpers shared by the attestation, NSM and CMS tests (and usable by others).

- ``make_ca`` / ``signed_document``: real simulator CA and COSE_Sign1 documents with
  arbitrary (even invalid) fields, signed by a real leaf so that only the field under
  test is wrong.
- A tiny DER/BER encoder and ``envelope``: CMS EnvelopedData in the KMS shape
  (RSAES-OAEP-SHA256 + AES-256-CBC), with knobs to break each part.
- ``openssl_cms_encrypt``: an independent CMS producer (the openssl CLI).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding

from nitro_sim.ca import SimCa

ES384_HEADER = cbor2.dumps({1: -35})


# --- attestation -------------------------------------------------------------------


def make_ca(directory: Path) -> SimCa:
    return SimCa.load_or_create(directory / "ca")


def default_fields(
    ca: SimCa, leaf: x509.Certificate, now: datetime | None = None
) -> dict[str, Any]:
    """The AWS field set with 16 distinct PCRs, as SimulatedNsm would emit it."""
    when = now or datetime.now(UTC)
    return {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": int(when.timestamp() * 1000),
        "pcrs": {i: bytes([i]) * 48 for i in range(16)},
        "certificate": leaf.public_bytes(Encoding.DER),
        "cabundle": [c.public_bytes(Encoding.DER) for c in ca.cabundle],
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }


def cose_sign(
    key: ec.EllipticCurvePrivateKey,
    payload: bytes,
    *,
    protected: bytes = ES384_HEADER,
    tagged: bool = False,
    size: int = 48,
) -> bytes:
    """COSE_Sign1 over ``payload``; ``size`` is the byte length of r and of s."""
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
    message = [protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")]
    return cbor2.dumps(cbor2.CBORTag(18, message) if tagged else message)


def signed_document(
    ca: SimCa,
    *,
    overrides: Mapping[str, Any] | None = None,
    remove: Sequence[str] = (),
    payload: bytes | None = None,
    protected: bytes = ES384_HEADER,
    tagged: bool = False,
    now: datetime | None = None,
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> bytes:
    """A document signed by a genuine leaf; ``overrides``/``remove``/``payload`` alter it."""
    cert, key = leaf or ca.issue_leaf(now)
    if payload is None:
        fields = default_fields(ca, cert, now)
        fields.update(overrides or {})
        for name in remove:
            del fields[name]
        payload = cbor2.dumps(fields)
    return cose_sign(key, payload, protected=protected, tagged=tagged)


# --- DER/BER encoder ----------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    """Definite-length element; ``tag`` is the full identifier octet."""
    return bytes([tag]) + _length(len(content)) + content


def indefinite(tag: int, *parts: bytes) -> bytes:
    """Indefinite-length constructed element (``tag`` must have the 0x20 bit)."""
    assert tag & 0x20
    return bytes([tag, 0x80]) + b"".join(parts) + b"\x00\x00"


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def seq(*parts: bytes, ber: bool = False) -> bytes:
    return indefinite(0x30, *parts) if ber else tlv(0x30, b"".join(parts))


def octets(data: bytes) -> bytes:
    return tlv(0x04, data)


NULL = b"\x05\x00"
SHA256 = "2.16.840.1.101.3.4.2.1"
SHA1 = "1.3.14.3.2.26"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES128_CBC = "2.16.840.1.101.3.4.1.2"
RSAES_OAEP = "1.2.840.113549.1.1.7"
RSA_PKCS1 = "1.2.840.113549.1.1.1"
MGF1 = "1.2.840.113549.1.1.8"
P_SPECIFIED = "1.2.840.113549.1.1.9"


def oaep_params(
    hash_oid: str = SHA256, mgf_hash_oid: str = SHA256, label: bytes | None = None
) -> bytes:
    parts = [
        tlv(0xA0, seq(oid(hash_oid), NULL)),
        tlv(0xA1, seq(oid(MGF1), seq(oid(mgf_hash_oid), NULL))),
    ]
    if label is not None:
        parts.append(tlv(0xA2, seq(oid(P_SPECIFIED), octets(label))))
    return seq(*parts)


def envelope(
    public_key: rsa.RSAPublicKey,
    plaintext: bytes,
    *,
    ber: bool = True,
    chunk: int = 16,
    rid: str = "ski",
    key_alg: bytes | None = None,
    content_oid: str = AES256_CBC,
    iv: bytes | None = None,
    cek: bytes | None = None,
    padded: bytes | None = None,
    recipients: int = 1,
    version: int | None = None,
) -> bytes:
    """CMS ContentInfo/EnvelopedData shaped like KMS CiphertextForRecipient.

    ``ber`` uses indefinite lengths and ``chunk``-byte OCTET STRING chunks for the
    encrypted content; the other knobs replace one part with a wrong value.
    """
    cek = cek if cek is not None else os.urandom(32)
    iv = iv if iv is not None else os.urandom(16)
    if padded is None:
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
    # Wrong-sized keys or IVs are refused before decryption: encrypt with stand-ins.
    aes_key = cek if len(cek) in (16, 24, 32) else bytes(32)
    cipher = Cipher(algorithms.AES(aes_key), modes.CBC(iv if len(iv) == 16 else bytes(16)))
    encryptor = cipher.encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = public_key.encrypt(
        cek,
        asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        ),
    )
    if rid == "ski":
        rid_der, rid_version = tlv(0x80, b"\x11" * 20), 2
    else:
        issuer = seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"kms"))))
        rid_der, rid_version = seq(issuer, integer(12345)), 0
    key_alg = key_alg if key_alg is not None else seq(oid(RSAES_OAEP), oaep_params())
    recipient = seq(integer(rid_version), rid_der, key_alg, octets(encrypted_key))
    recipient_set = tlv(0x31, recipient * recipients)
    if ber:
        chunks = [octets(ciphertext[i : i + chunk]) for i in range(0, len(ciphertext), chunk)]
        content = indefinite(0xA0, *chunks)
    else:
        content = tlv(0x80, ciphertext)
    content_alg = seq(oid(content_oid), octets(iv))
    encrypted_info = seq(oid("1.2.840.113549.1.7.1"), content_alg, content, ber=ber)
    enveloped = seq(
        integer(2 if version is None else version), recipient_set, encrypted_info, ber=ber
    )
    explicit = indefinite(0xA0, enveloped) if ber else tlv(0xA0, enveloped)
    return seq(oid("1.2.840.113549.1.7.3"), explicit, ber=ber)


# --- openssl -------------------------------------------------------------------------


def self_signed_rsa(directory: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """An RSA-2048 key and a self-signed certificate file for openssl -recip."""
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recipient")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    path = directory / "recipient.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return key, path


def openssl_cms_encrypt(
    plaintext: bytes, cert: Path, directory: Path, *options: str, stream: bool = False
) -> bytes:
    """``openssl cms -encrypt`` with the given cipher/keyopt options (DER or streamed BER)."""
    source, target = directory / "plain.bin", directory / "out.cms"
    source.write_bytes(plaintext)
    command = ["openssl", "cms", "-encrypt", "-binary", "-outform", "DER", "-in", str(source)]
    # -keyopt applies to the preceding -recip, so the certificate comes first.
    command += ["-out", str(target), "-recip", str(cert), *options]
    if stream:
        command.append("-stream")
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return target.read_bytes()


OPENSSL_OAEP_SHA256 = (
    "-keyopt",
    "rsa_padding_mode:oaep",
    "-keyopt",
    "rsa_oaep_md:sha256",
    "-keyopt",
    "rsa_mgf1_md:sha256",
)
