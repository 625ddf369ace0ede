"""Test doubles for the relay's edges: a framed fake enclave and a tiny IMDSv2.

``FakeEnclave`` is a real server speaking the real protocol (``enclave_app.wire``)
over the real simulated transport (``Transport.unix``), several frames per connection
and idle connections closed after ``idle_timeout_seconds``, as the enclave does. It
answers ``health``, ``attest``, ``generate_account``, ``sign_transaction``,
``sign_message``, ``sign_typed_data``, ``sign_authorization`` and ``sign_batch`` (the
BOARD format: per-item results, envelope errors fail the frame), the audit ops
(``audit_receipts``: none; ``audit_head``) and the readiness ops ``kms_probe``
(``probe_status`` for every allowed key) and ``stats`` (the real answer's shape: a boot
id drawn at each ``start()``, ``warm_keys`` cached keys, nothing counted). Like the
enclave it requires ``auth`` (the caller) on account creation and signing (it checks
its shape only: the real enclave verifies it), seals the account's metadata
(``created_by`` from ``auth``, ``labels``, ``stamp_keys``) and refuses a record sent
back without exactly that metadata. By default the answers are deterministic values
derived from the inputs (a fake signed transaction is structurally valid RLP, so the
relay can decode it); with ``real_keys`` every account has a real secp256k1 key derived
from its id and every signature is made by eth-account, so tests can recover signatures
to the account's address. It checks
what the relay sends the way the enclave would (uuid, allowed key id, credentials
shape, record fields), and can be told to misbehave (delays, raw answers, dropped
requests, a sudden death with ``kill()``). It tests the relay's own behaviour; the
full-stack tests use the real enclave.

``FakeImds`` is an IMDSv2 endpoint (token PUT, role listing, role credentials).
``RelayHarness`` runs the relay in-process on a free loopback port against both.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport
from parent_app.__main__ import build_relay
from parent_app.config import RelayConfig
from parent_app.http_server import RelayServer, wait_until_serving
from parent_app.tokens import SCOPES, TokenRecord, new_token, token_digest, write_records

KEY_ID = "arn:aws:kms:us-east-1:111122223333:key/11111111-2222-3333-4444-555555555555"
SIGN_OPS = ("sign_transaction", "sign_message", "sign_typed_data", "sign_authorization")
PAYLOADS = {
    "sign_transaction": "transaction",
    "sign_message": "message",
    "sign_typed_data": "typed_data",
    "sign_authorization": "authorization",
}
MAX_BATCH = 100
_UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: The bearer token every test relay accepts (name ``TEST_PRINCIPAL``, every scope), and
#: the header ``http_call`` sends by default.
TEST_TOKEN_ID, TEST_TOKEN = new_token()
TEST_PRINCIPAL = "test-client"
#: The header line carrying ``TEST_TOKEN``, for tests that write raw HTTP.
AUTH_LINE = f"Authorization: Bearer {TEST_TOKEN}\r\n".encode()


def short_tempdir() -> Path:
    """AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be too deep."""
    return Path(tempfile.mkdtemp(prefix="nwr-", dir="/tmp"))


def fake_address(account_id: str) -> str:
    digest = hashlib.sha256(b"fake-address|" + account_id.encode()).hexdigest()
    return str(to_checksum_address("0x" + digest[:40]))


def fake_private_key_ciphertext(account_id: str) -> str:
    blob = b"\x01" + hashlib.sha256(b"fake-epk|" + account_id.encode()).digest()
    return base64.b64encode(blob).decode()


def fake_data_key_ciphertext(account_id: str, key_id: str) -> str:
    digest = hashlib.sha256(f"fake-edk|{account_id}|{key_id}".encode()).digest()
    return base64.b64encode(digest).decode()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def fake_signature(address: str, transaction: dict[str, Any]) -> dict[str, str]:
    """A type-2 envelope carrying sha256(address | transaction) as its data (valid RLP)."""
    digest = hashlib.sha256(address.lower().encode() + b"|" + _canonical(transaction)).digest()
    r = int.from_bytes(hashlib.sha256(b"r" + digest).digest(), "big")
    s = int.from_bytes(hashlib.sha256(b"s" + digest).digest(), "big")
    to = bytes.fromhex("11" * 20)
    raw = b"\x02" + rlp.encode([1, 0, 1, 2, 21000, to, 1, digest, [], 1, r, s])
    return {"raw_transaction": "0x" + raw.hex(), "hash": "0x" + keccak(raw).hex()}


def fake_message_signature(address: str, kind: str, payload: Any) -> dict[str, str]:
    """A deterministic 65-byte "signature" and digest over (address, kind, payload)."""
    seed = address.lower().encode() + b"|" + kind.encode() + b"|" + _canonical(payload)
    digest = hashlib.sha256(b"digest|" + seed).digest()
    signature = hashlib.sha256(b"r|" + seed).digest() + hashlib.sha256(b"s|" + seed).digest()
    return {"signature": "0x" + (signature + b"\x1b").hex(), "digest": "0x" + digest.hex()}


def fake_authorization(address: str, authorization: dict[str, Any]) -> dict[str, str]:
    seed = hashlib.sha256(address.lower().encode() + _canonical(authorization)).digest()
    return {
        "chainId": hex(authorization["chainId"])
        if isinstance(authorization["chainId"], int)
        else authorization["chainId"],
        "address": to_checksum_address(authorization["address"]),
        "nonce": hex(authorization["nonce"])
        if isinstance(authorization["nonce"], int)
        else authorization["nonce"],
        "yParity": "0x1",
        "r": hex(int.from_bytes(seed, "big")),
        "s": hex(int.from_bytes(hashlib.sha256(seed).digest(), "big")),
    }


def real_private_key(account_id: str) -> bytes:
    """The secp256k1 key of ``account_id`` in ``real_keys`` mode (a valid scalar)."""
    return hashlib.sha256(b"fake-real-key|" + account_id.encode()).digest()


def real_address(account_id: str) -> str:
    return str(Account.from_key(real_private_key(account_id)).address)


def fake_attestation(nonce: bytes, user_data: bytes) -> str:
    return base64.b64encode(b"fake-attestation|" + nonce + b"|" + user_data).decode()


@dataclass
class FakeEnclave:
    vsock_dir: Path
    cid: int = 16
    port: int = 5000
    allowed_key_ids: tuple[str, ...] = (KEY_ID,)
    max_frame_bytes: int = 4 << 20  # the enclave's default frame cap
    # Misbehaviour knobs, read on every request.
    generate_overrides: dict[str, Any] = field(default_factory=dict)
    # merged into the results of sign_* and attest
    sign_overrides: dict[str, Any] = field(default_factory=dict)
    raw_answer: bytes | None = None  # answer this frame body verbatim
    delay_seconds: float = 0.0
    health_status: str = "ok"
    # What kms_probe answers for every allowed key, and how many keys stats says are cached.
    probe_status: str = "ok"
    probe_interval_ms: int = 30_000
    warm_keys: int = 0
    # Read requests of these ops, then close the connection without answering.
    drop_ops: frozenset[str] = frozenset()
    # Read the next N requests (any op), then close their connection without answering.
    drop_next: int = 0
    # Requests of these ops wait (read, not answered) until ``release`` is set.
    hold_ops: frozenset[str] = frozenset()
    release: threading.Event = field(default_factory=threading.Event)
    # sign_batch answers these results instead of the real ones.
    batch_results_override: list[Any] | None = None
    idle_timeout_seconds: float = 60.0
    real_keys: bool = False
    requests: list[wire.Request] = field(default_factory=list)
    #: The metadata generate_account sealed, by account id (checked on every unlock).
    sealed_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.transport = Transport.unix(self.vsock_dir)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.connections_accepted = 0
        self.boot_id = str(uuid.uuid4())  # a new one at every start()
        self.started_at = time.time()

    def address_for(self, account_id: str) -> str:
        return real_address(account_id) if self.real_keys else fake_address(account_id)

    @property
    def transport_spec(self) -> str:
        return self.transport.spec

    def start(self) -> FakeEnclave:
        self.boot_id = str(uuid.uuid4())
        self.started_at = time.time()
        self._stop.clear()
        self._listener = self.transport.listen(self.cid, self.port)
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down as a process does: stop listening and cut every open connection,
        mid-request or not (``start()`` again comes back with none)."""
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() at once
                self._listener.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self.transport.unix_path(self.cid, self.port).unlink(missing_ok=True)
        self._listener = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    kill = stop

    def ops(self) -> list[str]:
        with self._lock:
            return [request.op for request in self.requests]

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.add(conn)
                self.connections_accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                while not self._stop.is_set() and self._answer_one(conn):
                    pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(conn)

    def _answer_one(self, conn: socket.socket) -> bool:
        """Answer one frame; False when the connection ends (idle, closed, dropped)."""
        body = self._next_frame(conn)
        if body is None:
            return False
        conn.settimeout(10)
        request_id: str | None = None
        try:
            request = wire.parse_request(body)
            request_id = request.request_id
            with self._lock:
                self.requests.append(request)
            if not self._will_answer(request):
                return False
            if self.raw_answer is not None:
                answer = self.raw_answer
            else:
                answer = wire.ok_frame(request_id, self._dispatch(request))
        except EnclaveError as exc:
            answer = wire.error_frame(request_id, exc)
        wire.write_frame(conn, answer)
        return True

    def _next_frame(self, conn: socket.socket) -> bytes | None:
        conn.settimeout(self.idle_timeout_seconds)
        try:
            return wire.read_frame(conn, self.max_frame_bytes)
        except TimeoutError:
            return None  # idle: closed, as the enclave does
        except EnclaveError as exc:
            wire.write_frame(conn, wire.error_frame(None, exc))
            return None

    def _will_answer(self, request: wire.Request) -> bool:
        """Apply the delay and drop knobs; False when this request goes unanswered."""
        if self.delay_seconds and self._stop.wait(self.delay_seconds):
            return False  # stopped mid-request: a dead process answers nothing
        if request.op in self.hold_ops:
            while not self.release.wait(0.05):
                if self._stop.is_set():
                    return False
        with self._lock:
            dropped = self.drop_next > 0
            self.drop_next -= 1 if dropped else 0
        return not (dropped or request.op in self.drop_ops)

    def _dispatch(self, request: wire.Request) -> dict[str, Any]:
        params = request.params
        if request.op == "health":
            return {"status": self.health_status, "version": "fake", "protocol": 1}
        if request.op == "generate_account":
            return self._generate(params)
        if request.op == "attest":
            return {**self._attest(params), **self.sign_overrides}
        if request.op in SIGN_OPS:
            return {**self._sign(request.op, params), **self.sign_overrides}
        if request.op == "sign_batch":
            return self._sign_batch(params)
        return self._readiness_or_audit_op(request.op, params)

    def _readiness_or_audit_op(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        if op in ("audit_receipts", "audit_head"):
            return _audit(op, params)
        if op == "kms_probe":
            self._check_credentials(params.get("credentials"))
            return self._kms_probe()
        if op == "stats":
            return self._stats()
        raise EnclaveError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")

    def _kms_probe(self) -> dict[str, Any]:
        now_ms = round(time.time() * 1000)
        ok = self.probe_status == "ok"
        return {
            "status": self.probe_status,
            "region": "us-east-1",
            "keys": [
                {"key_id": key_id, "status": self.probe_status, "message": "fake probe", "ms": 1}
                for key_id in self.allowed_key_ids
            ],
            "checked_at_ms": now_ms,
            "age_ms": 0,
            "interval_ms": self.probe_interval_ms,
            "last_ok_at_ms": now_ms if ok else None,
        }

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            admitted, connections = len(self.requests), len(self._connections)
        return {
            "boot_id": self.boot_id,
            "start_time_ms": round(self.started_at * 1000),
            "uptime_ms": round((time.time() - self.started_at) * 1000),
            "kms": {"requests": [], "latency_seconds": {}},
            "key_cache": {
                "hits": 0,
                "misses": 0,
                "entries": self.warm_keys,
                "max_entries": 20_000,
                "evictions": {"capacity": 0, "ttl": 0},
            },
            "recipient_keys": {"ready": 0, "size": 0, "generated_inline": 0},
            "server": {
                "admitted": admitted,
                "busy": {"workers": 0, "memory": 0, "connections": 0},
                "connections": connections,
                "in_flight": 1,
            },
            "kms_probe": None,
        }

    def auths(self) -> list[dict[str, Any]]:
        """The ``auth`` params the relay sent, in order."""
        with self._lock:
            return [r.params["auth"] for r in self.requests if "auth" in r.params]

    def _sign_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        """The BOARD's sign_batch: envelope errors fail the frame, item errors the item."""
        if set(params) != {"credentials", "accounts", "items", "auth"}:
            raise EnclaveError(
                ErrorCode.INVALID_PARAMS, "sign_batch takes credentials, accounts, items, auth"
            )
        _check_auth(params["auth"])
        credentials = params["credentials"]
        self._check_credentials(credentials)
        accounts, items = params["accounts"], params["items"]
        if not isinstance(accounts, list) or not 1 <= len(accounts) <= MAX_BATCH:
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "accounts must hold 1 to 100 records")
        ids = [a.get("account_id") if isinstance(a, dict) else None for a in accounts]
        if None in ids or len(set(ids)) != len(ids):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "accounts must be distinct records")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "items must hold 1 to 100 requests")
        for item in items:
            index = item.get("account") if isinstance(item, dict) else None
            if (
                not isinstance(item, dict)
                or item.get("op") not in PAYLOADS
                or not isinstance(index, int)
                or isinstance(index, bool)
                or not 0 <= index < len(accounts)
            ):
                raise EnclaveError(ErrorCode.INVALID_PARAMS, "malformed sign_batch item")
        if self.batch_results_override is not None:
            return {"results": self.batch_results_override}
        results: list[dict[str, Any]] = []
        for item in items:
            op = item["op"]
            name = PAYLOADS[op]
            single: dict[str, Any] = {
                "account": accounts[item["account"]],
                "credentials": credentials,
                "auth": params["auth"],
            }
            if name in item:
                single[name] = item[name]
            try:
                result = {**self._sign(op, single), **self.sign_overrides}
                results.append({"ok": True, "result": result})
            except EnclaveError as exc:
                error = {"code": str(exc.code), "message": exc.message}
                results.append({"ok": False, "error": error})
        return {"results": results}

    def _check_credentials(self, value: Any) -> None:
        if not isinstance(value, dict) or set(value) != {
            "access_key_id",
            "secret_access_key",
            "session_token",
        }:
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "credentials must be an object")
        if not all(isinstance(value[k], str) for k in ("access_key_id", "secret_access_key")):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "credentials must hold strings")

    def _generate(self, params: dict[str, Any]) -> dict[str, Any]:
        account_id, key_id = params.get("account_id"), params.get("key_id")
        if not isinstance(account_id, str) or not _UUID_RE.match(account_id):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "account_id must be a uuid")
        if key_id not in self.allowed_key_ids:
            raise EnclaveError(ErrorCode.KMS_KEY_NOT_ALLOWED, "key id is not allowed")
        self._check_credentials(params.get("credentials"))
        auth = _check_auth(params.get("auth"))
        unknown = set(params) - {"account_id", "key_id", "credentials", "auth", *_CREATE_FIELDS}
        if unknown:
            raise EnclaveError(ErrorCode.INVALID_PARAMS, f"unknown params {sorted(unknown)}")
        principal = auth["relay"]["principal"] if "relay" in auth else "stamp-key"
        kind = "relay" if "relay" in auth else "stamp"
        metadata = {name: params[name] for name in _CREATE_FIELDS if name in params}
        metadata["created_by"] = f"{kind}:{principal}"
        result: dict[str, Any] = {
            "account_id": account_id,
            "address": self.address_for(account_id),
            "key_id": key_id,
            "encrypted_private_key": fake_private_key_ciphertext(account_id),
            "encrypted_data_key": fake_data_key_ciphertext(account_id, str(key_id)),
            **metadata,
        }
        result.update(self.generate_overrides)
        with self._lock:
            self.sealed_metadata[account_id] = metadata
        return result

    def _attest(self, params: dict[str, Any]) -> dict[str, Any]:
        if not set(params) <= {"nonce", "user_data"}:
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "unknown attest params")
        values = []
        for name in ("nonce", "user_data"):
            value = params.get(name, "")
            if not isinstance(value, str):
                raise EnclaveError(ErrorCode.INVALID_PARAMS, f"{name} must be base64")
            decoded = base64.b64decode(value, validate=True)
            if len(decoded) > 512:
                raise EnclaveError(ErrorCode.INVALID_PARAMS, f"{name} exceeds 512 bytes")
            values.append(decoded)
        return {"attestation_document": fake_attestation(values[0], values[1])}

    def _unlock(self, params: dict[str, Any]) -> str:
        """Check the account record as the enclave would; the address it signs for."""
        self._check_credentials(params.get("credentials"))
        _check_auth(params.get("auth"))
        account = params.get("account")
        if not isinstance(account, dict):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "account must be an object")
        account_id = account.get("account_id")
        if not isinstance(account_id, str) or not _UUID_RE.match(account_id):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "account.account_id must be a uuid")
        key_id = str(account.get("key_id"))
        if account.get("encrypted_private_key") != fake_private_key_ciphertext(account_id):
            raise EnclaveError(ErrorCode.CIPHERTEXT_INVALID, "private key ciphertext is invalid")
        if account.get("encrypted_data_key") != fake_data_key_ciphertext(account_id, key_id):
            raise EnclaveError(ErrorCode.CIPHERTEXT_INVALID, "data key ciphertext is invalid")
        if account.get("address") != self.address_for(account_id):
            raise EnclaveError(ErrorCode.ADDRESS_MISMATCH, "key does not derive the address")
        with self._lock:
            sealed = self.sealed_metadata.get(account_id)
        sent = {k: v for k, v in account.items() if k in (*_CREATE_FIELDS, "created_by")}
        if sealed is not None and sent != sealed:  # the real enclave's GCM binding
            raise EnclaveError(ErrorCode.CIPHERTEXT_INVALID, "account metadata was changed")
        return account_id

    def _sign(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """Check the payload as the enclave would, then sign (real or deterministic)."""
        account_id = self._unlock(params)
        address = self.address_for(account_id)
        payload: Any = params.get(PAYLOADS[op])
        _check_payload(op, payload, address)
        if self.real_keys:
            return _real_sign(op, real_private_key(account_id), payload)
        if op == "sign_message":
            return fake_message_signature(address, "message", payload)
        if op == "sign_typed_data":
            return fake_message_signature(address, "typed_data", payload)
        if op == "sign_authorization":
            return {"authorization": fake_authorization(address, payload)}
        return fake_signature(address, payload)


_CREATE_FIELDS = ("labels", "stamp_keys")


def _audit(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """The audit ops: no receipt to collect, and a (fake) head for the nonce."""
    if op == "audit_receipts":
        return {"segment": "00" * 16, "receipts": [], "sealed": 0, "next": 1}
    if op == "audit_head":
        nonce = params.get("nonce")
        return {"seg": "00" * 16, "n": 0, "hash": "00" * 32, "nonce": nonce, "sig": "AA"}
    raise EnclaveError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")


def _check_auth(auth: Any) -> dict[str, Any]:
    """The ``auth`` param's shape (BOARD-h5); the real enclave verifies its content."""
    if not isinstance(auth, dict):
        raise EnclaveError(ErrorCode.UNAUTHENTICATED, "auth is required")
    if "stamp" in auth:
        request = auth.get("request")
        if not isinstance(auth["stamp"], str) or not isinstance(request, dict):
            raise EnclaveError(ErrorCode.UNAUTHENTICATED, "a stamp needs the request")
        if set(request) != {"method", "path", "body"}:
            raise EnclaveError(ErrorCode.UNAUTHENTICATED, "request is method, path, body")
        return auth
    relay = auth.get("relay")
    if not isinstance(relay, dict) or set(relay) != {"principal", "scopes"}:
        raise EnclaveError(ErrorCode.UNAUTHENTICATED, "auth needs a stamp or a relay identity")
    if not set(auth) <= {"relay", "approvals", "request"}:
        raise EnclaveError(ErrorCode.UNAUTHENTICATED, "unknown auth fields")
    return auth


def _check_payload(op: str, payload: Any, address: str) -> None:
    name = PAYLOADS[op]
    if op == "sign_message":
        if not isinstance(payload, str):
            raise EnclaveError(ErrorCode.INVALID_PARAMS, "message must be a string")
        if payload.startswith("fake_error:"):
            code = payload.removeprefix("fake_error:")
            raise EnclaveError(ErrorCode(code), f"injected {code}")
        return
    if not isinstance(payload, dict):
        raise EnclaveError(ErrorCode.INVALID_PARAMS, f"{name} must be an object")
    injected = payload.get("fake_error")
    if isinstance(injected, str):
        raise EnclaveError(ErrorCode(injected), f"injected {injected}")
    if op == "sign_authorization" and set(payload) != {"chainId", "address", "nonce"}:
        raise EnclaveError(ErrorCode.INVALID_PARAMS, "authorization fields")
    if op != "sign_transaction":
        return
    value = payload.get("value")
    if isinstance(value, str) and value.isdigit():  # as the real enclave words it
        raise EnclaveError(
            ErrorCode.INVALID_PARAMS,
            "value: decimal strings are not accepted; "
            "amounts are wei as integers or 0x-hex strings",
        )
    sender = payload.get("from")
    if isinstance(sender, str) and sender.lower() != address.lower():
        raise EnclaveError(
            ErrorCode.INVALID_PARAMS, "from does not match the signing account's address"
        )


def _real_sign(op: str, key: bytes, payload: Any) -> dict[str, Any]:
    """A real signature by eth-account (an implementation independent of the enclave's)."""
    try:
        if op == "sign_transaction":
            if not isinstance(payload, dict):
                raise TypeError("transaction must be an object")
            fields = {k: v for k, v in payload.items() if k != "from"}
            signed_tx = Account.sign_transaction(fields, key)
            return {
                "raw_transaction": "0x" + bytes(signed_tx.raw_transaction).hex(),
                "hash": "0x" + bytes(signed_tx.hash).hex(),
            }
        if op == "sign_message":
            if not isinstance(payload, str):
                raise TypeError("message must be a string")
            message = (
                encode_defunct(hexstr=payload)
                if payload.startswith("0x")
                else encode_defunct(text=payload)
            )
            signed = Account.sign_message(message, key)
        elif op == "sign_typed_data":
            signed = Account.sign_message(encode_typed_data(full_message=payload), key)
        else:
            auth = Account.from_key(key).sign_authorization(payload)
            return {
                "authorization": {
                    "chainId": hex(auth.chain_id),
                    "address": to_checksum_address(auth.address),
                    "nonce": hex(auth.nonce),
                    "yParity": hex(auth.y_parity),
                    "r": hex(auth.r),
                    "s": hex(auth.s),
                }
            }
    except EnclaveError:
        raise
    except Exception as exc:
        raise EnclaveError(ErrorCode.INVALID_PARAMS, f"{op}: {type(exc).__name__}") from None
    return {
        "signature": "0x" + bytes(signed.signature).hex(),
        "digest": "0x" + bytes(signed.message_hash).hex(),
    }


# -- IMDSv2 -------------------------------------------------------------------------

ROLE_NAME = "nitro-wallet-parent"


@dataclass
class ImdsState:
    access_key_id: str = field(default_factory=lambda: "ASIA" + secrets.token_hex(8).upper())
    secret_access_key: str = field(default_factory=lambda: "FAKESECRET" + secrets.token_hex(16))
    session_token: str = field(default_factory=lambda: "FAKETOKEN" + secrets.token_hex(24))
    lifetime: timedelta = timedelta(hours=6)
    credential_fetches: int = 0
    refuse_tokens: bool = False  # behave like an IMDS with IMDSv2 switched off
    tokens: set[str] = field(default_factory=set)

    def rotate(self) -> None:
        self.access_key_id = "ASIA" + secrets.token_hex(8).upper()
        self.secret_access_key = "FAKESECRET" + secrets.token_hex(16)
        self.session_token = "FAKETOKEN" + secrets.token_hex(24)

    @property
    def secrets(self) -> list[str]:
        return [self.secret_access_key, self.session_token]


class _ImdsHandler(BaseHTTPRequestHandler):
    server: _ImdsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            self._answer(404, "not found")
            return
        if self.server.state.refuse_tokens:
            self._answer(403, "forbidden")
            return
        if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
            self._answer(400, "missing ttl")
            return
        token = secrets.token_urlsafe(32)
        self.server.state.tokens.add(token)
        self._answer(200, token)

    def do_GET(self) -> None:
        state = self.server.state
        token_ok = self.headers.get("X-aws-ec2-metadata-token") in state.tokens
        if not token_ok and not state.refuse_tokens:
            self._answer(401, "unauthorized")  # IMDSv2 only
            return
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            self._answer(200, ROLE_NAME)
        elif self.path == base + ROLE_NAME:
            state.credential_fetches += 1
            expiration = datetime.now(UTC) + state.lifetime
            document = {
                "Code": "Success",
                "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Type": "AWS-HMAC",
                "AccessKeyId": state.access_key_id,
                "SecretAccessKey": state.secret_access_key,
                "Token": state.session_token,
                "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self._answer(200, json.dumps(document), "application/json")
        else:
            self._answer(404, "not found")


class _ImdsServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ImdsState


class FakeImds:
    def __init__(self) -> None:
        self.state = ImdsState()
        self._server = _ImdsServer(("127.0.0.1", 0), _ImdsHandler)
        self._server.state = self.state
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeImds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the relay in-process -------------------------------------------------------------


def write_tokens(path: Path, scopes: frozenset[str] = frozenset(SCOPES)) -> Path:
    """A tokens file holding ``TEST_TOKEN`` (only its digest) with ``scopes``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = TokenRecord(
        TEST_TOKEN_ID, TEST_PRINCIPAL, scopes, token_digest(TEST_TOKEN), "2026-11-30T00:00:00Z"
    )
    write_records(path, {TEST_TOKEN_ID: record})
    return path


def auth_sections(state_dir: Path) -> dict[str, Any]:
    """[auth] (the test token) and [audit] (a log in ``state_dir``) of a test relay."""
    return {
        "auth": {"tokens_file": str(write_tokens(state_dir / "tokens.json"))},
        "audit": {"log_path": str(state_dir / "audit.jsonl")},
    }


def relay_config(
    *,
    vsock_spec: str,
    imds_endpoint: str,
    sqlite_path: Path,
    port: int = 0,
    enclave_timeout: float = 3,
    enclave: dict[str, Any] | None = None,
    **relay: Any,
) -> dict[str, Any]:
    return {
        "relay": {"listen_host": "127.0.0.1", "listen_port": port, **relay},
        "enclave": {
            "transport": vsock_spec,
            "cid": 16,
            "port": 5000,
            "timeout_seconds": enclave_timeout,
            **(enclave or {}),
        },
        "kms": {"key_id": KEY_ID, "region": "us-east-1"},
        "storage": {"backend": "sqlite", "sqlite_path": str(sqlite_path)},
        "credentials": {"source": "imds", "imds_endpoint": imds_endpoint},
        **auth_sections(sqlite_path.parent),
    }


class RelayHarness:
    """The relay on a free loopback port, serving in a thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = RelayConfig.from_mapping(config)
        self.server: RelayServer = build_relay(self.config)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        wait_until_serving(self.server)

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@dataclass
class HttpAnswer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        code: str = self.json()["error"]["code"]
        return code


def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    token: str | None = TEST_TOKEN,
) -> HttpAnswer:
    """One request; it carries ``token`` as a bearer token unless ``token`` is None or
    ``headers`` bring their own credentials (Authorization or X-Stamp)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = dict(headers or {})
        own = {name.lower() for name in all_headers} & {"authorization", "x-stamp"}
        if token is not None and not own:
            all_headers["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        return HttpAnswer(response.status, response.headers, response.read())
    finally:
        conn.close()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The port stays bound (never listening) until the block ends, so no other process
    can take it in between, as it could a port probed free and released.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


# -- the whole relay against the fakes ---------------------------------------------------


@dataclass
class FakeStack:
    """The relay in-process, against a FakeEnclave and a FakeImds."""

    enclave: FakeEnclave
    imds: FakeImds
    relay: RelayHarness
    db: Path
    vsock: Path

    @classmethod
    def start(cls, state_dir: Path, *, real_keys: bool = False, **relay: Any) -> FakeStack:
        vsock = short_tempdir()
        enclave = FakeEnclave(vsock, real_keys=real_keys).start()
        imds = FakeImds().start()
        db = state_dir / "state" / "accounts.db"
        config = relay_config(
            vsock_spec=enclave.transport_spec, imds_endpoint=imds.endpoint, sqlite_path=db, **relay
        )
        return cls(enclave, imds, RelayHarness(config), db, vsock)

    def stop(self) -> None:
        self.relay.stop()
        self.imds.stop()
        self.enclave.stop()
        remove_tree(self.vsock)

    @property
    def port(self) -> int:
        return self.relay.port

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> HttpAnswer:
        return http_call(self.port, method, path, body, **kwargs)

    def create(self) -> dict[str, Any]:
        answer = self.call("POST", "/v1/accounts", {})
        assert answer.status == 201, answer.body
        result: dict[str, Any] = answer.json()
        return result

    def metrics(self) -> str:
        return self.call("GET", "/metrics").body.decode()
