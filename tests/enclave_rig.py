"""The enclave app in-process over real sockets, for tests of its server and ops.

``EnclaveRig`` wires the production pieces exactly as ``enclave_app.__main__`` does:
the simulated NSM serves a unix socket (``SocketNsm`` talks to it), the local KMS
listens on a loopback port with the key policy rendered by ``nitro_wallet.key_policy``
for this NSM's PCR0, and ``EnclaveServer`` serves the simulated vsock transport (a
unix socket). Only the vsock-proxy hop and the process boundary are left out; the
full-stack tests cover those.

``KmsGate`` instruments the local KMS: it counts calls per operation, measures how
many run at once, and can slow them down or hold them until released.

The enclave's gate is real too: a signing policy (by default :data:`RIG_POLICY`, which
lets the relay identity ``rig`` do everything), H5b's authenticator and an attested
receipt chain. ``request_frame`` (so ``call``) adds ``auth`` as the relay would (the
``rig`` identity) unless the params carry their own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3

from enclave_app import wire
from enclave_app.accounts import AccountVault
from enclave_app.errors import EnclaveError
from enclave_app.gate import Gate
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AttestedKms
from enclave_app.kms_probe import KmsProber
from enclave_app.nsm import SocketNsm
from enclave_app.ops import Operations
from enclave_app.policy import canonical_bytes, parse_policy_bytes
from enclave_app.recipient_keys import RecipientKeyPool
from enclave_app.server import EnclaveServer, ServerLimits
from enclave_app.signing.keys import SigningKey
from enclave_app.stats import EnclaveStats
from enclave_app.transport import Transport
from nitro_sim.ca import SimCa
from nitro_sim.kms import KmsServer, serve_kms
from nitro_sim.kms.params import Params
from nitro_sim.kms.service import AuditEntry
from nitro_sim.nsm import NsmServer, SimulatedNsm
from nitro_sim.principals import Principal, Principals
from nitro_wallet.key_policy import PCR0, render_key_policy

ENCLAVE_CID = 16
ENCLAVE_PORT = 5000
IMAGE_PCR0 = hashlib.sha384(b"nitro-wallet enclave rig").digest()
#: Ops that take ``auth``.
GATED_OPS = frozenset(
    {
        "generate_account",
        "sign_transaction",
        "sign_message",
        "sign_typed_data",
        "sign_authorization",
        "sign_batch",
    }
)
RIG_AUTH: dict[str, Any] = {"relay": {"principal": "rig", "scopes": ["create", "sign", "read"]}}
RIG_POLICY: dict[str, Any] = {
    "version": 1,
    "principals": {"relay_identities": [{"id": "rig", "scopes": ["create", "sign", "read"]}]},
    "rules": [
        {
            "name": "rig-everything",
            "effect": "allow",
            "principals": {"relay_identities": ["rig"]},
            "accounts": "all",
            "condition": {"transaction": {}, "message": {}, "typed_data": {}, "authorization": {}},
        }
    ],
}


class KmsGate:
    """Wraps the local KMS: counts calls and connections, concurrency, delay, hold."""

    def __init__(self, kms: KmsServer) -> None:
        self._inner = kms.service.call
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.open = threading.Event()
        self.open.set()
        self.connections = 0  # TCP connections the KMS accepted
        kms.service.call = self._call  # type: ignore[method-assign]
        httpd = kms._httpd
        accept = httpd.get_request

        def counting_accept() -> tuple[socket.socket, Any]:
            with self._lock:
                self.connections += 1
            return accept()

        httpd.get_request = counting_accept  # type: ignore[method-assign]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_in_flight = 0
            self.connections = 0

    def _call(
        self, principal: Principal, op: str, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        with self._lock:
            self.calls[op] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.open.wait(timeout=30)
            if self.delay:
                time.sleep(self.delay)
            return self._inner(principal, op, params, entry)
        finally:
            with self._lock:
                self.in_flight -= 1


class EnclaveRig:
    def __init__(
        self,
        root: Path,
        *,
        limits: ServerLimits | None = None,
        kms_concurrency: int = 8,
        recipient_pool: int = 0,
        cache_entries: int = 1024,
        kms_timeout: int = 20,
        probe_interval: float = 30,
        signing_policy: dict[str, Any] | None = None,
        policy_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.stats = EnclaveStats()
        self.limits = limits or ServerLimits()
        state = root / "state"
        self.kms = serve_kms(state)
        self.gate = KmsGate(self.kms)
        principals = Principals.load(state)
        self.credentials = {
            "access_key_id": principals.role_credentials().access_key_id,
            "secret_access_key": principals.role_credentials().secret_access_key,
            "session_token": principals.role_credentials().session_token,
        }
        admin = principals.admin_credentials()
        admin_kms = boto3.session.Session().client(
            "kms",
            region_name=principals.region,
            endpoint_url=self.kms.url,
            aws_access_key_id=admin.access_key_id,
            aws_secret_access_key=admin.secret_access_key,
            aws_session_token=admin.session_token,
        )
        self.admin_kms = admin_kms  # the key administrator: policy, disable, enable
        self.key_arn: str = admin_kms.create_key(Description="rig")["KeyMetadata"]["Arn"]
        policy = render_key_policy(
            mode=PCR0,
            admin_arns=[principals.administrator().arn],
            enclave_arns=[principals.imds_role().arn],
            pcr0s=[IMAGE_PCR0.hex()],
        )
        admin_kms.put_key_policy(
            KeyId=self.key_arn, PolicyName="default", Policy=json.dumps(policy)
        )
        self.nsm_server = NsmServer(
            SimulatedNsm(SimCa.load_or_create(state / "ca"), {0: IMAGE_PCR0}, "i-rig-enc0"),
            root / "nsm.sock",
        )
        self.transport = Transport.unix(root / "vsock")
        self.recipient_keys = RecipientKeyPool(recipient_pool)
        self.kms_client = AttestedKms(
            SocketNsm(root / "nsm.sock"),
            endpoint_url=self.kms.url,
            region=principals.region,
            allowed_key_ids=(self.key_arn,),
            timeout_seconds=kms_timeout,
            max_concurrent_calls=kms_concurrency,
            recipient_keys=self.recipient_keys,
            stats=self.stats,
        )
        self.cache: KeyCache[SigningKey] = KeyCache(cache_entries, 900)
        self.vault = AccountVault(
            self.kms_client, self.cache, max_parallel_unlocks=kms_concurrency, stats=self.stats
        )
        # Through the image's own loading path (canonical bytes, named by their SHA-256).
        document = RIG_POLICY if signing_policy is None else signing_policy
        self.policy = parse_policy_bytes(canonical_bytes(document))
        self.enclave_gate = Gate.boot(self.policy, SocketNsm(root / "nsm.sock"), policy_clock)
        self.operations = Operations(
            SocketNsm(root / "nsm.sock"),
            self.vault,
            gate=self.enclave_gate,
            allow_pre_eip155=False,
            record_cache_entries=cache_entries,
            capacity=self.limits.capacity(),
            stats=self.stats,
            prober=KmsProber(self.kms_client, probe_interval),
        )
        self.server = EnclaveServer(
            self.transport.listen(ENCLAVE_CID, ENCLAVE_PORT, backlog=1024),
            self.operations,
            self.limits,
            housekeeping=self.cache.purge_expired,
            stats=self.stats,
        )
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> EnclaveRig:
        self.recipient_keys.start()
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.stop()
        self._thread.join(timeout=10)
        self.vault.close()
        self.recipient_keys.close()
        self.nsm_server.close()
        self.kms.close()

    def __enter__(self) -> EnclaveRig:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- client side ----------------------------------------------------------------------

    def connect(self, timeout: float = 10) -> socket.socket:
        return self.transport.connect(ENCLAVE_CID, ENCLAVE_PORT, timeout)

    def call(
        self, op: str, params: dict[str, Any] | None = None, conn: socket.socket | None = None
    ) -> dict[str, Any]:
        """One request; the result, or the EnclaveError the enclave answered."""
        own = conn is None
        sock = conn if conn is not None else self.connect()
        try:
            request_id = uuid.uuid4().hex
            wire.write_frame(sock, request_frame(op, params or {}, request_id))
            body = wire.read_frame(sock)
            if body is None:
                raise ConnectionError("the enclave closed the connection")
            return wire.parse_response(body, request_id)
        finally:
            if own:
                sock.close()

    def create_account(self) -> dict[str, Any]:
        """A stored record, as the relay would keep it."""
        return self.call(
            "generate_account",
            {
                "account_id": str(uuid.uuid4()),
                "key_id": self.key_arn,
                "credentials": self.credentials,
            },
        )

    def forget_keys(self) -> None:
        """An enclave restart, as far as its memory goes: every key is cold again."""
        self.cache.clear()


@contextlib.contextmanager
def running_rig(**options: Any) -> Iterator[EnclaveRig]:
    """A started rig in a short /tmp directory (unix socket paths are limited to 107
    bytes), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="nwrig-", dir="/tmp"))
    try:
        with EnclaveRig(root, **options) as rig:
            yield rig
    finally:
        shutil.rmtree(root, ignore_errors=True)


def request_frame(op: str, params: dict[str, Any], request_id: str = "r") -> bytes:
    """The frame of one request; ops that take ``auth`` get the rig's relay identity
    unless ``params`` carry their own."""
    if op in GATED_OPS and "auth" not in params:
        params = {**params, "auth": RIG_AUTH}
    return wire.request_frame(wire.Request(request_id, op, params))


def read_answer(sock: socket.socket) -> dict[str, Any]:
    """The next answer frame on ``sock`` as a JSON object (ok or error)."""
    body = wire.read_frame(sock)
    if body is None:
        raise ConnectionError("the enclave closed the connection")
    return wire.decode_object(body)


def error_code(call: Callable[[], object]) -> str:
    try:
        call()
    except EnclaveError as exc:
        return str(exc.code)
    raise AssertionError("the enclave did not refuse")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
