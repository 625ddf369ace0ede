"""CMS EnvelopedData unwrap for KMS ``CiphertextForRecipient`` (RFC 5652, RFC 8017).

KMS returns the data key (or Decrypt plaintext) wrapped for the enclave's ephemeral
RSA key: a ContentInfo/EnvelopedData with one KeyTransRecipientInfo (RSAES-OAEP with
SHA-256 and MGF1-SHA-256) and AES-256-CBC content encryption. Real KMS sends BER
(indefinite lengths, chunked OCTET STRINGs); DER is accepted too. Anything else
(other algorithms, several recipients, trailing bytes, bad padding) is refused with
``CmsError``, whose message never includes key material.

The TLV reader here is deliberately small and strict: low tag numbers only, bounded
nesting and size, indefinite lengths only on constructed values, no trailing data.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_INPUT = 64 * 1024
MAX_DEPTH = 16

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_P_SPECIFIED = "1.2.840.113549.1.1.9"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

UNIVERSAL, CONTEXT = 0, 2
T_INTEGER, T_OCTET_STRING, T_NULL, T_OID, T_SEQUENCE, T_SET = 2, 4, 5, 6, 16, 17


class CmsError(Exception):
    """The CMS structure is malformed, unsupported or does not decrypt."""


@dataclass(frozen=True)
class Tlv:
    """One BER element: primitive ones carry ``value``, constructed ones ``children``."""

    tag_class: int
    constructed: bool
    number: int
    value: bytes
    children: tuple[Tlv, ...]

    def is_(self, tag_class: int, number: int) -> bool:
        return self.tag_class == tag_class and self.number == number


def parse_ber(data: bytes) -> Tlv:
    """Parse exactly one BER/DER element spanning all of ``data``."""
    if not 0 < len(data) <= MAX_INPUT:
        raise CmsError(f"input must be 1..{MAX_INPUT} bytes")
    node, end = _parse(data, 0, len(data), 0)
    if end != len(data):
        raise CmsError("trailing bytes after the CMS structure")
    return node


def _parse(data: bytes, pos: int, limit: int, depth: int) -> tuple[Tlv, int]:
    if depth > MAX_DEPTH:
        raise CmsError("nesting too deep")
    if pos + 2 > limit:
        raise CmsError("truncated element")
    ident = data[pos]
    tag_class, constructed, number = ident >> 6, bool(ident & 0x20), ident & 0x1F
    if number == 0x1F:
        raise CmsError("high tag numbers are not used by CMS EnvelopedData")
    length, pos = _parse_length(data, pos + 1, limit)
    if length is None:
        if not constructed:
            raise CmsError("indefinite length on a primitive element")
        children: list[Tlv] = []
        while True:
            if pos + 2 <= limit and data[pos : pos + 2] == b"\x00\x00":
                return Tlv(tag_class, True, number, b"", tuple(children)), pos + 2
            if pos >= limit:
                raise CmsError("missing end-of-contents")
            child, pos = _parse(data, pos, limit, depth + 1)
            children.append(child)
    end = pos + length
    if end > limit:
        raise CmsError("element longer than its container")
    if not constructed:
        if tag_class == UNIVERSAL and number == 0:
            raise CmsError("unexpected end-of-contents")
        return Tlv(tag_class, False, number, data[pos:end], ()), end
    children = []
    while pos < end:
        child, pos = _parse(data, pos, end, depth + 1)
        children.append(child)
    return Tlv(tag_class, True, number, b"", tuple(children)), end


def _parse_length(data: bytes, pos: int, limit: int) -> tuple[int | None, int]:
    if pos >= limit:
        raise CmsError("truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    if first == 0x80:
        return None, pos
    count = first & 0x7F
    if count > 4 or pos + count > limit:
        raise CmsError("unsupported or truncated length")
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


# --- typed accessors -----------------------------------------------------------------


def _expect(node: Tlv, tag_class: int, number: int, what: str) -> Tlv:
    if not node.is_(tag_class, number):
        raise CmsError(f"expected {what}")
    return node


def _sequence(node: Tlv, what: str, low: int, high: int) -> tuple[Tlv, ...]:
    _expect(node, UNIVERSAL, T_SEQUENCE, what)
    if not node.constructed or not low <= len(node.children) <= high:
        raise CmsError(f"{what} has {len(node.children)} elements")
    return node.children


def _octets(node: Tlv, depth: int = 0) -> bytes:
    """The content of an OCTET STRING-typed element, joining BER chunks."""
    if not node.constructed:
        return node.value
    if depth > 2:
        raise CmsError("OCTET STRING chunks nested too deep")
    parts = []
    for chunk in node.children:
        _expect(chunk, UNIVERSAL, T_OCTET_STRING, "an OCTET STRING chunk")
        parts.append(_octets(chunk, depth + 1))
    return b"".join(parts)


def _octet_string(node: Tlv, what: str) -> bytes:
    return _octets(_expect(node, UNIVERSAL, T_OCTET_STRING, what))


def _integer(node: Tlv, what: str) -> int:
    _expect(node, UNIVERSAL, T_INTEGER, what)
    if node.constructed or not 1 <= len(node.value) <= 32:
        raise CmsError(f"malformed {what}")
    return int.from_bytes(node.value, "big", signed=True)


def _oid(node: Tlv, what: str) -> str:
    _expect(node, UNIVERSAL, T_OID, what)
    raw = node.value
    if node.constructed or not raw or raw[-1] & 0x80:
        raise CmsError(f"malformed {what}")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in raw:
        if fresh and byte == 0x80:
            raise CmsError(f"malformed {what}")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _algorithm(node: Tlv, what: str) -> tuple[str, Tlv | None]:
    children = _sequence(node, what, 1, 2)
    return _oid(children[0], f"{what} OID"), children[1] if len(children) == 2 else None


def _is_null_or_absent(params: Tlv | None) -> bool:
    return params is None or (
        params.is_(UNIVERSAL, T_NULL) and not params.constructed and not params.value
    )


# --- EnvelopedData -------------------------------------------------------------------


def decrypt_enveloped_data(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Unwrap a KMS ``CiphertextForRecipient`` with the enclave's RSA key."""
    content_info = _sequence(parse_ber(bytes(data)), "ContentInfo", 2, 2)
    if _oid(content_info[0], "contentType") != OID_ENVELOPED_DATA:
        raise CmsError("content type is not EnvelopedData")
    explicit = content_info[1]
    if not explicit.is_(CONTEXT, 0) or not explicit.constructed or len(explicit.children) != 1:
        raise CmsError("expected [0] EXPLICIT EnvelopedData")
    fields = list(_sequence(explicit.children[0], "EnvelopedData", 3, 5))

    version = _integer(fields.pop(0), "EnvelopedData version")
    if version not in (0, 2):
        raise CmsError(f"unsupported EnvelopedData version {version}")
    if fields and fields[0].is_(CONTEXT, 0):
        fields.pop(0)  # originatorInfo: certificates/CRLs, irrelevant to key transport
    if len(fields) < 2:
        raise CmsError("EnvelopedData is missing fields")
    recipients, encrypted_content = fields[0], fields[1]
    if len(fields) > 3 or (len(fields) == 3 and not fields[2].is_(CONTEXT, 1)):
        raise CmsError("unexpected fields after encryptedContentInfo")

    _expect(recipients, UNIVERSAL, T_SET, "recipientInfos SET")
    if not recipients.constructed or len(recipients.children) != 1:
        raise CmsError("exactly one recipient is supported")
    encrypted_key = _key_trans_recipient(recipients.children[0])
    iv, ciphertext = _encrypted_content(encrypted_content)

    try:
        content_key = private_key.decrypt(
            encrypted_key,
            asym_padding.OAEP(
                mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )
    except ValueError:
        raise CmsError("key transport decryption failed") from None
    if len(content_key) != 32:
        raise CmsError("content encryption key is not 256 bits")
    return _aes256_cbc_decrypt(content_key, iv, ciphertext)


def _key_trans_recipient(node: Tlv) -> bytes:
    version_node, rid, algorithm, encrypted_key = _sequence(node, "KeyTransRecipientInfo", 4, 4)
    version = _integer(version_node, "KeyTransRecipientInfo version")
    if rid.is_(UNIVERSAL, T_SEQUENCE):
        _sequence(rid, "IssuerAndSerialNumber", 2, 2)
        expected_version = 0
    elif rid.is_(CONTEXT, 0):
        if not _octets(rid):
            raise CmsError("empty subjectKeyIdentifier")
        expected_version = 2
    else:
        raise CmsError("recipient is not a KeyTransRecipientInfo")
    if version != expected_version:
        raise CmsError(f"KeyTransRecipientInfo version {version} does not match its rid")
    oid, params = _algorithm(algorithm, "keyEncryptionAlgorithm")
    if oid != OID_RSAES_OAEP or params is None:
        raise CmsError("key encryption must be RSAES-OAEP with explicit parameters")
    _check_oaep_sha256(params)
    key = _octet_string(encrypted_key, "encryptedKey")
    if not key:
        raise CmsError("empty encryptedKey")
    return key


def _check_oaep_sha256(params: Tlv) -> None:
    """RSAES-OAEP-params must say SHA-256, MGF1 with SHA-256 and an empty label."""
    children = _sequence(params, "RSAES-OAEP-params", 2, 3)
    hash_field, mgf_field = children[0], children[1]
    if not hash_field.is_(CONTEXT, 0) or len(hash_field.children) != 1:
        raise CmsError("OAEP hash must be SHA-256")
    hash_oid, hash_params = _algorithm(hash_field.children[0], "OAEP hash")
    if hash_oid != OID_SHA256 or not _is_null_or_absent(hash_params):
        raise CmsError("OAEP hash must be SHA-256")
    if not mgf_field.is_(CONTEXT, 1) or len(mgf_field.children) != 1:
        raise CmsError("OAEP mask generation must be MGF1 with SHA-256")
    mgf_oid, mgf_params = _algorithm(mgf_field.children[0], "OAEP MGF")
    if mgf_oid != OID_MGF1 or mgf_params is None:
        raise CmsError("OAEP mask generation must be MGF1 with SHA-256")
    mgf_hash, mgf_hash_params = _algorithm(mgf_params, "MGF1 hash")
    if mgf_hash != OID_SHA256 or not _is_null_or_absent(mgf_hash_params):
        raise CmsError("OAEP mask generation must be MGF1 with SHA-256")
    if len(children) == 3:
        source = children[2]
        if not source.is_(CONTEXT, 2) or len(source.children) != 1:
            raise CmsError("malformed OAEP pSourceFunc")
        source_oid, label = _algorithm(source.children[0], "OAEP pSource")
        if source_oid != OID_P_SPECIFIED or label is None or _octet_string(label, "label"):
            raise CmsError("OAEP label must be empty")


def _encrypted_content(node: Tlv) -> tuple[bytes, bytes]:
    children = _sequence(node, "EncryptedContentInfo", 3, 3)
    if _oid(children[0], "encrypted contentType") != OID_DATA:
        raise CmsError("encrypted content type must be id-data")
    oid, params = _algorithm(children[1], "contentEncryptionAlgorithm")
    if oid != OID_AES256_CBC or params is None:
        raise CmsError("content encryption must be AES-256-CBC")
    iv = _octet_string(params, "AES-CBC IV")
    if len(iv) != 16:
        raise CmsError("AES-CBC IV must be 16 bytes")
    content = children[2]
    if not content.is_(CONTEXT, 0):
        raise CmsError("expected [0] IMPLICIT encryptedContent")
    ciphertext = _octets(content)
    if not ciphertext or len(ciphertext) % 16:
        raise CmsError("encrypted content length must be a positive multiple of 16")
    return iv, ciphertext


def _aes256_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES256(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CmsError("bad content padding") from None
