"""IMDSv2 for the simulator: the instance role's credentials from principals.json.

Only the session-token flow is served (IMDSv1 is refused, as on an instance with
`HttpTokens=required`):

    PUT /latest/api/token                    X-aws-ec2-metadata-token-ttl-seconds: 1..21600
    GET /latest/meta-data/iam/security-credentials/        -> role name
    GET /latest/meta-data/iam/security-credentials/<role>  -> EC2 credential JSON
    GET /latest/meta-data/placement/region | availability-zone, /latest/meta-data/instance-id
    GET /latest/dynamic/instance-identity/document

Every GET needs a valid, unexpired `X-aws-ec2-metadata-token` (401 otherwise).

    python -m nitro_sim.imds --state-dir D [--host 127.0.0.1] [--port P]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from nitro_sim.background import BackgroundHttpServer, parse_service_args, serve_until_signalled
from nitro_sim.httpserver import BoundedThreadingHTTPServer, WholeAnswers
from nitro_sim.principals import Principals, PrincipalsError

TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL_SECONDS = 21600
MAX_TOKENS = 4096
CREDENTIAL_LIFETIME = timedelta(hours=6)
SOCKET_TIMEOUT_SECONDS = 10
MAX_BODY_BYTES = 4096
_CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"

MAX_CONNECTIONS = 32


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenStore:
    """Session tokens and their expiry (monotonic clock), bounded in number."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def issue(self, ttl_seconds: int) -> str:
        token = secrets.token_urlsafe(40)
        now = self._clock()
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            if len(self._tokens) >= MAX_TOKENS:
                oldest = min(self._tokens, key=self._tokens.__getitem__)
                del self._tokens[oldest]
            self._tokens[token] = now + ttl_seconds
        return token

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 128:
            return False
        now = self._clock()
        with self._lock:
            # Constant-time comparison against every live token.
            live = [t for t, exp in self._tokens.items() if exp > now]
        return any(hmac.compare_digest(token.encode(), t.encode()) for t in live)


class _HttpServer(BoundedThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], principals: Principals) -> None:
        self.principals = principals
        self.tokens = TokenStore()
        digest = hashlib.sha256(principals.role_credentials().access_key_id.encode()).hexdigest()
        self.instance_id = "i-" + digest[:17]
        super().__init__(address, _Handler, MAX_CONNECTIONS)


class _Handler(WholeAnswers, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_SECONDS
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: responses carry credentials, paths are uninteresting."""

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _discard_body(self) -> bool:
        raw = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") is not None or not raw.isdigit():
            self.close_connection = True
            return False
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return False
        self.rfile.read(length)
        return True

    def do_PUT(self) -> None:
        if not self._discard_body():
            self._send(400, "Bad Request")
            return
        if self.path != "/latest/api/token":
            self._send(404, "Not Found")
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._send(403, "Forbidden")  # as EC2: tokens are not issued through proxies
            return
        raw_ttl = self.headers.get(TTL_HEADER, "").strip()
        if not raw_ttl.isdigit() or not 1 <= int(raw_ttl) <= MAX_TTL_SECONDS:
            self._send(400, "Bad Request")
            return
        ttl = int(raw_ttl)
        token = self.server.tokens.issue(ttl)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(token)))
        self.send_header(TTL_HEADER, str(ttl))
        self.end_headers()
        self.wfile.write(token.encode("ascii"))

    def do_GET(self) -> None:
        if not self._discard_body():
            self._send(400, "Bad Request")
            return
        if not self.server.tokens.valid(self.headers.get(TOKEN_HEADER)):
            self._send(401, "Unauthorized")
            return
        answer = self._route(self.path.split("?", 1)[0])
        if answer is None:
            self._send(404, "Not Found")
        else:
            self._send(200, *answer)

    def _route(self, path: str) -> tuple[str, str] | None:
        principals = self.server.principals
        role = principals.imds_role()
        if path == _CREDENTIALS_PATH:
            return role.name, "text/plain"
        if path in (_CREDENTIALS_PATH + role.name, _CREDENTIALS_PATH + role.name + "/"):
            now = datetime.now(UTC)
            document = {
                "Code": "Success",
                "LastUpdated": _iso(now),
                "Type": "AWS-HMAC",
                "AccessKeyId": role.access_key_id,
                "SecretAccessKey": role.secret_access_key,
                "Token": role.session_token,
                "Expiration": _iso(now + CREDENTIAL_LIFETIME),
            }
            return json.dumps(document, indent=2), "text/plain"
        zone = principals.region + "a"
        identity = {
            "accountId": principals.account_id,
            "architecture": "x86_64",
            "availabilityZone": zone,
            "imageId": "ami-0000000000000000",
            "instanceId": self.server.instance_id,
            "instanceType": "m5.xlarge",
            "privateIp": "127.0.0.1",
            "region": principals.region,
            "version": "2017-09-30",
        }
        static = {
            "/latest/meta-data/placement/region": principals.region,
            "/latest/meta-data/placement/availability-zone": zone,
            "/latest/meta-data/instance-id": self.server.instance_id,
            "/latest/dynamic/instance-identity/document": json.dumps(identity, indent=2),
        }
        body = static.get(path)
        return None if body is None else (body, "text/plain")

    def do_POST(self) -> None:
        self.close_connection = True
        self._send(405, "Method Not Allowed")

    do_DELETE = do_POST  # noqa: N815


class ImdsServer(BackgroundHttpServer):
    """A running IMDSv2; `.url` is what AWS_EC2_METADATA_SERVICE_ENDPOINT expects."""

    url_suffix = "/"

    def __init__(self, principals: Principals, host: str, port: int) -> None:
        super().__init__(_HttpServer((host, port), principals), "imds")


def serve_imds(state_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ImdsServer:
    """Start IMDSv2 in a background thread (port 0 picks a free port)."""
    return ImdsServer(Principals.load_or_create(Path(state_dir)), host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nitro-sim imds", description="IMDSv2 (simulator)")
    args = parse_service_args(parser, argv)
    try:
        server = serve_imds(args.state_dir, args.host, args.port)
    except (OSError, PrincipalsError) as exc:
        print(f"nitro-sim imds: cannot start: {exc}", file=sys.stderr)
        return 1
    return serve_until_signalled("imds", server)


if __name__ == "__main__":
    sys.exit(main())
