"""The local KMS through real boto3 clients on a real socket.

Covers authentication, every operation, key-policy enforcement with Recipient
attestation (the trust chain of DESIGN.md), the CMS envelope, the audit log, hostile
input and persistence across a restart.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_app.cms import CmsError, decrypt_enveloped_data
from nitro_sim.ca import SimCa
from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.kms.cms_builder import build_enveloped_data, subject_key_identifier
from nitro_sim.nsm import SimulatedNsm
from nitro_sim.principals import Credentials, Principals

REGION = "us-east-1"
PCR0_GOOD = hashlib.sha384(b"nitro-wallet enclave image v1").digest()
PCR0_OTHER = hashlib.sha384(b"nitro-wallet enclave image, modified").digest()
PCR0_DEBUG = bytes(48)
OTHER_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000"
CONTEXT = {"nitro-wallet:account_id": "6f1c2d3e-0000-4000-8000-000000000001"}


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def kms(state: Path) -> Iterator[KmsServer]:
    server = serve_kms(state, "127.0.0.1", 0)
    yield server
    server.close()


@pytest.fixture
def principals(kms: KmsServer, state: Path) -> Principals:
    return Principals.load(state)


def client(url: str, creds: Credentials, region: str = REGION) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def admin(kms: KmsServer, principals: Principals) -> Any:
    return client(kms.url, principals.admin_credentials())


@pytest.fixture
def role(kms: KmsServer, principals: Principals) -> Any:
    return client(kms.url, principals.role_credentials())


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def attested_policy(principals: Principals, pcr0s: list[bytes]) -> str:
    """The shape the kms_key_policy role renders: admin manages, role decrypts attested."""
    admin_arn = principals.administrator().arn
    role_arn = principals.imds_role().arn
    allowed = [p.hex() for p in pcr0s]
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Admin",
                    "Effect": "Allow",
                    "Principal": {"AWS": admin_arn},
                    "Action": [
                        "kms:Create*",
                        "kms:Describe*",
                        "kms:Get*",
                        "kms:Put*",
                        "kms:List*",
                        "kms:Enable*",
                        "kms:Disable*",
                        "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion",
                        "kms:Encrypt",
                    ],
                    "Resource": "*",
                },
                {
                    "Sid": "EnclaveOnly",
                    "Effect": "Allow",
                    "Principal": {"AWS": role_arn},
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": allowed}
                    },
                },
                {
                    "Sid": "DenyUnattested",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                    "Resource": "*",
                    "Condition": {
                        "StringNotEqualsIgnoreCase": {
                            "kms:RecipientAttestation:ImageSha384": allowed
                        }
                    },
                },
            ],
        }
    )


class Enclave:
    """A simulated enclave: an NSM with given PCR0 (and PCR8 of a signed image; zero
    otherwise) and an ephemeral RSA-2048 key."""

    def __init__(self, state: Path, pcr0: bytes, pcr8: bytes | None = None) -> None:
        pcrs = {0: pcr0} if pcr8 is None else {0: pcr0, 8: pcr8}
        self.nsm = SimulatedNsm(SimCa.load_or_create(state / "ca"), pcrs, "i-0sim-enc0test")
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def document(self, *, with_key: bool = True) -> bytes:
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return self.nsm.attestation_document(public_key=spki if with_key else None)

    def recipient(self) -> dict[str, Any]:
        return {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": self.document(),
        }

    def unwrap(self, envelope: bytes) -> bytes:
        return decrypt_enveloped_data(envelope, self.key)


@pytest.fixture
def locked_key(admin: Any, principals: Principals) -> str:
    key_id = admin.create_key(Description="wallet")["KeyMetadata"]["KeyId"]
    admin.put_key_policy(KeyId=key_id, Policy=attested_policy(principals, [PCR0_GOOD]))
    return str(key_id)


def signed_raw(
    url: str,
    creds: Credentials,
    body: bytes,
    *,
    target: str = "TrentService.ListKeys",
    when: datetime | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> AWSRequest:
    """A request signed by botocore's own SigV4 (optionally at another time)."""
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    if when is not None and monkeypatch is not None:
        monkeypatch.setattr(
            botocore.auth, "get_current_datetime", lambda: when.replace(tzinfo=None)
        )
    boto_creds = BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token)
    botocore.auth.SigV4Auth(boto_creds, "kms", REGION).add_auth(request)
    return request


