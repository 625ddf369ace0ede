"""Attested KMS client: data keys released only to this enclave's attestation.

Every call takes an ephemeral RSA-2048 key pair from ``RecipientKeyPool`` (pre-generated;
one key serves at most ``kms.recipient_key_uses`` calls within
``kms.recipient_key_max_age_seconds``), asks the NSM for a new attestation document
carrying its public key, and sends that document as KMS's ``Recipient``. KMS checks
the document and the key policy's ``kms:RecipientAttestation:*`` conditions, then
returns the secret only inside ``CiphertextForRecipient`` (CMS EnvelopedData to our
ephemeral key), never as ``Plaintext``. The parent, relaying the TLS stream, sees
nothing usable.

At most ``max_concurrent_calls`` KMS requests are in flight at once; a call that
cannot get a slot within the KMS timeout fails with ``server_busy``. Each boto3
client keeps that many HTTP connections alive, so calls reuse their TLS sessions
through the in-enclave forwarder and the parent's vsock-proxy.

An answer is used only when it arrived whole and has the operation's fields: botocore
reads a body without checking it against ``Content-Length`` and parses an empty one
as ``{}``, so a KMS endpoint (or a proxy hop) that goes away after its headers would
look like a success with nothing in it. A cut or malformed answer is KMS being
unavailable (``kms_unavailable``: the caller retries); ``kms_bad_response`` is kept
for a whole, well-formed answer that is wrong (a key this enclave does not use, a
plaintext key, an envelope it cannot open).

Only pinned keys are used (``enclave_app.key_ids``): GenerateDataKey takes a pinned key
as named; Decrypt of a record made in another region goes through this region's
replica of its multi-Region key when that replica is pinned. Every request is counted
by operation and outcome, with its latency, in ``enclave_app.stats``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_app.cms import CmsError, decrypt_enveloped_data
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_ids import PinnedKeys
from enclave_app.nsm import Nsm
from enclave_app.recipient_keys import RecipientKeyPool
from enclave_app.stats import EnclaveStats, kms_outcome

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_kms.type_defs import RecipientInfoTypeDef

_CLIENT_CACHE_SIZE = 4
GENERATE_DATA_KEY = "GenerateDataKey"
DECRYPT = "Decrypt"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    ciphertext_blob: bytes
    key_arn: str


class KmsCallError(EnclaveError):
    """A KMS request that failed; ``outcome`` is the counted label (the KMS error code,
    ``other``, ``timeout`` or ``unreachable``)."""

    def __init__(self, code: ErrorCode, message: str, outcome: str) -> None:
        super().__init__(code, message)
        self.outcome = outcome


class AttestedKms:
    def __init__(
        self,
        nsm: Nsm,
        endpoint_url: str,
        region: str,
        allowed_key_ids: tuple[str, ...],
        timeout_seconds: int = 10,
        describe_measurements: Callable[[bytes], str] | None = None,
        *,
        max_concurrent_calls: int = 8,
        recipient_keys: RecipientKeyPool | None = None,
        stats: EnclaveStats | None = None,
    ) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        self._nsm = nsm
        self._endpoint_url = endpoint_url
        self._region = region
        self._key_ids = tuple(dict.fromkeys(allowed_key_ids))
        self._pinned = PinnedKeys(self._key_ids, region)
        self._stats = stats or EnclaveStats()
        self._describe = describe_measurements
        self._timeout = timeout_seconds
        self._config = Config(
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max_concurrent_calls,
            tcp_keepalive=True,
        )
        self._slots = threading.BoundedSemaphore(max_concurrent_calls)
        self._recipient_keys = recipient_keys or RecipientKeyPool(0)
        self._clients: OrderedDict[tuple[str, str, str | None], KMSClient] = OrderedDict()
        self._clients_lock = threading.Lock()
        self._client_creation = threading.Lock()

    @property
    def region(self) -> str:
        return self._region

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The pinned key ids, in configuration order."""
        return self._key_ids

    def recipient_key_level(self) -> dict[str, int]:
        return self._recipient_keys.level()

    def generate_data_key(
        self, key_id: str, context: Mapping[str, str], credentials: AwsCredentials
    ) -> DataKey:
        self._pinned.require(key_id)
        private_key, document = self._attested_recipient()
        response = self._call(
            GENERATE_DATA_KEY,
            credentials,
            document,
            ("KeyId", "CiphertextForRecipient", "CiphertextBlob"),
            lambda client, recipient: client.generate_data_key(
                KeyId=key_id,
                KeySpec="AES_256",
                EncryptionContext=dict(context),
                Recipient=recipient,
            ),
        )
        key_arn = self._returned_key(response)
        plaintext = self._unwrap(response, private_key)
        return DataKey(
            plaintext=plaintext, ciphertext_blob=response["CiphertextBlob"], key_arn=key_arn
        )

    def decrypt(
        self,
        ciphertext_blob: bytes,
        key_id: str,
        context: Mapping[str, str],
        credentials: AwsCredentials,
    ) -> bytes:
        """The data key of ``ciphertext_blob``, made under ``key_id`` (the record's key:
        a multi-Region key of another region is called through its pinned replica here)."""
        regional_key_id = self._pinned.resolve(key_id)
        private_key, document = self._attested_recipient()
        response = self._call(
            DECRYPT,
            credentials,
            document,
            ("KeyId", "CiphertextForRecipient"),
            lambda client, recipient: client.decrypt(
                CiphertextBlob=ciphertext_blob,
                KeyId=regional_key_id,
                EncryptionContext=dict(context),
                Recipient=recipient,
            ),
        )
        self._returned_key(response)
        return self._unwrap(response, private_key)

    def _attested_recipient(self) -> tuple[rsa.RSAPrivateKey, bytes]:
        private_key = self._recipient_keys.take()
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document = self._nsm.attest(user_data=None, nonce=None, public_key=public_der)
        return private_key, document

    def _call(
        self,
        operation_name: str,
        credentials: AwsCredentials,
        document: bytes,
        answered: tuple[str, ...],
        operation: Callable[[KMSClient, RecipientInfoTypeDef], Mapping[str, Any]],
    ) -> Mapping[str, Any]:
        """``operation``'s answer, which has every field of ``answered`` (a key ARN,
        CiphertextBlob and CiphertextForRecipient: non-empty, of their type)."""
        recipient: RecipientInfoTypeDef = {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": document,
        }
        client = self._client(credentials)
        if not self._slots.acquire(timeout=self._timeout):
            raise EnclaveError(
                ErrorCode.SERVER_BUSY, "every KMS call slot stayed busy; retry later"
            )
        outcome = "ok"
        started = time.monotonic()
        try:
            response = operation(client, recipient)
            if response.get("Plaintext"):  # whole and well-formed, and wrong
                raise KmsCallError(
                    ErrorCode.KMS_BAD_RESPONSE,
                    "KMS sent a plaintext key to an attested request",
                    outcome,
                )
            for name in answered:
                _answered(response, name)
            return response
        except KmsCallError as exc:
            outcome = exc.outcome
            raise
        except ClientError as exc:
            error = self._translate(exc, document)
            outcome = error.outcome
            raise error from None
        except BotoCoreError as exc:
            timed_out = isinstance(exc, ConnectTimeoutError | ReadTimeoutError)
            outcome = "timeout" if timed_out else "unreachable"
            raise KmsCallError(
                ErrorCode.KMS_UNAVAILABLE, f"KMS unreachable: {type(exc).__name__}", outcome
            ) from None
        except (TypeError, ValueError) as exc:  # botocore could not parse the answer's fields
            outcome = "unreachable"
            raise KmsCallError(
                ErrorCode.KMS_UNAVAILABLE, f"KMS answer malformed: {type(exc).__name__}", outcome
            ) from None
        finally:
            self._slots.release()
            self._stats.kms_requests.add(operation_name, outcome)
            self._stats.kms_latency.observe(operation_name, time.monotonic() - started)

    def _translate(self, exc: ClientError, document: bytes) -> KmsCallError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        outcome = kms_outcome(code)
        if code == "AccessDeniedException":
            measured = f" ({self._describe(document)})" if self._describe else ""
            return KmsCallError(
                ErrorCode.KMS_ATTESTATION_DENIED,
                "KMS denied the attested request: the key policy does not allow this "
                f"enclave's attestation{measured}",
                outcome,
            )
        if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
            return KmsCallError(
                ErrorCode.CIPHERTEXT_INVALID,
                f"KMS refused the data key for this account ({code})",
                outcome,
            )
        return KmsCallError(ErrorCode.KMS_UNAVAILABLE, f"KMS call failed: {code}", outcome)

    def _returned_key(self, response: Mapping[str, Any]) -> str:
        key_arn: str = response["KeyId"]
        if not self._pinned.answered(key_arn):
            raise EnclaveError(
                ErrorCode.KMS_BAD_RESPONSE, "KMS answered with a key this enclave does not use"
            )
        return key_arn

    @staticmethod
    def _unwrap(response: Mapping[str, Any], private_key: rsa.RSAPrivateKey) -> bytes:
        envelope: bytes = response["CiphertextForRecipient"]
        try:
            return decrypt_enveloped_data(envelope, private_key)
        except CmsError as exc:
            raise EnclaveError(
                ErrorCode.KMS_BAD_RESPONSE, f"CiphertextForRecipient unusable: {exc}"
            ) from None

    def _client(self, credentials: AwsCredentials) -> KMSClient:
        cache_key = (
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
        )
        with self._clients_lock:
            client = self._clients.get(cache_key)
            if client is not None:
                self._clients.move_to_end(cache_key)
                return client
        # One creation at a time: concurrent cold unlocks with new credentials share
        # one client (and its connection pool) instead of each building their own.
        with self._client_creation:
            with self._clients_lock:
                client = self._clients.get(cache_key)
            if client is not None:
                return client
            client = boto3.session.Session().client(
                "kms",
                region_name=self._region,
                endpoint_url=self._endpoint_url,
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token,
                config=self._config,
            )
            client.meta.events.register(
                "before-parse.kms", functools.partial(_refuse_cut_answers, self._endpoint_url)
            )
            with self._clients_lock:
                self._clients[cache_key] = client
                evicted = []
                while len(self._clients) > _CLIENT_CACHE_SIZE:
                    evicted.append(self._clients.popitem(last=False)[1])
            for old in evicted:
                # Free its kept-alive connections (and the vsock-proxy workers behind them).
                old.close()
            return client


#: The type of each field an answer must carry (``_answered``).
_FIELD_TYPES: dict[str, type] = {
    "KeyId": str,
    "CiphertextBlob": bytes,
    "CiphertextForRecipient": bytes,
}


def _answered(response: Mapping[str, Any], name: str) -> None:
    """A field the operation always answers: absent, empty or mistyped, the answer is
    malformed, which is KMS being unavailable, never a wrong answer."""
    value = response.get(name)
    if not isinstance(value, _FIELD_TYPES[name]) or not value:
        raise KmsCallError(
            ErrorCode.KMS_UNAVAILABLE, f"KMS answer malformed: no {name}", "unreachable"
        )


def _refuse_cut_answers(endpoint_url: str, response_dict: Mapping[str, Any], **_: Any) -> None:
    """botocore's ``before-parse`` hook: an answer whose body is not exactly its
    ``Content-Length`` long was cut in transit (urllib3 checks chunked framing itself,
    and botocore asks it not to check the length)."""
    headers = response_dict["headers"]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return
    length = headers.get("content-length", "")
    if not length.isdigit() or int(length) != len(response_dict["body"]):
        raise ConnectionClosedError(endpoint_url=endpoint_url)
