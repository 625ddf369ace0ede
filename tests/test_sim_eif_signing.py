"""Signed enclave images in the simulator, as nitro-cli makes them.

``nitro-cli build-enclave --signing-certificate --private-key`` signs PCR0 and reports
PCR8, the measure of the certificate, computed here independently from openssl's DER;
PCR0 does not depend on the signature; two builds from one commit give one PCR0; the
simulated NSM attests PCR8 of a signed image (48 zero bytes otherwise, as real Nitro);
and a signature that does not cover the image, or an expired certificate, does not boot.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nitro_sim import eif
from nitro_sim.release import create_release_signer
from tests.test_sim_nitro_cli import build, call, cli, make_image, ok_json, run, state

__all__ = ["state"]  # the fixture, shared with test_sim_nitro_cli


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def release_pair(directory: Path, name: str, curve: str = "secp384r1") -> tuple[Path, Path]:
    """A signing key and self-signed certificate made by openssl, as operators make them."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    openssl("ecparam", "-name", curve, "-genkey", "-noout", "-out", str(key))
    openssl(
        "req", "-new", "-x509", "-sha384", "-key", str(key), "-out", str(cert), "-days", "30",
        "-subj", f"/C=DE/O=nitro-wallet/CN={name}",
    )  # fmt: skip
    return cert, key


def expected_pcr8(cert: Path) -> str:
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return hashlib.sha384(bytes(48) + hashlib.sha384(der).digest()).hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("release-keys")
    pairs = {
        "release": release_pair(directory, "release"),
        "other": release_pair(directory, "other"),
        "p256": release_pair(directory, "p256", "prime256v1"),
    }
    rsa_key = directory / "rsa.key"
    openssl("genrsa", "-out", str(rsa_key), "2048")
    pairs["rsa"] = (pairs["release"][0], rsa_key)
    pairs["expired"] = expired_pair(directory)
    return pairs


def expired_pair(directory: Path) -> tuple[Path, Path]:
    signer = create_release_signer(
        directory / "expired",
        "expired release",
        valid_from=datetime.now(UTC) - timedelta(days=60),
        valid_for=timedelta(days=59),
    )
    return signer.certificate, signer.private_key


def signing(pair: tuple[Path, Path]) -> tuple[str, ...]:
    return ("--signing-certificate", str(pair[0]), "--private-key", str(pair[1]))


def build_signed(
    state_dir: Path, docker_dir: Path, output: Path, pair: tuple[Path, Path], epoch: str
) -> dict[str, str]:
    result = cli(
        state_dir, "build-enclave", "--docker-uri", "nitro-wallet:release", "--docker-dir",
        str(docker_dir), "--output-file", str(output), *signing(pair), SOURCE_DATE_EPOCH=epoch,
    )  # fmt: skip
    measurements: dict[str, str] = ok_json(result)["Measurements"]
    return measurements


