"""The simulated Nitro Secure Module.

Answers the real NSM CBOR messages (see ``enclave_app.nsm``) and issues attestation
documents shaped exactly like AWS's: an untagged COSE_Sign1 signed with ES384 by a
short-lived leaf from ``SimCa``, with the full field set (module_id, digest,
timestamp, 16 PCRs, certificate, cabundle, public_key, user_data, nonce).
``serve`` exposes it on a unix socket with 4-byte big-endian length framing, which
``enclave_app.nsm.SocketNsm`` speaks. Debug mode is the caller's choice: it passes
all-zero PCRs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_app.errors import EnclaveError
from enclave_app.nsm import (
    MAX_NONCE,
    MAX_PCR_INDEX,
    MAX_PUBLIC_KEY,
    MAX_USER_DATA,
    SOCKET_FRAME_MAX,
    read_frame,
    write_frame,
)
from nitro_sim.ca import SimCa

log = logging.getLogger(__name__)

PCR_COUNT = 16
PCR_BYTES = 48
LOCKED_PCRS = frozenset(range(PCR_COUNT))
RANDOM_BYTES = 256
LEAF_ROTATION = timedelta(hours=1)
PROTECTED_ES384 = cbor2.dumps({1: -35})
MAX_CONNECTIONS = 32
CONNECTION_TIMEOUT = 30.0


class SimulatedNsm:
    """An NSM for one simulated enclave: fixed PCRs, a module id, the simulator CA."""

    def __init__(self, ca: SimCa, pcrs: Mapping[int, bytes], module_id: str) -> None:
        if not module_id:
            raise ValueError("module_id must not be empty")
        table = {index: bytes(PCR_BYTES) for index in range(PCR_COUNT)}
        for index, value in pcrs.items():
            if not 0 <= index < PCR_COUNT or len(value) != PCR_BYTES:
                raise ValueError(f"PCR{index} must be 0..{PCR_COUNT - 1} with 48 bytes")
            table[index] = bytes(value)
        self._ca = ca
        self._pcrs = table
        self._module_id = module_id
        self._lock = threading.Lock()
        self._leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def handle(self, request_cbor: bytes) -> bytes:
        """Answer one CBOR request with one CBOR response (never raises on bad input)."""
        try:
            request = cbor2.loads(request_cbor, allow_indefinite=False, max_depth=4)
        except (cbor2.CBORError, ValueError, TypeError, OverflowError):
            return _error("InvalidArgument")
        if request in ("GetRandom", "DescribeNSM"):
            return self._unit_request(request)
        if not isinstance(request, dict) or len(request) != 1:
            return _error("InvalidOperation")
        ((kind, body),) = request.items()
        handlers = {"Attestation": self._attestation, "DescribePCR": self._describe_pcr}
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return _error("InvalidOperation")
        if not isinstance(body, dict):
            return _error("InvalidArgument")
        return handler(body)

    def attestation_document(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """Build and sign an attestation document (sizes are the caller's to check)."""
        when = now or datetime.now(UTC)
        cert, key = self._current_leaf(when)
        payload = cbor2.dumps(
            {
                "module_id": self._module_id,
                "digest": "SHA384",
                "timestamp": int(when.timestamp() * 1000),
                "pcrs": dict(self._pcrs),
                "certificate": cert.public_bytes(Encoding.DER),
                "cabundle": [c.public_bytes(Encoding.DER) for c in self._ca.cabundle],
                "public_key": public_key,
                "user_data": user_data,
                "nonce": nonce,
            }
        )
        to_sign = cbor2.dumps(["Signature1", PROTECTED_ES384, b"", payload])
        r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return cbor2.dumps([PROTECTED_ES384, {}, payload, signature])

    def _attestation(self, body: Mapping[Any, Any]) -> bytes:
        if set(body) - {"user_data", "nonce", "public_key"}:
            return _error("InvalidArgument")
        fields: dict[str, bytes | None] = {}
        for name, limit in (
            ("user_data", MAX_USER_DATA),
            ("nonce", MAX_NONCE),
            ("public_key", MAX_PUBLIC_KEY),
        ):
            value = body.get(name)
            if value is not None and (not isinstance(value, bytes) or len(value) > limit):
                return _error("InvalidArgument")
            fields[name] = value
        document = self.attestation_document(
            user_data=fields["user_data"], nonce=fields["nonce"], public_key=fields["public_key"]
        )
        return cbor2.dumps({"Attestation": {"document": document}})

    def _unit_request(self, name: str) -> bytes:
        if name == "GetRandom":
            return cbor2.dumps({"GetRandom": {"random": secrets.token_bytes(RANDOM_BYTES)}})
        return cbor2.dumps({"DescribeNSM": self._describe()})

    def _describe_pcr(self, body: Mapping[Any, Any]) -> bytes:
        index = body.get("index")
        if set(body) != {"index"} or type(index) is not int:
            return _error("InvalidArgument")
        if not 0 <= index <= MAX_PCR_INDEX:
            return _error("InvalidIndex")
        data = self._pcrs.get(index, bytes(PCR_BYTES))
        return cbor2.dumps({"DescribePCR": {"lock": index in LOCKED_PCRS, "data": data}})

    def _describe(self) -> dict[str, Any]:
        return {
            "version_major": 1,
            "version_minor": 0,
            "version_patch": 0,
            "module_id": self._module_id,
            "max_pcrs": MAX_PCR_INDEX + 1,
            "locked_pcrs": sorted(LOCKED_PCRS),
            "digest": "SHA384",
        }

    def _current_leaf(self, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        with self._lock:
            leaf = self._leaf
            fresh = leaf is not None and (
                leaf[0].not_valid_before_utc <= now < leaf[0].not_valid_before_utc + LEAF_ROTATION
            )
            if leaf is None or not fresh:
                leaf = self._ca.issue_leaf(now)
                self._leaf = leaf
            return leaf

    def serve(self, socket_path: Path) -> NsmServer:
        """Listen on ``socket_path`` (unix stream, mode 0600) in background threads.

        Keep it in a directory only the enclave's owner may enter (``enclaves/<id>``, see
        ``nitro_sim.statedir``): on hardware only the enclave can reach its NSM."""
        return NsmServer(self, socket_path)


def _error(name: str) -> bytes:
    return cbor2.dumps({"Error": name})


class NsmServer:
    """Thread-per-connection unix-socket server; each connection may send many requests."""

    def __init__(self, nsm: SimulatedNsm, socket_path: Path) -> None:
        self._nsm = nsm
        self.path = socket_path
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._sock.bind(str(socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(socket_path, 0o600)  # connecting needs write access: the owner's only
        self._sock.listen(MAX_CONNECTIONS)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="nsm-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(CONNECTION_TIMEOUT)
                while not self._closed.is_set():
                    try:
                        request = read_frame(conn)
                    except EnclaveError:
                        return
                    response = self._nsm.handle(request)
                    if len(response) > SOCKET_FRAME_MAX:
                        response = _error("InternalError")
                    write_frame(conn, response)
        except OSError as exc:
            log.debug("nsm connection ended: %s", exc)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> NsmServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
