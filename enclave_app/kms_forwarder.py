"""The enclave has no network: KMS traffic leaves over vsock.

This forwarder listens on an ephemeral loopback TCP port inside the enclave and pipes
each connection to the parent's vsock-proxy (CID 3, ``proxy_port``), which connects
to the KMS endpoint on the allowlist. TLS (on AWS) runs end to end between boto3 in
the enclave and KMS: the parent only ever sees ciphertext.
"""

from __future__ import annotations

import logging
import socket
import threading

from enclave_app.transport import PARENT_CID, Transport, pipe_both_ways

log = logging.getLogger(__name__)

MAX_FORWARDED_CONNECTIONS = 64
IDLE_TIMEOUT_SECONDS = 60.0


class KmsForwarder:
    def __init__(self, transport: Transport, proxy_port: int) -> None:
        self._transport = transport
        self._proxy_port = proxy_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._slots = threading.BoundedSemaphore(MAX_FORWARDED_CONNECTIONS)
        self._closed = threading.Event()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="kms-forwarder", daemon=True)

    def start(self) -> KmsForwarder:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("kms forwarder: too many connections, dropping one")
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = self._transport.connect(PARENT_CID, self._proxy_port, IDLE_TIMEOUT_SECONDS)
        except OSError as exc:
            log.warning(
                "kms forwarder: vsock-proxy unreachable on port %d: %s", self._proxy_port, exc
            )
            client.close()
            self._slots.release()
            return
        try:
            pipe_both_ways(client, upstream, IDLE_TIMEOUT_SECONDS)
        finally:
            self._slots.release()
