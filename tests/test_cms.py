"""CMS EnvelopedData unwrap: openssl-made DER and streamed BER, hand-built KMS-shaped BER,
and every way the structure can be wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from enclave_app.cms import CmsError, decrypt_enveloped_data, parse_ber
from tests.simhelpers import (
    AES128_CBC,
    MGF1,
    NULL,
    OPENSSL_OAEP_SHA256,
    RSA_PKCS1,
    RSAES_OAEP,
    SHA1,
    envelope,
    oaep_params,
    oid,
    openssl_cms_encrypt,
    self_signed_rsa,
    seq,
    tlv,
)

DATA_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def recipient(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    return self_signed_rsa(tmp_path_factory.mktemp("cms"))


@pytest.fixture(scope="module")
def key(recipient: tuple[rsa.RSAPrivateKey, Path]) -> rsa.RSAPrivateKey:
    return recipient[0]


# --- independent producer: openssl ---------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("stream", [False, True], ids=["der", "ber-stream"])
@pytest.mark.parametrize("keyid", [False, True], ids=["issuer-serial", "ski"])
@pytest.mark.parametrize("size", [0, 32, 3000])
def test_openssl_envelopes_decrypt(
    recipient: tuple[rsa.RSAPrivateKey, Path], tmp_path: Path, stream: bool, keyid: bool, size: int
) -> None:
    key, cert = recipient
    plaintext = os.urandom(size)
    options = ["-aes256", *OPENSSL_OAEP_SHA256, *(["-keyid"] if keyid else [])]
    data = openssl_cms_encrypt(plaintext, cert, tmp_path, *options, stream=stream)
    if stream:
        assert data[1] == 0x80  # indefinite length at the top, as KMS sends
    assert decrypt_enveloped_data(data, key) == plaintext


@pytest.mark.process
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (("-aes256",), "RSAES-OAEP"),  # PKCS#1 v1.5 key transport
        (("-aes128", *OPENSSL_OAEP_SHA256), "AES-256-CBC"),
        # OAEP with all-default parameters (SHA-1): an empty RSAES-OAEP-params.
        (("-aes256", "-keyopt", "rsa_padding_mode:oaep"), "RSAES-OAEP-params"),
        (
            (
                "-aes256",
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha1",
            ),
            "RSAES-OAEP-params",  # openssl omits the (default, SHA-1) MGF field
        ),
    ],
)
def test_openssl_envelopes_with_other_algorithms_are_refused(
    recipient: tuple[rsa.RSAPrivateKey, Path], tmp_path: Path, options: tuple[str, ...], reason: str
) -> None:
    key, cert = recipient
    data = openssl_cms_encrypt(DATA_KEY, cert, tmp_path, *options)
    with pytest.raises(CmsError, match=reason):
        decrypt_enveloped_data(data, key)


def test_cryptography_pkcs7_envelope_is_refused(
    recipient: tuple[rsa.RSAPrivateKey, Path],
) -> None:
    from cryptography import x509

    key, cert_path = recipient
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    data = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(DATA_KEY)
        .add_recipient(cert)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    with pytest.raises(CmsError, match="RSAES-OAEP"):
        decrypt_enveloped_data(data, key)


# --- KMS-shaped, hand-built ----------------------------------------------------------


@pytest.mark.parametrize("ber", [True, False], ids=["ber", "der"])
@pytest.mark.parametrize("rid", ["ski", "issuer"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_kms_shaped_envelopes_decrypt(
    key: rsa.RSAPrivateKey, ber: bool, rid: str, chunk: int
) -> None:
    data = envelope(key.public_key(), DATA_KEY, ber=ber, rid=rid, chunk=chunk)
    assert decrypt_enveloped_data(data, key) == DATA_KEY


def test_explicit_empty_oaep_label_is_accepted(key: rsa.RSAPrivateKey) -> None:
    alg = seq(oid(RSAES_OAEP), oaep_params(label=b""))
    assert (
        decrypt_enveloped_data(envelope(key.public_key(), DATA_KEY, key_alg=alg), key) == DATA_KEY
    )


def test_wrong_private_key_is_refused(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError, match="key transport decryption failed"):
        decrypt_enveloped_data(envelope(key.public_key(), DATA_KEY), other)


def test_every_truncation_is_refused(key: rsa.RSAPrivateKey) -> None:
    for ber in (True, False):
        data = envelope(key.public_key(), DATA_KEY, ber=ber)
        for cut in range(len(data)):
            with pytest.raises(CmsError):
                decrypt_enveloped_data(data[:cut], key)


def test_trailing_bytes_are_refused(key: rsa.RSAPrivateKey) -> None:
    for ber in (True, False):
        data = envelope(key.public_key(), DATA_KEY, ber=ber)
        for extra in (b"\x00", b"\x00\x00", b"\x04\x00"):
            with pytest.raises(CmsError, match="trailing"):
                decrypt_enveloped_data(data + extra, key)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"key_alg": seq(oid(RSA_PKCS1), NULL)}, "RSAES-OAEP"),
        ({"key_alg": seq(oid(RSAES_OAEP))}, "RSAES-OAEP"),
        ({"key_alg": seq(oid(RSAES_OAEP), oaep_params(hash_oid=SHA1))}, "SHA-256"),
        ({"key_alg": seq(oid(RSAES_OAEP), oaep_params(mgf_hash_oid=SHA1))}, "MGF1"),
        ({"key_alg": seq(oid(RSAES_OAEP), oaep_params(label=b"label"))}, "label"),
        (
            {
                "key_alg": seq(
                    oid(RSAES_OAEP),
                    seq(tlv(0xA0, seq(oid("2.16.840.1.101.3.4.2.1"), NULL))),
                )
            },
            "RSAES-OAEP-params",
        ),
        (
            {
                "key_alg": seq(
                    oid(RSAES_OAEP),
                    seq(
                        tlv(0xA0, seq(oid("2.16.840.1.101.3.4.2.1"), NULL)),
                        tlv(0xA1, seq(oid(MGF1 + ".1"), seq(oid("2.16.840.1.101.3.4.2.1")))),
                    ),
                )
            },
            "MGF1",
        ),
        ({"content_oid": AES128_CBC}, "AES-256-CBC"),
        ({"iv": b"\x00" * 8}, "IV must be 16 bytes"),
        ({"cek": os.urandom(16)}, "256 bits"),
        ({"padded": DATA_KEY + b"\x10" * 15 + b"\x11"}, "padding"),
        ({"padded": DATA_KEY + b"\x00" * 16}, "padding"),
        ({"padded": DATA_KEY[:16] + b"\x01" * 15 + b"\x02"}, "padding"),
        ({"recipients": 2}, "exactly one recipient"),
        ({"recipients": 0}, "exactly one recipient"),
        ({"version": 5}, "version"),
    ],
)
def test_malformed_or_unsupported_envelopes_are_refused(
    key: rsa.RSAPrivateKey, kwargs: dict[str, object], reason: str
) -> None:
    for ber in (True, False):
        data = envelope(key.public_key(), DATA_KEY, ber=ber, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(CmsError, match=reason):
            decrypt_enveloped_data(data, key)


def test_wrong_content_type_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = envelope(key.public_key(), DATA_KEY, ber=False)
    signed_data = data.replace(oid("1.2.840.113549.1.7.3"), oid("1.2.840.113549.1.7.2"))
    with pytest.raises(CmsError, match="not EnvelopedData"):
        decrypt_enveloped_data(signed_data, key)
    inner = data.replace(oid("1.2.840.113549.1.7.1"), oid("1.2.840.113549.1.7.6"))
    with pytest.raises(CmsError, match="id-data"):
        decrypt_enveloped_data(inner, key)


# --- the TLV reader ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "input"),
        (b"\x30", "truncated"),
        (b"\x30\x05\x02\x01", "longer than"),
        (b"\x04\x80\x00\x00", "primitive"),
        (b"\x30\x80\x02\x01\x00", "end-of-contents"),
        (b"\x30\x85\x01\x00\x00\x00\x00", "length"),
        (b"\x1f\x81\x00\x00", "high tag"),
        (b"\x30\x02\x00\x00", "end-of-contents"),
        (b"\x30\x80" * 40 + b"\x00\x00" * 40, "too deep"),
        (b"\x30\x00\x30\x00", "trailing"),
        (b"\x00" * (64 * 1024 + 1), "input"),
    ],
)
def test_ber_reader_rejects_malformed_input(data: bytes, reason: str) -> None:
    with pytest.raises(CmsError, match=reason):
        parse_ber(data)


def test_ber_reader_definite_and_indefinite_agree() -> None:
    definite = parse_ber(seq(tlv(0x02, b"\x05"), tlv(0x04, b"abc")))
    indefinite = parse_ber(seq(tlv(0x02, b"\x05"), tlv(0x04, b"abc"), ber=True))
    assert definite == indefinite
    assert [child.value for child in definite.children] == [b"\x05", b"abc"]
    long_form = parse_ber(b"\x04\x82\x00\x03abc")
    assert long_form.value == b"abc"


def test_refuses_input_that_is_not_cms(key: rsa.RSAPrivateKey) -> None:
    for data in (b"\x04\x03abc", seq(oid("1.2.840.113549.1.7.3")), os.urandom(300)):
        with pytest.raises(CmsError):
            decrypt_enveloped_data(data, key)
