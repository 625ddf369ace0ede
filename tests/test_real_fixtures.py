"""Real AWS artefacts against the production verifier and CMS reader.

- Attestation: a real AWS Nitro Enclaves document shipped by the ``valtu`` sdist on
  PyPI, fetched into ``.fixtures-cache/`` by ``scripts/fetch-real-fixtures.py``
  (``make test`` runs it and sets NITRO_WALLET_REQUIRE_REAL_FIXTURES=1, so a missing
  fixture fails rather than skips there).
- KMS CiphertextForRecipient: real samples with their recipient keys are published
  only in GitHub repositories, which CI cannot reach and the project does not copy.
  Put them in ``$NITRO_WALLET_REAL_FIXTURES/kms-cms-samples.json``
  (``{"samples": [{"private_key_pem", "ciphertext_for_recipient_b64",
  "plaintext_hex" | "plaintext_contains"}]}``) to run that test; see docs/testing.md.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from enclave_app.cms import CmsError, decrypt_enveloped_data
from nitro_wallet.attestation import (
    AWS_NITRO_ROOT_G1_SHA256,
    AttestationError,
    parse_unverified,
    verify_attestation,
)

FIXTURES = Path(
    os.environ.get(
        "NITRO_WALLET_REAL_FIXTURES", Path(__file__).resolve().parent.parent / ".fixtures-cache"
    )
)
REQUIRED = os.environ.get("NITRO_WALLET_REQUIRE_REAL_FIXTURES") == "1"


def _fixture(name: str, *, required: bool) -> Any:
    path = FIXTURES / name
    if not path.exists():
        if required:
            pytest.fail(f"{path} is missing: run scripts/fetch-real-fixtures.py")
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def aws_document() -> tuple[bytes, dict[str, Any]]:
    fixture = _fixture("valtu-attestation.json", required=REQUIRED)
    return base64.b64decode(fixture["document"]), fixture


def test_real_aws_document_verifies_against_the_pinned_root_at_its_own_time(
    aws_document: tuple[bytes, dict[str, Any]],
) -> None:
    document, fixture = aws_document
    at = parse_unverified(document).timestamp
    doc = verify_attestation(document, (AWS_NITRO_ROOT_G1_SHA256,), at=at)
    assert doc.pcr_hex(0) == fixture["pcr0"]
    assert doc.nonce is not None
    assert doc.nonce.hex() == fixture["nonce"]
    assert doc.module_id.startswith("i-")
    assert len(doc.cabundle) >= 2


def test_real_aws_document_is_refused_out_of_its_validity_or_under_another_root(
    aws_document: tuple[bytes, dict[str, Any]],
) -> None:
    document, _ = aws_document
    doc = parse_unverified(document)
    with pytest.raises(AttestationError):
        verify_attestation(document, at=doc.certificate.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(AttestationError):
        verify_attestation(document, ("00" * 32,), at=doc.timestamp)


def test_real_aws_document_with_any_flipped_byte_is_refused(
    aws_document: tuple[bytes, dict[str, Any]],
) -> None:
    document, _ = aws_document
    at = parse_unverified(document).timestamp
    positions = sorted({*range(0, len(document), 11), len(document) - 1})
    accepted = []
    for position in positions:
        flipped = bytearray(document)
        flipped[position] ^= 0x01
        try:
            verify_attestation(bytes(flipped), at=at)
        except AttestationError:
            continue
        accepted.append(position)
    assert accepted == [], f"documents with a flipped byte at {accepted} were accepted"


def test_real_kms_ciphertext_for_recipient_samples_decrypt() -> None:
    fixture = _fixture("kms-cms-samples.json", required=False)
    assert fixture["samples"]
    for sample in fixture["samples"]:
        key = load_pem_private_key(sample["private_key_pem"].encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        data = base64.b64decode(sample["ciphertext_for_recipient_b64"])
        assert data[1] == 0x80, "real KMS output is BER with indefinite lengths"
        plaintext = decrypt_enveloped_data(data, key)
        if "plaintext_hex" in sample:
            assert plaintext.hex() == sample["plaintext_hex"]
        for fragment in sample.get("plaintext_contains", []):
            assert fragment.encode() in plaintext
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x01
        with pytest.raises(CmsError):
            decrypt_enveloped_data(bytes(damaged), key)