def send(kms: KmsServer, request: AWSRequest) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", kms.port, timeout=10)
    try:
        body = request.data if isinstance(request.data, bytes) else b""
        headers = {k: str(v) for k, v in request.headers.items()}
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


# ------------------------------------------------------------------ authentication


def test_unknown_access_key_is_unrecognized(kms: KmsServer) -> None:
    stranger = Credentials("AKIAAAAAAAAAAAAAAAAA", "x" * 40, None)
    with pytest.raises(ClientError) as exc:
        client(kms.url, stranger).list_keys()
    assert error_code(exc) == "UnrecognizedClientException"


def test_wrong_secret_is_invalid_signature(kms: KmsServer, principals: Principals) -> None:
    real = principals.admin_credentials()
    forged = Credentials(real.access_key_id, real.secret_access_key[:-1] + "A", None)
    if forged.secret_access_key == real.secret_access_key:
        forged = Credentials(real.access_key_id, real.secret_access_key[:-1] + "B", None)
    with pytest.raises(ClientError) as exc:
        client(kms.url, forged).list_keys()
    assert error_code(exc) == "InvalidSignatureException"


def test_role_needs_its_session_token(kms: KmsServer, principals: Principals) -> None:
    real = principals.role_credentials()
    assert real.session_token is not None
    for token in (None, real.session_token[:-4] + "AAAA"):
        with pytest.raises(ClientError) as exc:
            client(
                kms.url, Credentials(real.access_key_id, real.secret_access_key, token)
            ).list_keys()
        assert error_code(exc) == "UnrecognizedClientException"
    assert "Keys" in client(kms.url, real).list_keys()


def test_wrong_region_in_scope_is_refused(kms: KmsServer, principals: Principals) -> None:
    with pytest.raises(ClientError) as exc:
        client(kms.url, principals.admin_credentials(), region="eu-west-1").list_keys()
    assert error_code(exc) == "InvalidSignatureException"


@pytest.mark.parametrize(("skew_minutes", "accepted"), [(-20, False), (20, False), (-10, True)])
def test_clock_skew_over_15_minutes_is_refused(
    kms: KmsServer,
    principals: Principals,
    monkeypatch: pytest.MonkeyPatch,
    skew_minutes: int,
    accepted: bool,
) -> None:
    when = datetime.now(UTC) + timedelta(minutes=skew_minutes)
    request = signed_raw(
        kms.url, principals.admin_credentials(), b"{}", when=when, monkeypatch=monkeypatch
    )
    status, body = send(kms, request)
    if accepted:
        assert status == 200
        assert "Keys" in body
    else:
        assert status == 400
        assert body["__type"] == "InvalidSignatureException"
        assert "expired" in body["message"]


def test_missing_or_tampered_signature(kms: KmsServer, principals: Principals) -> None:
    request = signed_raw(kms.url, principals.admin_credentials(), b'{"Limit": 1}')
    status, body = send(kms, request)
    assert status == 200
    request.data = b'{"Limit": 2}'  # body changed after signing
    request.headers["Content-Length"] = str(len(request.data))
    status, body = send(kms, request)
    assert (status, body["__type"]) == (400, "InvalidSignatureException")
    del request.headers["Authorization"]
    status, body = send(kms, request)
    assert body["__type"] == "MissingAuthenticationTokenException"
    # The target must be signed: swapping the operation breaks the signature.
    request = signed_raw(kms.url, principals.admin_credentials(), b"{}")
    request.headers.replace_header("X-Amz-Target", "TrentService.CreateKey")
    status, body = send(kms, request)
    assert body["__type"] == "InvalidSignatureException"


# ---------------------------------------------------------------- key management


