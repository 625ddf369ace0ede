"""HTTP front of the local KMS: the AWS JSON 1.1 protocol that boto3 speaks.

    POST /   X-Amz-Target: TrentService.<Op>   Content-Type: application/x-amz-json-1.1

Every request is SigV4-authenticated against principals.json before its body is
parsed; errors are `{"__type": ..., "message": ...}` with status 400 as on AWS. Each
call appends one line to `$STATE/kms/audit.log`.

    python -m nitro_sim.kms.server --state-dir D [--host 127.0.0.1] [--port P] [--region R]
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from enclave_app import strict_json
from nitro_sim.background import BackgroundHttpServer, parse_service_args, serve_until_signalled
from nitro_sim.ca import CaError, SimCa
from nitro_sim.httpserver import BoundedThreadingHTTPServer, WholeAnswers
from nitro_sim.kms.params import KmsError, Params
from nitro_sim.kms.service import AuditEntry, KmsService
from nitro_sim.kms.sigv4 import AuthError, SignedRequest, authenticate
from nitro_sim.kms.store import StoreError
from nitro_sim.principals import Principal, Principals, PrincipalsError

MAX_BODY_BYTES = 1024 * 1024
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT_SECONDS = 30
TARGET_PREFIX = "TrentService."
CONTENT_TYPE = "application/x-amz-json-1.1"


class _HttpServer(BoundedThreadingHTTPServer):
    service: KmsService

    def __init__(self, address: tuple[str, int], service: KmsService) -> None:
        self.service = service
        super().__init__(address, _Handler, MAX_CONNECTIONS)


class _Handler(WholeAnswers, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nitro-sim-kms"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_SECONDS
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request stderr logging; the audit log records every call."""

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: KmsError) -> None:
        self._send(error.status, {"__type": error.code, "message": error.message})

    def do_GET(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._error(KmsError("UnknownOperationException", "Only POST / is supported", 405))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise KmsError("LengthRequiredException", "Content-Length is required", 411)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None or not raw_length.strip().isdigit():
            self.close_connection = True
            raise KmsError("LengthRequiredException", "Content-Length is required", 411)
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise KmsError("RequestEntityTooLargeException", "The request body exceeds 1 MiB", 413)
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise KmsError("SerializationException", "The request body is truncated")
        return body

    def do_POST(self) -> None:
        target = self.headers.get("X-Amz-Target", "")
        op = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        entry = AuditEntry(op=op[:64] or "unknown")
        service = self.server.service
        status, payload = 200, {}
        try:
            body = self._read_body()
            if self.path != "/":
                raise KmsError("UnknownOperationException", "POST / only", 404)
            principal = self._authenticate(body)
            entry.principal = principal.arn
            if op not in service.operations:
                raise KmsError("UnknownOperationException", f"Unknown operation {target[:80]!r}")
            payload = service.call(principal, op, _parse_body(body), entry)
        except KmsError as exc:
            entry.error = exc.code
            status, payload = exc.status, {"__type": exc.code, "message": exc.message}
        except Exception:  # never let hostile input kill the thread or leak details
            entry.error = "InternalFailure"
            self.close_connection = True
            status, payload = 500, {"__type": "KMSInternalException", "message": "internal error"}
        # Logged before the answer leaves: a caller never sees a result that is not audited.
        service.audit.append(entry)
        self._send(status, payload)

    def _authenticate(self, body: bytes) -> Principal:
        headers = {name.lower(): value for name, value in self.headers.items()}
        if len(headers) != len(self.headers):
            raise KmsError("IncompleteSignatureException", "duplicate header")
        request = SignedRequest(method="POST", path=self.path, headers=headers, body=body)
        try:
            service = self.server.service
            return authenticate(request, service.principals, service="kms", region=service.region)
        except AuthError as exc:
            raise KmsError(
                exc.code, exc.message, 403 if exc.code.startswith("Missing") else 400
            ) from None


def _parse_body(body: bytes) -> Params:
    try:
        raw = strict_json.loads(body or b"{}")
    except strict_json.StrictJsonError:
        raise KmsError("SerializationException", "The request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise KmsError("SerializationException", "The request body must be a JSON object")
    return Params(raw)


class KmsServer(BackgroundHttpServer):
    """A running local KMS; `.url` for boto3's endpoint_url, `.close()` to stop."""

    def __init__(self, service: KmsService, host: str, port: int) -> None:
        super().__init__(_HttpServer((host, port), service), "kms")
        self.service = service


def build_service(state_dir: Path, region: str | None = None) -> KmsService:
    state_dir = Path(state_dir)
    principals = Principals.load_or_create(state_dir)
    ca = SimCa.load_or_create(state_dir / "ca")
    return KmsService(state_dir, principals, [ca.root_fingerprint], region=region)


def serve_kms(
    state_dir: Path, host: str = "127.0.0.1", port: int = 0, region: str | None = None
) -> KmsServer:
    """Start the KMS endpoint of ``region`` (default: the account's home region) in a
    background thread (port 0 picks a free port). Endpoints of several regions, in one
    process or several, share the keys of one state directory, as regions of one AWS
    account do: a multi-Region key replicated into a region is served there."""
    return KmsServer(build_service(state_dir, region), host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nitro-sim kms", description="local AWS KMS (simulator)")
    parser.add_argument("--region", help="the region this endpoint serves (default: home region)")
    args = parse_service_args(parser, argv)
    try:
        server = serve_kms(args.state_dir, args.host, args.port, args.region)
    except (OSError, PrincipalsError, CaError, StoreError) as exc:
        print(f"nitro-sim kms: cannot start: {exc}", file=sys.stderr)
        return 1
    return serve_until_signalled("kms", server)


if __name__ == "__main__":
    sys.exit(main())
