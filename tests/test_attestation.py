"""Attestation verifier: real documents from the simulated NSM, real chains, real ES384."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from nitro_sim.ca import SimCa
from nitro_sim.nsm import SimulatedNsm
from nitro_wallet.attestation import (
    AWS_NITRO_ROOT_G1_SHA256,
    AttestationError,
    parse_unverified,
    root_fingerprint,
    verify_attestation,
)
from tests.simhelpers import cose_sign, default_fields, make_ca, signed_document

REPO = Path(__file__).resolve().parents[1]

# The public AWS Nitro Enclaves root G1 certificate (AWS_NitroEnclaves_Root-G1.zip).
AWS_ROOT_G1_PEM = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""

PCR0 = bytes.fromhex("a1" * 48)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimCa:
    return make_ca(tmp_path_factory.mktemp("attestation"))


@pytest.fixture(scope="module")
def nsm(ca: SimCa) -> SimulatedNsm:
    return SimulatedNsm(ca, {0: PCR0, 1: b"\x02" * 48, 2: b"\x03" * 48}, "i-0abc-enc0def")


@pytest.fixture(scope="module")
def document(nsm: SimulatedNsm) -> bytes:
    return nsm.attestation_document(user_data=b"user", nonce=b"\x00nonce", public_key=b"\x30" * 294)


def refused(document: bytes, ca: SimCa, **kwargs: Any) -> str:
    with pytest.raises(AttestationError) as info:
        verify_attestation(document, [ca.root_fingerprint], **kwargs)
    return info.value.reason


# --- the happy path -----------------------------------------------------------------


def test_simulated_document_verifies_with_all_fields(
    ca: SimCa, nsm: SimulatedNsm, document: bytes
) -> None:
    doc = verify_attestation(document, [ca.root_fingerprint])
    assert doc.module_id == "i-0abc-enc0def"
    assert doc.digest == "SHA384"
    assert sorted(doc.pcrs) == list(range(16))
    assert doc.pcrs[0] == PCR0
    assert doc.pcr_hex(0) == "a1" * 48
    assert doc.pcrs[3] == bytes(48)
    assert doc.user_data == b"user"
    assert doc.nonce == b"\x00nonce"
    assert doc.public_key == b"\x30" * 294
    assert next(root_fingerprint(c.public_bytes(Encoding.DER)) for c in doc.cabundle) == (
        ca.root_fingerprint
    )
    assert abs(doc.timestamp - datetime.now(UTC)) < timedelta(minutes=1)
    # Untagged COSE_Sign1, protected header exactly {1: -35}, like AWS.
    outer = cbor2.loads(document)
    assert isinstance(outer, list)
    assert outer[0] == bytes.fromhex("a1013822")
    with pytest.raises(AttestationError, match="not in the document"):
        doc.pcr_hex(20)


def test_tagged_cose_sign1_is_accepted(ca: SimCa) -> None:
    doc = verify_attestation(signed_document(ca, tagged=True), [ca.root_fingerprint])
    assert doc.pcrs[5] == b"\x05" * 48


def test_null_optional_fields_and_absent_optional_fields(ca: SimCa) -> None:
    doc = verify_attestation(signed_document(ca), [ca.root_fingerprint])
    assert (doc.public_key, doc.user_data, doc.nonce) == (None, None, None)
    absent = signed_document(ca, remove=("public_key", "user_data", "nonce"))
    assert verify_attestation(absent, [ca.root_fingerprint]).nonce is None


def test_maximum_field_sizes_are_accepted(ca: SimCa) -> None:
    fields = {"user_data": b"u" * 512, "nonce": b"n" * 512, "public_key": b"k" * 1024}
    doc = verify_attestation(signed_document(ca, overrides=fields), [ca.root_fingerprint])
    assert doc.user_data == b"u" * 512
    assert doc.public_key == b"k" * 1024


def test_pcr_lengths_32_and_64_are_accepted(ca: SimCa) -> None:
    pcrs = {0: b"\x01" * 32, 1: b"\x02" * 64, 31: b"\x03" * 48}
    doc = verify_attestation(signed_document(ca, overrides={"pcrs": pcrs}), [ca.root_fingerprint])
    assert dict(doc.pcrs) == pcrs


# --- trust ---------------------------------------------------------------------------


def test_pinned_aws_root_constant_matches_the_published_certificate() -> None:
    assert root_fingerprint(AWS_ROOT_G1_PEM) == AWS_NITRO_ROOT_G1_SHA256
    der = x509.load_pem_x509_certificate(AWS_ROOT_G1_PEM).public_bytes(Encoding.DER)
    assert root_fingerprint(der) == AWS_NITRO_ROOT_G1_SHA256


def test_simulator_document_is_refused_by_the_default_aws_root(document: bytes) -> None:
    with pytest.raises(AttestationError, match="root certificate is not trusted"):
        verify_attestation(document)


def test_other_simulator_root_is_refused(tmp_path: Path, document: bytes) -> None:
    other = make_ca(tmp_path)
    with pytest.raises(AttestationError, match="not trusted"):
        verify_attestation(document, [other.root_fingerprint])
    with pytest.raises(AttestationError, match="no trusted root"):
        verify_attestation(document, [])
    with pytest.raises(AttestationError, match="64 hex"):
        verify_attestation(document, ["abcd"])


def test_every_flipped_byte_is_refused(ca: SimCa, document: bytes) -> None:
    accepted = []
    for i in range(len(document)):
        mutated = bytearray(document)
        mutated[i] ^= 0x01
        try:
            verify_attestation(bytes(mutated), [ca.root_fingerprint])
        except AttestationError:
            continue
        accepted.append(i)
    assert accepted == []


def test_truncated_and_extended_documents_are_refused(ca: SimCa, document: bytes) -> None:
    for cut in (1, 10, len(document) // 2, len(document) - 1):
        refused(document[:cut], ca)
    assert "trailing" in refused(document + b"\x00", ca)
    assert refused(b"", ca)


def test_leaf_validity_window_is_enforced(ca: SimCa, document: bytes) -> None:
    doc = verify_attestation(document, [ca.root_fingerprint])
    leaf = doc.certificate
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3)
    inside = leaf.not_valid_before_utc + timedelta(hours=2)
    verify_attestation(document, [ca.root_fingerprint], at=inside)
    assert "not valid at" in refused(
        document, ca, at=leaf.not_valid_after_utc + timedelta(seconds=1)
    )
    assert "not valid at" in refused(
        document, ca, at=leaf.not_valid_before_utc - timedelta(seconds=1)
    )
    with pytest.raises(AttestationError, match="timezone-aware"):
        verify_attestation(document, [ca.root_fingerprint], at=datetime(2030, 1, 1))


def test_wrong_algorithm_header_is_refused(ca: SimCa) -> None:
    for header in (
        cbor2.dumps({1: -7}),  # ES256
        cbor2.dumps({1: -35, 4: b"kid"}),
        cbor2.dumps({True: -35}),
        cbor2.dumps({1: "ES384"}),
        b"",
        cbor2.dumps([1, -35]),
    ):
        assert "protected header" in refused(signed_document(ca, protected=header), ca)


def test_signature_from_another_key_is_refused(ca: SimCa) -> None:
    cert, _ = ca.issue_leaf()
    other_key = ec.generate_private_key(ec.SECP384R1())
    payload = cbor2.dumps(default_fields(ca, cert))
    assert "signature does not verify" in refused(cose_sign(other_key, payload), ca)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_data": b"u" * 513}, "user_data"),
        ({"nonce": b"n" * 513}, "nonce"),
        ({"public_key": b"k" * 1025}, "public_key"),
        ({"public_key": b""}, "public_key"),
        ({"nonce": "text"}, "nonce"),
        ({"pcrs": {32: b"\x00" * 48}}, "PCR index"),
        ({"pcrs": {-1: b"\x00" * 48}}, "PCR index"),
        ({"pcrs": {"0": b"\x00" * 48}}, "PCR index"),
        ({"pcrs": {0: b"\x00" * 47}}, "PCR0"),
        ({"pcrs": {0: "00" * 48}}, "PCR0"),
        ({"pcrs": {}}, "pcrs"),
        ({"pcrs": [b"\x00" * 48]}, "pcrs"),
        ({"cabundle": []}, "cabundle"),
        ({"cabundle": b"x"}, "cabundle"),
        ({"cabundle": [b"not a certificate"]}, "cabundle[0]"),
        ({"certificate": b"x" * 1025}, "certificate"),
        ({"digest": "SHA256"}, "digest"),
        ({"timestamp": -5}, "timestamp"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": 1.5e12}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"module_id": ""}, "module_id"),
        ({"module_id": b"i-123"}, "module_id"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_invalid_fields_are_refused(ca: SimCa, overrides: dict[str, Any], reason: str) -> None:
    assert reason in refused(signed_document(ca, overrides=overrides), ca)


@pytest.mark.parametrize("name", ["module_id", "digest", "timestamp", "pcrs", "certificate"])
def test_missing_required_field_is_refused(ca: SimCa, name: str) -> None:
    assert "missing" in refused(signed_document(ca, remove=(name,)), ca)


def test_non_canonical_cbor_payloads_are_refused(ca: SimCa) -> None:
    cert, key = ca.issue_leaf()
    fields = default_fields(ca, cert)
    plain = cbor2.dumps(fields)
    assert verify_attestation(cose_sign(key, plain), [ca.root_fingerprint])
    # Duplicate key: a second "nonce" entry appended to the map.
    duplicate = bytes([plain[0] + 1]) + plain[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"x")
    assert "CBOR" in refused(cose_sign(key, duplicate), ca)
    # Indefinite-length containers are what the AWS NSM emits: accepted.
    indefinite = cbor2.dumps(fields, indefinite_containers=True)
    assert verify_attestation(cose_sign(key, indefinite), [ca.root_fingerprint])
    assert "trailing" in refused(cose_sign(key, plain + b"\x00"), ca)
    bignum_ts = plain.replace(
        cbor2.dumps("timestamp") + cbor2.dumps(fields["timestamp"]),
        cbor2.dumps("timestamp") + b"\xc2\x46" + fields["timestamp"].to_bytes(6, "big"),
    )
    assert bignum_ts != plain
    assert "CBOR" in refused(cose_sign(key, bignum_ts), ca)
    assert "map" in refused(cose_sign(key, cbor2.dumps([1, 2])), ca)


def test_cose_structure_is_checked(ca: SimCa, document: bytes) -> None:
    protected, unprotected, payload, signature = cbor2.loads(document)
    cases = {
        "array of 4": [protected, unprotected, payload],
        "unprotected": [protected, [], payload, signature],
        "payload": [protected, unprotected, "text", signature],
        "96 bytes": [protected, unprotected, payload, signature + b"\x00"],
    }
    for reason, message in cases.items():
        assert reason in refused(cbor2.dumps(message), ca)
    assert "tag" in refused(cbor2.dumps(cbor2.CBORTag(98, cbor2.loads(document))), ca)


# --- chain shape ------------------------------------------------------------------------


def _cert(
    subject: str,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool | None,
    path_length: int | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=3))
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), critical=True
        )
    return builder.sign(signer, hashes.SHA384())


def _chain_document(
    *,
    intermediate_ca: bool | None = True,
    root_path_length: int | None = None,
    leaf_curve: ec.EllipticCurve | None = None,
    leaf_is_ca: bool | None = False,
) -> tuple[bytes, str]:
    root_key, inter_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP384R1()),
    )
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    root = _cert("test root", root_name, root_key, root_key, ca=True, path_length=root_path_length)
    inter = _cert("test inter", root_name, root_key, inter_key, ca=intermediate_ca)
    leaf = _cert("test leaf", inter.subject, inter_key, leaf_key, ca=leaf_is_ca)
    fields: dict[str, Any] = {
        "module_id": "i-1",
        "digest": "SHA384",
        "timestamp": 1_700_000_000_000,
        "pcrs": {0: bytes(48)},
        "certificate": leaf.public_bytes(Encoding.DER),
        "cabundle": [root.public_bytes(Encoding.DER), inter.public_bytes(Encoding.DER)],
    }
    return cose_sign(leaf_key, cbor2.dumps(fields)), root_fingerprint(
        root.public_bytes(Encoding.DER)
    )


def test_handmade_chain_verifies_when_well_formed() -> None:
    document, root = _chain_document()
    assert verify_attestation(document, [root]).module_id == "i-1"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"intermediate_ca": False}, "not a CA"),
        ({"intermediate_ca": None}, "no basicConstraints"),
        ({"root_path_length": 0}, "path length"),
        ({"leaf_curve": ec.SECP256R1()}, "P-384"),
        ({"leaf_is_ca": True}, "must not be a CA"),
    ],
)
def test_bad_chains_are_refused(kwargs: dict[str, Any], reason: str) -> None:
    document, root = _chain_document(**kwargs)
    with pytest.raises(AttestationError) as info:
        verify_attestation(document, [root])
    assert reason in info.value.reason


def test_chain_order_and_issuer_are_checked(ca: SimCa, tmp_path: Path) -> None:
    root_der, inter_der = (c.public_bytes(Encoding.DER) for c in ca.cabundle)
    assert "not trusted" in refused(
        signed_document(ca, overrides={"cabundle": [inter_der, root_der]}), ca
    )
    assert "repeats" in refused(
        signed_document(ca, overrides={"cabundle": [root_der, root_der, inter_der]}), ca
    )
    # A leaf from another CA, presented with this CA's bundle.
    foreign_leaf = make_ca(tmp_path).issue_leaf()
    assert "not issued by" in refused(signed_document(ca, leaf=foreign_leaf), ca)


def test_parse_unverified_reads_fields_without_trust(document: bytes) -> None:
    doc = parse_unverified(document)
    assert doc.pcrs[0] == PCR0
    with pytest.raises(AttestationError):
        parse_unverified(document[:-1])


def test_root_fingerprint_rejects_garbage() -> None:
    with pytest.raises(AttestationError):
        root_fingerprint(b"garbage")


# --- CLI -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nitro_wallet", "attestation", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_files(tmp_path: Path, ca: SimCa, document: bytes) -> tuple[Path, Path, Path]:
    raw, b64, root = tmp_path / "doc.cbor", tmp_path / "doc.b64", tmp_path / "root.pem"
    raw.write_bytes(document)
    b64.write_text(base64.encodebytes(document).decode())  # with line breaks
    root.write_bytes(ca.root_pem)
    return raw, b64, root


@pytest.mark.process
def test_cli_verifies_raw_and_base64(cli_files: tuple[Path, Path, Path]) -> None:
    raw, b64, root = cli_files
    for path in (raw, b64):
        result = run_cli("verify", "--document", str(path), "--root", str(root))
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output["module_id"] == "i-0abc-enc0def"
        assert output["digest"] == "SHA384"
        assert output["pcrs"]["0"] == PCR0.hex()
        assert len(output["pcrs"]) == 16
        assert output["nonce"] == b"\x00nonce".hex()
        assert output["user_data"] == b"user".hex()
        assert output["timestamp"].endswith("Z")


@pytest.mark.process
def test_cli_expectations(cli_files: tuple[Path, Path, Path]) -> None:
    raw, _, root = cli_files
    base = ("verify", "--document", str(raw), "--root", str(root))
    assert (
        run_cli(*base, "--expect-pcr0", PCR0.hex(), "--expect-nonce", "006e6f6e6365").returncode
        == 0
    )
    wrong = run_cli(*base, "--expect-pcr0", "00" * 48)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("attestation invalid: PCR0 is " + PCR0.hex())
    assert run_cli(*base, "--expect-nonce", "00").returncode == 1


@pytest.mark.process
def test_cli_refusals_and_usage_errors(cli_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    raw, _, root = cli_files
    default_root = run_cli("verify", "--document", str(raw))
    assert default_root.returncode == 1
    assert "attestation invalid: root certificate is not trusted" in default_root.stderr
    assert run_cli("verify", "--document", str(raw), "--root", "aws").returncode == 1
    later = run_cli(
        "verify", "--document", str(raw), "--root", str(root), "--at", "2099-01-01T00:00:00Z"
    )
    assert later.returncode == 1
    assert "not valid at" in later.stderr
    garbage = tmp_path / "garbage"
    garbage.write_text("not base64 !!")
    assert run_cli("verify", "--document", str(garbage), "--root", str(root)).returncode == 1
    assert run_cli("verify", "--root", str(root)).returncode == 2
    assert run_cli("verify", "--document", str(tmp_path / "missing")).returncode == 2
    assert run_cli("verify", "--document", str(raw), "--at", "yesterday").returncode == 2
    assert run_cli("verify", "--document", str(raw), "--root", str(garbage)).returncode == 2
    assert run_cli("verify", "--document", str(raw), "--expect-pcr0", "zz").returncode == 2
    assert run_cli().returncode == 2