def test_create_key_is_for_administrators_only(admin: Any, role: Any) -> None:
    with pytest.raises(ClientError) as exc:
        role.create_key()
    assert error_code(exc) == "AccessDeniedException"
    meta = admin.create_key(Description="d")["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    assert meta["Enabled"] is True
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:111122223333:key/{meta['KeyId']}"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT"


def test_default_policy_is_admin_only_not_root(
    admin: Any, role: Any, principals: Principals
) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    policy = json.loads(admin.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    principals_named = [s["Principal"] for s in policy["Statement"]]
    assert principals_named == [{"AWS": principals.administrator().arn}]
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    calls: list[Callable[[], Any]] = [
        lambda: role.decrypt(CiphertextBlob=blob),
        lambda: role.describe_key(KeyId=key_id),
        lambda: role.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == "AccessDeniedException"


def test_key_ids_aliases_and_listing(admin: Any) -> None:
    meta = admin.create_key()["KeyMetadata"]
    other = admin.create_key()["KeyMetadata"]
    admin.create_alias(AliasName="alias/wallet", TargetKeyId=meta["KeyId"])
    alias_arn = f"arn:aws:kms:{REGION}:111122223333:alias/wallet"
    for ref in (meta["KeyId"], meta["Arn"], "alias/wallet", alias_arn):
        assert admin.describe_key(KeyId=ref)["KeyMetadata"]["KeyId"] == meta["KeyId"]
    for ref in (
        "alias/missing",
        "0" * 8 + "-0000-4000-8000-" + "0" * 12,
        "arn:aws:kms:eu-west-1:1:key/x",
    ):
        with pytest.raises(ClientError) as exc:
            admin.describe_key(KeyId=ref)
        assert error_code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        admin.create_alias(AliasName="alias/wallet", TargetKeyId=other["KeyId"])
    assert error_code(exc) == "AlreadyExistsException"
    for bad in ("alias/aws/kms", "wallet", "alias/bad name"):
        with pytest.raises(ClientError) as exc:
            admin.create_alias(AliasName=bad, TargetKeyId=other["KeyId"])
        assert error_code(exc) in ("InvalidAliasNameException", "ValidationException")
    aliases = admin.list_aliases()["Aliases"]
    assert aliases == [
        {"AliasName": "alias/wallet", "AliasArn": alias_arn, "TargetKeyId": meta["KeyId"]}
    ]
    assert admin.list_aliases(KeyId=other["KeyId"])["Aliases"] == []
    keys = admin.list_keys()["Keys"]
    assert {k["KeyId"] for k in keys} == {meta["KeyId"], other["KeyId"]}
    first = admin.list_keys(Limit=1)
    assert first["Truncated"] is True
    assert len(first["Keys"]) == 1
    second = admin.list_keys(Limit=1, Marker=first["NextMarker"])
    assert second["Truncated"] is False
    assert second["Keys"] != first["Keys"]


def test_put_key_policy_validation_and_lockout(
    admin: Any, role: Any, principals: Principals
) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    for bad in ("not json", "[]", '{"Statement": []}', '{"Statement": [{"Effect": "Maybe"}]}'):
        with pytest.raises(ClientError) as exc:
            admin.put_key_policy(KeyId=key_id, PolicyName="default", Policy=bad)
        assert error_code(exc) == "MalformedPolicyDocumentException"
    role_only = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": principals.imds_role().arn},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ]
        }
    )
    with pytest.raises(ClientError) as exc:
        admin.put_key_policy(KeyId=key_id, PolicyName="default", Policy=role_only)
    assert error_code(exc) == "MalformedPolicyDocumentException"
    assert "future" in exc.value.response["Error"]["Message"]
    # The role cannot change the policy of a key it has no rights on.
    with pytest.raises(ClientError) as exc:
        role.put_key_policy(KeyId=key_id, PolicyName="default", Policy=role_only)
    assert error_code(exc) == "AccessDeniedException"
    admin.put_key_policy(
        KeyId=key_id, PolicyName="default", Policy=role_only, BypassPolicyLockoutSafetyCheck=True
    )
    with pytest.raises(ClientError) as exc:
        admin.get_key_policy(KeyId=key_id, PolicyName="default")
    assert error_code(exc) == "AccessDeniedException"
    assert json.loads(role.get_key_policy(KeyId=key_id)["Policy"]) == json.loads(role_only)


def test_create_key_with_policy_checks_lockout(admin: Any, principals: Principals) -> None:
    locked_out = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": principals.administrator().arn},
                    "Action": "kms:Describe*",
                    "Resource": "*",
                }
            ]
        }
    )
    with pytest.raises(ClientError) as exc:
        admin.create_key(Policy=locked_out)
    assert error_code(exc) == "MalformedPolicyDocumentException"
    meta = admin.create_key(Policy=locked_out, BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]
    assert admin.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyId"] == meta["KeyId"]
    valid = attested_policy(principals, [PCR0_GOOD])
    assert admin.create_key(Policy=valid)["KeyMetadata"]["KeyState"] == "Enabled"


