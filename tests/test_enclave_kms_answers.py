"""What the enclave makes of a KMS answer that is cut short or malformed (issue 9's
"KMS stopped under load" finding: ``500 kms_bad_response`` instead of a 503).

botocore reads a response body without checking it against ``Content-Length`` (it asks
urllib3 for ``enforce_content_length=False``), and the JSON parser turns an empty body
into ``{}``. A KMS endpoint that dies after its status line and headers (a stopped
process, a vsock-proxy or network cut: the pipes forward the end of the stream as a
clean close) therefore looked like a successful answer with no key in it.

Between the enclave's KMS client and the real local KMS sits a proxy that forwards each
request whole and then mangles the answer. An answer that is cut short (anywhere: in the
headers, after them, in the body) or that lacks what the operation returns is KMS
being unavailable: ``kms_unavailable`` (503, retried by the caller). Only a complete,
well-formed answer that is wrong (another key, a plaintext key, a CMS envelope this
enclave cannot open) is ``kms_bad_response``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from enclave_app import envelope, validation
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.kms import AttestedKms
from enclave_app.nsm import SocketNsm
from tests.enclave_rig import EnclaveRig, running_rig

Mangle = Callable[[bytes, bytes], bytes]


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP message (head, body) framed by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return head + b"\r\n\r\n", body


class ManglingProxy:
    """Forwards each request whole to the KMS, answers ``mangle(head, body)`` of KMS's
    answer, then closes the connection (a clean FIN, as the vsock pipes forward an end
    of stream)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mangle: Mangle = lambda head, body: head + body
        self.answered = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=10) as kms:
            client.settimeout(10)
            try:
                head, body = _read_message(client)
            except (ConnectionError, TimeoutError):
                return
            kms.sendall(head + body)
            answer_head, answer_body = _read_message(kms)
            self.answered += 1  # before the answer leaves: the client may check at once
            client.sendall(self.mangle(answer_head, answer_body))
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[EnclaveRig]:
    with running_rig(kms_concurrency=2) as running:
        yield running


@pytest.fixture
def proxy(rig: EnclaveRig) -> Iterator[ManglingProxy]:
    started = ManglingProxy((rig.kms.host, rig.kms.port))
    yield started
    started.close()


def _client(rig: EnclaveRig, proxy: ManglingProxy) -> AttestedKms:
    return AttestedKms(
        SocketNsm(rig.root / "nsm.sock"),
        endpoint_url=proxy.url,
        region="us-east-1",
        allowed_key_ids=(rig.key_arn,),
        timeout_seconds=5,
        max_concurrent_calls=2,
    )


OPERATIONS = ("GenerateDataKey", "Decrypt")


def _through(rig: EnclaveRig, proxy: ManglingProxy, mangle: Mangle) -> dict[str, ErrorCode | str]:
    """The outcome of each of ``OPERATIONS`` when ``proxy`` mangles KMS's answers."""
    proxy.mangle = mangle
    return _both_operations(rig, _client(rig, proxy))


def _both_operations(rig: EnclaveRig, kms: AttestedKms) -> dict[str, ErrorCode | str]:
    """The outcome of a GenerateDataKey and of a Decrypt through ``kms``."""
    credentials = validation.credentials(rig.credentials)
    account = rig.create_account()  # straight to the KMS, not through the proxy
    context = envelope.encryption_context(account["account_id"])
    calls: dict[str, Callable[[], object]] = {
        "GenerateDataKey": lambda: kms.generate_data_key(rig.key_arn, context, credentials),
        "Decrypt": lambda: kms.decrypt(
            base64.b64decode(account["encrypted_data_key"]), rig.key_arn, context, credentials
        ),
    }
    outcomes: dict[str, ErrorCode | str] = {}
    for name, call in calls.items():
        try:
            call()
            outcomes[name] = "ok"
        except EnclaveError as exc:
            outcomes[name] = exc.code
    return outcomes


def _cut_after_head(head: bytes, body: bytes) -> bytes:
    return head


def _cut_in_the_body(head: bytes, body: bytes) -> bytes:
    return head + body[: len(body) // 2]


def _cut_before_content_length(head: bytes, body: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(b"content-length")]
    return b"\r\n".join(kept[:2]) + b"\r\n"  # the status line and one header, then the end


def _cut_in_the_status_line(head: bytes, body: bytes) -> bytes:
    return head[:9]


def _empty_200(head: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _answer(status: int, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _without(field: str) -> Mangle:
    def mangle(head: bytes, body: bytes) -> bytes:
        payload = json.loads(body)
        payload.pop(field, None)
        return _answer(200, payload)

    return mangle


def _replaced(field: str, value: object) -> Mangle:
    def mangle(head: bytes, body: bytes) -> bytes:
        return _answer(200, {**json.loads(body), field: value})

    return mangle


def _plaintext_instead(head: bytes, body: bytes) -> bytes:
    payload = json.loads(body)
    del payload["CiphertextForRecipient"]
    return _answer(200, {**payload, "Plaintext": base64.b64encode(b"k" * 32).decode()})


def test_a_complete_answer_through_the_proxy_works(rig: EnclaveRig, proxy: ManglingProxy) -> None:
    assert _both_operations(rig, _client(rig, proxy)) == {"GenerateDataKey": "ok", "Decrypt": "ok"}
    assert proxy.answered == 2


@pytest.mark.parametrize(
    "mangle",
    [
        _cut_after_head,
        _cut_in_the_body,
        _cut_before_content_length,
        _cut_in_the_status_line,
        _empty_200,
        _without("KeyId"),
        _without("CiphertextForRecipient"),
        _replaced("KeyId", 7),
        _replaced("CiphertextForRecipient", None),
    ],
    ids=[
        "cut after the head",
        "cut in the body",
        "cut before Content-Length",
        "cut in the status line",
        "empty 200",
        "no KeyId",
        "no CiphertextForRecipient",
        "KeyId a number",
        "CiphertextForRecipient null",
    ],
)
def test_a_cut_or_malformed_answer_is_kms_unavailable(
    rig: EnclaveRig, proxy: ManglingProxy, mangle: Mangle
) -> None:
    assert _through(rig, proxy, mangle) == dict.fromkeys(OPERATIONS, ErrorCode.KMS_UNAVAILABLE)


def test_a_data_key_answer_without_its_ciphertext_blob_is_kms_unavailable(
    rig: EnclaveRig, proxy: ManglingProxy
) -> None:
    outcomes = _through(rig, proxy, _without("CiphertextBlob"))
    assert outcomes["GenerateDataKey"] == ErrorCode.KMS_UNAVAILABLE


@pytest.mark.parametrize(
    "mangle",
    [
        _replaced("KeyId", "arn:aws:kms:us-east-1:111122223333:key/not-pinned"),
        _replaced("Plaintext", base64.b64encode(b"k" * 32).decode()),
        _plaintext_instead,
        _replaced("CiphertextForRecipient", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()),
    ],
    ids=[
        "a key not pinned",
        "a plaintext key too",
        "a plaintext key instead",
        "a CMS envelope not for this enclave",
    ],
)
def test_a_complete_but_wrong_answer_is_kms_bad_response(
    rig: EnclaveRig, proxy: ManglingProxy, mangle: Mangle
) -> None:
    assert _through(rig, proxy, mangle) == dict.fromkeys(OPERATIONS, ErrorCode.KMS_BAD_RESPONSE)