def test_a_signed_build_reports_pcr8_as_nitro_cli_computes_it(
    tmp_path: Path, state: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    unsigned = build(state, docker_dir, tmp_path / "unsigned.eif")
    signed = build_signed(state, docker_dir, tmp_path / "signed.eif", keys["release"], "1")
    assert "PCR8" not in unsigned
    assert signed["PCR8"] == expected_pcr8(keys["release"][0])
    assert {k: v for k, v in signed.items() if k != "PCR8"} == unsigned  # PCR0 ignores it

    described = ok_json(cli(state, "describe-eif", "--eif-path", str(tmp_path / "signed.eif")))
    assert described["Measurements"] == signed
    assert described["IsSigned"] is True
    assert described["SignatureCheck"] is True
    certificate = described["SigningCertificate"]
    assert certificate["IssuerName"] == {
        "countryName": "DE",
        "organizationName": "nitro-wallet",
        "commonName": "release",
    }
    assert certificate["Algorithm"] == "ecdsa-with-SHA384"
    assert certificate["NotAfter"].endswith(" GMT")

    # The signature section, checked with independent code: a COSE_Sign1 (ES384) over
    # PcrInfo {register_index: 0, register_value: PCR0}, by the certificate's key.
    image = eif.read_eif(tmp_path / "signed.eif")
    assert image.signature is not None
    ((entry,),) = [cbor2.loads(image.signature.to_bytes())]
    assert entry["signing_certificate"] == keys["release"][0].read_bytes()
    protected, unprotected, payload, signature = cbor2.loads(entry["signature"])
    assert cbor2.loads(protected) == {1: -35}
    assert unprotected == {}
    assert cbor2.loads(payload) == {
        "register_index": 0,
        "register_value": bytes.fromhex(signed["PCR0"]),
    }
    public_key = x509.load_pem_x509_certificate(keys["release"][0].read_bytes()).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(
        encode_dss_signature(
            int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
        ),
        cbor2.dumps(["Signature1", protected, b"", payload]),
        ec.ECDSA(hashes.SHA384()),
    )
    # describe-eif of the unsigned image: no PCR8, not signed.
    plain = ok_json(cli(state, "describe-eif", "--eif-path", str(tmp_path / "unsigned.eif")))
    assert plain["IsSigned"] is False
    assert "SigningCertificate" not in plain


def test_two_release_builds_from_one_commit_give_one_pcr0(
    tmp_path: Path, state: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    """Issue 10: each host built its own EIF and reported its own PCR0."""
    docker_dir, _ = make_image(tmp_path / "docker")
    first = build_signed(state, docker_dir, tmp_path / "a.eif", keys["release"], "1700000000")
    second = build_signed(state, docker_dir, tmp_path / "b.eif", keys["release"], "1800000000")
    assert first == second  # PCR0, PCR1, PCR2 and PCR8
    # ECDSA signatures are randomized and the build time differs: other bytes, same PCRs.
    assert (tmp_path / "a.eif").read_bytes() != (tmp_path / "b.eif").read_bytes()
    other = build_signed(state, docker_dir, tmp_path / "c.eif", keys["other"], "1700000000")
    assert other["PCR0"] == first["PCR0"]
    assert other["PCR8"] != first["PCR8"]
    p256 = build_signed(state, docker_dir, tmp_path / "d.eif", keys["p256"], "1700000000")
    assert p256["PCR0"] == first["PCR0"]
    assert p256["PCR8"] == expected_pcr8(keys["p256"][0])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--signing-certificate", "CERT"), "E01", "--private-key is required"),
        (("--private-key", "KEY"), "E01", "--signing-certificate is required"),
        (("--signing-certificate", "CERT", "--private-key", "RSA"), "E48", "must be an EC key"),
        (("--signing-certificate", "KEY", "--private-key", "KEY"), "E48", "certificate"),
        (
            ("--signing-certificate", "CERT", "--private-key", "arn:aws:kms:us-east-1:1:key/x"),
            "E03",
            "not simulated",
        ),
    ],
)
def test_signing_needs_a_pem_certificate_and_its_ec_key(
    tmp_path: Path,
    state: Path,
    keys: dict[str, tuple[Path, Path]],
    args: tuple[str, ...],
    code: str,
    message: str,
) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    names = {"CERT": str(keys["release"][0]), "KEY": str(keys["release"][1])}
    names["RSA"] = str(keys["rsa"][1])
    result = cli(
        state, "build-enclave", "--docker-uri", "x:1", "--docker-dir", str(docker_dir),
        "--output-file", str(tmp_path / "x.eif"), *[names.get(a, a) for a in args],
    )  # fmt: skip
    assert result.returncode == 1
    assert f"[ {code} ]" in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.eif").exists()


def test_the_nsm_attests_pcr8_of_a_signed_image_and_zero_otherwise(
    tmp_path: Path, state: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    signed = build_signed(state, docker_dir, tmp_path / "signed.eif", keys["release"], "1")
    build(state, docker_dir, tmp_path / "unsigned.eif")
    zero = bytes(48).hex()
    for path, debug, pcr8, pcr0 in (
        ("signed.eif", False, signed["PCR8"], signed["PCR0"]),
        ("unsigned.eif", False, zero, signed["PCR0"]),
        ("signed.eif", True, zero, zero),
    ):
        started = run(state, tmp_path / path, *(["--debug-mode"] if debug else []))
        cid = started["EnclaveCID"]
        assert call(state, cid, "pcr", {"index": 8})["value"] == pcr8, (path, debug)
        assert call(state, cid, "pcr", {"index": 0})["value"] == pcr0, (path, debug)
        listed = ok_json(cli(state, "describe-enclaves"))
        assert ("PCR8" in listed[0]["Measurements"]) == (path == "signed.eif")
        ok_json(cli(state, "terminate-enclave", "--enclave-name", started["EnclaveName"]))


def test_a_signature_that_does_not_cover_the_image_does_not_boot(
    tmp_path: Path, state: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    released, _ = make_image(tmp_path / "released")
    tampered, _ = make_image(tmp_path / "tampered")
    build_signed(state, released, tmp_path / "released.eif", keys["release"], "1")
    build(state, tampered, tmp_path / "tampered.eif")
    signature = eif.read_eif(tmp_path / "released.eif").signature
    forged = replace(eif.read_eif(tmp_path / "tampered.eif"), signature=signature)
    eif.write_eif(tmp_path / "forged.eif", forged)
    described = ok_json(cli(state, "describe-eif", "--eif-path", str(tmp_path / "forged.eif")))
    assert described["SignatureCheck"] is False
    assert described["Measurements"]["PCR8"] == expected_pcr8(keys["release"][0])
    refused = cli(
        state, "run-enclave", "--eif-path", str(tmp_path / "forged.eif"), "--cpu-count", "2",
        "--memory", "256",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "[ E59 ] EIF signature checker error." in refused.stderr
    assert "does not cover this image's PCR0" in refused.stderr
    assert ok_json(cli(state, "describe-enclaves")) == []


def test_an_expired_signing_certificate_does_not_boot(
    tmp_path: Path, state: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    docker_dir, _ = make_image(tmp_path / "docker")
    build_signed(state, docker_dir, tmp_path / "old.eif", keys["expired"], "1")
    refused = cli(
        state, "run-enclave", "--eif-path", str(tmp_path / "old.eif"), "--cpu-count", "2",
        "--memory", "256",
    )  # fmt: skip
    assert "[ E59 ]" in refused.stderr
    assert "expired" in refused.stderr