def test_disable_enable_and_deletion_states(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    admin.disable_key(KeyId=key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(ClientError) as exc:
        admin.decrypt(CiphertextBlob=blob)
    assert error_code(exc) == "DisabledException"
    admin.enable_key(KeyId=key_id)
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"
    answer = admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert answer["KeyState"] == "PendingDeletion"
    assert answer["PendingWindowInDays"] == 7
    with pytest.raises(ClientError) as exc:
        admin.encrypt(KeyId=key_id, Plaintext=b"x")
    assert error_code(exc) == "KMSInvalidStateException"
    admin.cancel_key_deletion(KeyId=key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


# ------------------------------------------------------------------- cryptography


def test_encrypt_decrypt_binds_key_and_context(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    answer = admin.encrypt(KeyId=key_id, Plaintext=b"payload", EncryptionContext=CONTEXT)
    blob = answer["CiphertextBlob"]
    assert answer["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert b"payload" not in blob
    plain = admin.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    assert plain["Plaintext"] == b"payload"
    assert plain["KeyId"].endswith(key_id)
    assert admin.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT, KeyId=key_id)
    wrong_contexts: list[dict[str, str]] = [
        {},
        {"nitro-wallet:account_id": "6f1c2d3e-0000-4000-8000-000000000002"},
        {**CONTEXT, "extra": "1"},
    ]
    for wrong in wrong_contexts:
        with pytest.raises(ClientError) as exc:
            admin.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)
        assert error_code(exc) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as exc:
        admin.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT, KeyId=other)
    assert error_code(exc) == "IncorrectKeyException"
    for index in (0, 10, len(blob) // 2, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(ClientError) as exc:
            admin.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext=CONTEXT)
        assert error_code(exc) == "InvalidCiphertextException"


def test_generate_data_key_variants(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    for spec, size in (("AES_256", 32), ("AES_128", 16)):
        answer = admin.generate_data_key(KeyId=key_id, KeySpec=spec, EncryptionContext=CONTEXT)
        assert len(answer["Plaintext"]) == size
        again = admin.decrypt(CiphertextBlob=answer["CiphertextBlob"], EncryptionContext=CONTEXT)
        assert again["Plaintext"] == answer["Plaintext"]
    assert len(admin.generate_data_key(KeyId=key_id, NumberOfBytes=7)["Plaintext"]) == 7
    for kwargs in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}):
        with pytest.raises(ClientError) as exc:
            admin.generate_data_key(KeyId=key_id, **kwargs)
        assert error_code(exc) == "ValidationException"
    bare = admin.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256")
    assert "Plaintext" not in bare
    assert len(admin.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 32
    randoms = {admin.generate_random(NumberOfBytes=32)["Plaintext"] for _ in range(3)}
    assert len(randoms) == 3
    assert all(len(r) == 32 for r in randoms)


# ------------------------------------------------- Recipient: the trust chain


def test_recipient_flow_releases_the_key_only_to_the_attested_enclave(
    state: Path, role: Any, locked_key: str
) -> None:
    enclave = Enclave(state, PCR0_GOOD)
    answer = role.generate_data_key(
        KeyId=locked_key,
        KeySpec="AES_256",
        EncryptionContext=CONTEXT,
        Recipient=enclave.recipient(),
    )
    assert "Plaintext" not in answer
    data_key = enclave.unwrap(answer["CiphertextForRecipient"])
    assert len(data_key) == 32
    blob = answer["CiphertextBlob"]

    again = role.decrypt(
        CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=enclave.recipient()
    )
    assert "Plaintext" not in again
    assert enclave.unwrap(again["CiphertextForRecipient"]) == data_key

    # A second enclave with the same image but its own key can unwrap only its own answer.
    twin = Enclave(state, PCR0_GOOD)
    for_twin = role.decrypt(
        CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=twin.recipient()
    )
    assert twin.unwrap(for_twin["CiphertextForRecipient"]) == data_key
    with pytest.raises(CmsError):
        enclave.unwrap(for_twin["CiphertextForRecipient"])

    # Invariant 2: the parent's plain credentials cannot Decrypt.
    with pytest.raises(ClientError) as exc:
        role.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    assert error_code(exc) == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        role.generate_data_key(KeyId=locked_key, KeySpec="AES_256", EncryptionContext=CONTEXT)
    assert error_code(exc) == "AccessDeniedException"


@pytest.mark.parametrize(("pcr0", "label"), [(PCR0_OTHER, "modified image"), (PCR0_DEBUG, "debug")])
def test_wrong_or_debug_pcr0_is_denied(
    state: Path, role: Any, locked_key: str, pcr0: bytes, label: str
) -> None:
    good = Enclave(state, PCR0_GOOD)
    blob = role.generate_data_key(
        KeyId=locked_key, KeySpec="AES_256", EncryptionContext=CONTEXT, Recipient=good.recipient()
    )["CiphertextBlob"]
    intruder = Enclave(state, pcr0)
    with pytest.raises(ClientError) as exc:
        role.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT, Recipient=intruder.recipient())
    assert error_code(exc) == "AccessDeniedException", label
    with pytest.raises(ClientError) as exc:
        role.generate_data_key(KeyId=locked_key, KeySpec="AES_256", Recipient=intruder.recipient())
    assert error_code(exc) == "AccessDeniedException", label


def test_admin_cannot_decrypt_without_attestation(
    state: Path, admin: Any, role: Any, locked_key: str
) -> None:
    enclave = Enclave(state, PCR0_GOOD)
    blob = role.generate_data_key(
        KeyId=locked_key,
        KeySpec="AES_256",
        EncryptionContext=CONTEXT,
        Recipient=enclave.recipient(),
    )["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        admin.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    assert error_code(exc) == "AccessDeniedException"
    assert "explicit deny" in exc.value.response["Error"]["Message"]


def test_invalid_attestation_documents_are_validation_errors(
    state: Path, tmp_path: Path, role: Any, locked_key: str
) -> None:
    foreign = Enclave(tmp_path / "other-state", PCR0_GOOD)  # signed by another CA
    keyless = Enclave(state, PCR0_GOOD)
    document = bytearray(Enclave(state, PCR0_GOOD).document())
    document[-1] ^= 0x01  # breaks the COSE signature
    for doc in (
        foreign.document(),
        keyless.document(with_key=False),
        bytes(document),
        b"\x84garbage",
    ):
        with pytest.raises(ClientError) as exc:
            role.generate_data_key(
                KeyId=locked_key,
                KeySpec="AES_256",
                Recipient={
                    "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                    "AttestationDocument": doc,
                },
            )
        assert error_code(exc) == "ValidationException"


def test_generate_random_for_recipient(state: Path, role: Any) -> None:
    enclave = Enclave(state, PCR0_DEBUG)  # no key policy involved: randomness is not secret
    answer = role.generate_random(NumberOfBytes=48, Recipient=enclave.recipient())
    assert "Plaintext" not in answer
    assert len(enclave.unwrap(answer["CiphertextForRecipient"])) == 48


def test_cms_envelope_shape_and_openssl_interop(tmp_path: Path) -> None:
    """BER as KMS sends it, and an independent decoder (openssl cms) agrees."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    plaintext = os.urandom(3000)  # several 1 KiB chunks
    envelope = build_enveloped_data(plaintext, key.public_key())
    assert envelope[:2] == b"\x30\x80"  # indefinite-length ContentInfo
    assert envelope.endswith(b"\x00\x00")
    assert subject_key_identifier(key.public_key()) in envelope
    assert decrypt_enveloped_data(envelope, key) == plaintext
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "env.ber").write_bytes(envelope)
    result = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "env.ber"),
            "-inkey",
            str(tmp_path / "key.pem"),
            "-binary",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert result.stdout == plaintext
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError):
        decrypt_enveloped_data(envelope, other)


# --------------------------------------------------------- policy table (end to end)


def _policy(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


ADMIN_KEEP = {
    "Sid": "Admin",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:user/nitro-wallet-admin"},
    "Action": ["kms:PutKeyPolicy", "kms:Encrypt", "kms:DescribeKey"],
    "Resource": "*",
}


def _allow(condition: dict[str, Any] | None, principal: Any = None) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": principal or {"AWS": "arn:aws:iam::111122223333:role/nitro-wallet-parent"},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }
    if condition is not None:
        statement["Condition"] = condition
    return statement


IMAGE = "kms:RecipientAttestation:ImageSha384"
POLICY_TABLE: list[tuple[str, list[dict[str, Any]], bytes | None, bool]] = [
    ("no statement for role", [], None, False),
    ("unconditional allow", [_allow(None)], None, True),
    (
        "root delegation grants the role (worst case)",
        [_allow(None, {"AWS": "arn:aws:iam::111122223333:root"})],
        None,
        True,
    ),
    ("other account root", [_allow(None, {"AWS": "arn:aws:iam::444455556666:root"})], None, False),
    (
        "attested allow, no recipient",
        [_allow({"StringEquals": {IMAGE: PCR0_GOOD.hex()}})],
        None,
        False,
    ),
    (
        "attested allow, good pcr0",
        [_allow({"StringEquals": {IMAGE: PCR0_GOOD.hex()}})],
        PCR0_GOOD,
        True,
    ),
    (
        "attested allow, other pcr0",
        [_allow({"StringEquals": {IMAGE: PCR0_GOOD.hex()}})],
        PCR0_OTHER,
        False,
    ),
    (
        "uppercase pcr0 needs IgnoreCase",
        [_allow({"StringEquals": {IMAGE: PCR0_GOOD.hex().upper()}})],
        PCR0_GOOD,
        False,
    ),
    (
        "IgnoreCase accepts uppercase",
        [_allow({"StringEqualsIgnoreCase": {IMAGE: PCR0_GOOD.hex().upper()}})],
        PCR0_GOOD,
        True,
    ),
    (
        "PCR0 key works too",
        [_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0_GOOD.hex()}})],
        PCR0_GOOD,
        True,
    ),
    (
        "list of pcr0s is ORed",
        [_allow({"StringEquals": {IMAGE: [PCR0_OTHER.hex(), PCR0_GOOD.hex()]}})],
        PCR0_GOOD,
        True,
    ),
    (
        "unknown operator never allows",
        [_allow({"StringEqualsMaybe": {IMAGE: PCR0_GOOD.hex()}})],
        PCR0_GOOD,
        False,
    ),
    ("Null false requires attestation", [_allow({"Null": {IMAGE: "false"}})], None, False),
    ("Null false with attestation", [_allow({"Null": {IMAGE: "false"}})], PCR0_OTHER, True),
    (
        "context condition",
        [
            _allow(
                {
                    "StringEquals": {
                        "kms:EncryptionContext:nitro-wallet:account_id": CONTEXT[
                            "nitro-wallet:account_id"
                        ]
                    }
                }
            )
        ],
        None,
        True,
    ),
    (
        "context condition mismatch",
        [_allow({"StringLike": {"kms:EncryptionContext:nitro-wallet:account_id": "x*"}})],
        None,
        False,
    ),
    (
        "deny wins over allow",
        [
            _allow(None),
            {"Effect": "Deny", "Principal": "*", "Action": "kms:Decr*", "Resource": "*"},
        ],
        None,
        False,
    ),
    (
        "deny with unknown operator fails closed",
        [
            _allow(None),
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"NoSuchOp": {"x": "y"}},
            },
        ],
        None,
        False,
    ),
    (
        "deny on negated condition hits absent key",
        [
            _allow(None),
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringNotEquals": {IMAGE: PCR0_GOOD.hex()}},
            },
        ],
        None,
        False,
    ),
    (
        "NotAction excluding Decrypt",
        [{k: v for k, v in _allow(None).items() if k != "Action"} | {"NotAction": "kms:Decrypt"}],
        None,
        False,
    ),
    (
        "resource of another key",
        [
            {
                **_allow(None),
                "Resource": OTHER_KEY_ARN,
            }
        ],
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("statements", "pcr0", "allowed"),
    [row[1:] for row in POLICY_TABLE],
    ids=[row[0] for row in POLICY_TABLE],
)
def test_policy_table_through_the_server(
    state: Path,
    *,
    admin: Any,
    role: Any,
    statements: list[dict[str, Any]],
    pcr0: bytes | None,
    allowed: bool,
) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"k" * 32, EncryptionContext=CONTEXT)[
        "CiphertextBlob"
    ]
    admin.put_key_policy(
        KeyId=key_id, PolicyName="default", Policy=_policy([ADMIN_KEEP, *statements])
    )
    kwargs: dict[str, Any] = {"CiphertextBlob": blob, "EncryptionContext": CONTEXT}
    enclave = Enclave(state, pcr0) if pcr0 is not None else None
    if enclave is not None:
        kwargs["Recipient"] = enclave.recipient()
    if allowed:
        answer = role.decrypt(**kwargs)
        plain = enclave.unwrap(answer["CiphertextForRecipient"]) if enclave else answer["Plaintext"]
        assert plain == b"k" * 32
    else:
        with pytest.raises(ClientError) as exc:
            role.decrypt(**kwargs)
        assert error_code(exc) == "AccessDeniedException"


# ------------------------------------------------------------------ audit log


def test_audit_log_records_decisions_without_secrets(
    state: Path, *, kms: KmsServer, admin: Any, role: Any, locked_key: str, principals: Principals
) -> None:
    enclave = Enclave(state, PCR0_GOOD)
    recipient = enclave.recipient()
    answer = role.generate_data_key(
        KeyId=locked_key, KeySpec="AES_256", EncryptionContext=CONTEXT, Recipient=recipient
    )
    data_key = enclave.unwrap(answer["CiphertextForRecipient"])
    with pytest.raises(ClientError):
        role.decrypt(CiphertextBlob=answer["CiphertextBlob"], EncryptionContext=CONTEXT)
    plain = admin.generate_random(NumberOfBytes=32)["Plaintext"]
    with pytest.raises(ClientError):
        client(kms.url, Credentials("AKIAAAAAAAAAAAAAAAAA", "y" * 40, None)).list_keys()

    log_path = state / "kms" / "audit.log"
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    raw = log_path.read_bytes()
    entries = [json.loads(line) for line in raw.splitlines()]
    generate = [e for e in entries if e["op"] == "GenerateDataKey"]
    assert generate[-1]["decision"] == "allow"
    assert generate[-1]["recipient"] is True
    assert generate[-1]["recipient_pcr0"] == PCR0_GOOD.hex()
    assert generate[-1]["principal"] == principals.imds_role().arn
    assert generate[-1]["key_arn"].endswith(locked_key)
    denied = [e for e in entries if e["op"] == "Decrypt"][-1]
    assert denied["decision"] == "deny"
    assert denied["error"] == "AccessDeniedException"
    assert denied["recipient"] is False
    assert denied["recipient_pcr0"] is None
    assert entries[-1]["error"] == "UnrecognizedClientException"
    assert entries[-1]["principal"] is None
    assert all(
        {"time", "op", "principal", "key_arn", "decision", "error"} <= set(e) for e in entries
    )

    text = raw.decode()
    forbidden = [
        base64.b64encode(data_key).decode(),
        data_key.hex(),
        base64.b64encode(plain).decode(),
        base64.b64encode(recipient["AttestationDocument"]).decode()[:64],
        base64.b64encode(answer["CiphertextBlob"]).decode()[:40],
    ]
    for principal in principals.principals:
        forbidden.append(principal.secret_access_key)
        if principal.session_token:
            forbidden.append(principal.session_token[:40])
    for secret in forbidden:
        assert secret not in text


# ------------------------------------------------ persistence and hostile input


def test_keys_survive_a_restart(state: Path, kms: KmsServer, admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/persist", TargetKeyId=key_id)
    blob = admin.encrypt(KeyId="alias/persist", Plaintext=b"durable", EncryptionContext=CONTEXT)[
        "CiphertextBlob"
    ]
    state_file = state / "kms" / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert b"durable" not in state_file.read_bytes()
    kms.close()
    with serve_kms(state, "127.0.0.1", 0) as again:
        creds = Principals.load(state).admin_credentials()
        fresh = client(again.url, creds)
        answer = fresh.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
        assert answer["Plaintext"] == b"durable"
        assert fresh.describe_key(KeyId="alias/persist")["KeyMetadata"]["KeyId"] == key_id


def test_hostile_input_gets_typed_errors_and_the_server_stays_up(
    kms: KmsServer, principals: Principals, admin: Any
) -> None:
    creds = principals.admin_credentials()
    conn = http.client.HTTPConnection("127.0.0.1", kms.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.putheader("X-Amz-Target", "TrentService.ListKeys")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["__type"] == "RequestEntityTooLargeException"
    conn.close()

    cases: list[tuple[bytes, str, str]] = [
        (b"{not json", "TrentService.ListKeys", "SerializationException"),
        (b"[1, 2]", "TrentService.ListKeys", "SerializationException"),
        (b'{"Limit": NaN}', "TrentService.ListKeys", "SerializationException"),
        (b"{}", "TrentService.Nope", "UnknownOperationException"),
        (b"{}", "Other.ListKeys", "UnknownOperationException"),
        (b'{"Limit": "10"}', "TrentService.ListKeys", "ValidationException"),
        (b'{"NumberOfBytes": true}', "TrentService.GenerateRandom", "ValidationException"),
        (b'{"NumberOfBytes": 5000}', "TrentService.GenerateRandom", "ValidationException"),
        (b'{"KeyId": 5}', "TrentService.DescribeKey", "ValidationException"),
        (b'{"CiphertextBlob": "***"}', "TrentService.Decrypt", "SerializationException"),
        (b'{"CiphertextBlob": "AAAA"}', "TrentService.Decrypt", "InvalidCiphertextException"),
        (
            b'{"KeyId": "x", "Plaintext": "", "EncryptionContext": {"a": 1}}',
            "TrentService.Encrypt",
            "NotFoundException",
        ),
        (
            b'{"NumberOfBytes": 8, "Recipient": "doc"}',
            "TrentService.GenerateRandom",
            "ValidationException",
        ),
        (
            json.dumps(
                {
                    "NumberOfBytes": 8,
                    "Recipient": {
                        "KeyEncryptionAlgorithm": "RSA_1_5",
                        "AttestationDocument": "AAAA",
                    },
                }
            ).encode(),
            "TrentService.GenerateRandom",
            "ValidationException",
        ),
        (b"[" * 100000 + b"]" * 100000, "TrentService.ListKeys", "SerializationException"),
    ]
    for body, target, expected in cases:
        status, answer = send(kms, signed_raw(kms.url, creds, body, target=target))
        assert status == 400, (body[:40], answer)
        assert answer["__type"] == expected, (body[:40], answer)
    assert admin.list_keys()["Keys"] == []  # still serving


def test_main_runs_as_a_process(tmp_path: Path) -> None:
    state = tmp_path / "proc-state"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nitro_sim.kms.server", "--state-dir", str(state), "--port", "0"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=repo,
    )
    try:
        assert proc.stdout is not None
        banner = json.loads(proc.stdout.readline())
        admin_creds = Principals.load(state).admin_credentials()
        kms_client = client(banner["url"], admin_creds)
        assert kms_client.create_key()["KeyMetadata"]["KeyState"] == "Enabled"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
