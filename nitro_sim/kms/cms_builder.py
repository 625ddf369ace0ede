"""CMS EnvelopedData (RFC 5652) as AWS KMS returns it in `CiphertextForRecipient`.

Real KMS answers a Recipient request with a BER-encoded ContentInfo: the outer
constructed values use the indefinite-length form and the encrypted content is a
constructed OCTET STRING made of chunks. This module writes that shape so the
enclave's decoder is exercised against what it meets on AWS:

    ContentInfo ::= SEQUENCE (indefinite) {
      contentType  id-envelopedData,
      content [0] EXPLICIT (indefinite) EnvelopedData ::= SEQUENCE (indefinite) {
        version 2,
        recipientInfos SET { KeyTransRecipientInfo {
            version 2,
            rid [0] IMPLICIT SubjectKeyIdentifier (SHA-256 of the recipient SPKI, as KMS),
            keyEncryptionAlgorithm RSAES-OAEP {SHA-256, MGF1(SHA-256)},
            encryptedKey OCTET STRING } },
        encryptedContentInfo SEQUENCE (indefinite) {
            contentType id-data,
            contentEncryptionAlgorithm aes256-CBC (IV OCTET STRING),
            encryptedContent [0] IMPLICIT constructed OCTET STRING (indefinite) { chunks } } } }
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
CHUNK_BYTES = 1024
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096

_EOC = b"\x00\x00"  # end-of-contents octets of an indefinite-length encoding


class RecipientKeyError(ValueError):
    """The recipient public key is not an acceptable RSA key."""


# ------------------------------------------------------------------- DER/BER pieces


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """A definite-length encoding."""
    return bytes([tag]) + _length(len(content)) + content


def indefinite(tag: int, *parts: bytes) -> bytes:
    """A constructed indefinite-length encoding: tag, 0x80, contents, 00 00."""
    return bytes([tag, 0x80]) + b"".join(parts) + _EOC


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are needed here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(0x02, body)


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def null() -> bytes:
    return b"\x05\x00"


def oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    return tlv(0x31, b"".join(sorted(parts)))


def algorithm(dotted: str, parameters: bytes | None = None) -> bytes:
    return sequence(oid(dotted), *([] if parameters is None else [parameters]))


# ------------------------------------------------------------------------- builder


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """What real KMS puts in rid [0]: SHA-256 of the whole SubjectPublicKeyInfo DER.

    Not RFC 5280's SHA-1 of the key bits: checked on real CiphertextForRecipient
    samples, whose 32-byte identifier equals SHA-256(SPKI) of the recipient key.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def load_recipient_key(spki_der: bytes) -> rsa.RSAPublicKey:
    """The attested public key (DER SubjectPublicKeyInfo), which must be RSA 2048..4096."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError):
        raise RecipientKeyError("the attested public key is not a DER public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise RecipientKeyError("the attested public key must be RSA")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise RecipientKeyError("the attested RSA key must have 2048..4096 bits")
    return key


def _oaep_algorithm() -> bytes:
    sha256 = algorithm(OID_SHA256, null())
    params = sequence(
        tlv(0xA0, sha256),  # hashAlgorithm [0] EXPLICIT
        tlv(0xA1, algorithm(OID_MGF1, sha256)),  # maskGenAlgorithm [1] EXPLICIT
    )
    return algorithm(OID_RSAES_OAEP, params)


def build_enveloped_data(
    plaintext: bytes, recipient: rsa.RSAPublicKey, *, chunk_bytes: int = CHUNK_BYTES
) -> bytes:
    """Encrypt `plaintext` for `recipient` as BER CMS EnvelopedData in a ContentInfo."""
    if chunk_bytes < 16:
        raise ValueError("chunk_bytes must be at least 16")
    cek = os.urandom(32)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = recipient.encrypt(
        cek, OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )

    recipient_info = sequence(
        integer(2),
        tlv(0x80, subject_key_identifier(recipient)),  # rid [0] IMPLICIT OCTET STRING
        _oaep_algorithm(),
        octet_string(encrypted_key),
    )
    chunks = [
        octet_string(encrypted[i : i + chunk_bytes]) for i in range(0, len(encrypted), chunk_bytes)
    ]
    encrypted_content_info = indefinite(
        0x30,
        oid(OID_DATA),
        algorithm(OID_AES256_CBC, octet_string(iv)),
        indefinite(0xA0, *chunks),  # [0] IMPLICIT OCTET STRING, constructed form
    )
    enveloped_data = indefinite(0x30, integer(2), set_of(recipient_info), encrypted_content_info)
    return indefinite(0x30, oid(OID_ENVELOPED_DATA), indefinite(0xA0, enveloped_data))
