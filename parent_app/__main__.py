"""``nitro-wallet-relay --config /etc/nitro-wallet/relay.toml``: run the parent relay.

Signals: SIGTERM/SIGINT stop it gracefully (requests in flight finish); SIGUSR1 enters
drain mode (new requests but /healthz, /readyz and /metrics get 503 ``draining``;
/readyz says ``"status": "draining"``) and SIGUSR2 leaves it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from parent_app.audit_log import AuditLogError, AuditLogWriter
from parent_app.auth import RelayAuth
from parent_app.config import AuthSettings, ConfigError, RelayConfig
from parent_app.credentials import CredentialSource, ImdsCredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.errors import RelayError, StorageError
from parent_app.http_server import RelayServer
from parent_app.metrics import RelayMetrics
from parent_app.policy_keys import PolicyKeysError, PolicyStampKey, load_stamp_keys
from parent_app.record_cache import CachedStorage
from parent_app.routes import RelayApi
from parent_app.service import WalletService
from parent_app.storage import SqliteStorage, Storage
from parent_app.storage_dynamodb import DynamoDbStorage
from parent_app.tokens import TokenFile
from parent_app.upstream import UpstreamClient

log = logging.getLogger("parent_app")

DEFAULT_CONFIG = "/etc/nitro-wallet/relay.toml"


def build_relay(config: RelayConfig, credentials: CredentialSource | None = None) -> RelayServer:
    """Wire storage, credentials, enclave client, service, authentication, the audit log
    writer and the API into a bound server (the writer runs until ``server_close``)."""
    source = credentials or ImdsCredentialSource(
        config.credentials.imds_endpoint, config.credentials.imds_timeout_seconds
    )
    auth = build_auth(config.auth)
    storage = CachedStorage(open_storage(config, source))  # records never change
    try:
        enclave = EnclaveClient(
            config.enclave.transport,
            config.enclave.cid,
            config.enclave.port,
            config.enclave.timeout_seconds,
            config.enclave.max_frame_bytes,
            pool_size=config.enclave.pool_size,
            pool_wait_seconds=config.enclave.pool_wait_seconds,
        )
        service = WalletService(storage, enclave, source, config.kms.key_id, RelayMetrics())
        audit = AuditLogWriter(
            config.audit.log_path, service.audit_receipts, config.audit.pull_interval_seconds
        )
        service.on_decision = audit.notify
        upstream = None
        if config.relay.upstream_rpc_url is not None:
            upstream = UpstreamClient(
                config.relay.upstream_rpc_url, config.relay.upstream_timeout_seconds
            )
        api = RelayApi(
            service,
            auth,
            chain_id=config.relay.chain_id,
            max_batch_requests=config.relay.max_batch_requests,
            upstream=upstream,
            audit=audit,
        )
        server = RelayServer(api, config.relay)
        audit.start()
        return server
    except BaseException:
        storage.close()
        raise


def build_auth(settings: AuthSettings) -> RelayAuth:
    """Bearer tokens from ``tokens_file`` (none without it) and the policy's stamp keys
    from ``policy_file`` (no read-only stamp without it): closed by default."""
    tokens = TokenFile(settings.tokens_file) if settings.tokens_file is not None else None
    stamp_keys: dict[str, PolicyStampKey] = {}
    if settings.policy_file is not None:
        stamp_keys, digest = load_stamp_keys(settings.policy_file)
        log.info(
            "signing policy %s (sha256 %s): %d stamp key(s) for read-only stamps",
            settings.policy_file,
            digest,
            len(stamp_keys),
        )
    if tokens is None:
        log.warning("no [auth] tokens_file: bearer tokens are refused")
    return RelayAuth(tokens, stamp_keys, StampVerifier(ReplayMemory()))


def open_storage(config: RelayConfig, credentials: CredentialSource) -> Storage:
    """The configured backend; DynamoDB signs with the relay's own role credentials."""
    settings = config.storage
    if settings.backend == "dynamodb":
        if settings.table_name is None or settings.region is None:
            raise StorageError("storage.table_name and storage.region must be set for dynamodb")
        return DynamoDbStorage(
            settings.table_name,
            settings.region,
            settings.endpoint_url,
            credentials_source=credentials,
        )
    return SqliteStorage(settings.sqlite_path)


class _LogFormatter(logging.Formatter):
    """``asctime`` as logging's default (``2026-11-30 12:00:00,123``), with the
    date-and-second part formatted once per second rather than per record: the access
    log writes a line per request, and ``strftime`` was a tenth of its cost."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._cached = (-1, "")  # (second, its text): one value, read and replaced whole

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime(self.default_time_format, self.converter(second))
            self._cached = (second, prefix)
        return f"{prefix},{int(record.msecs):03d}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # botocore's metadata fetcher logs IMDS response bodies (credentials) at DEBUG.
    for noisy in ("botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The format above uses none of these: skip gathering them for every record (the
    # access log writes one per request). The logging HOWTO's "Optimization" section.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup (file, line, function) per record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nitro-wallet-relay", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="path to relay.toml")
    args = parser.parse_args(argv)
    try:
        config = RelayConfig.load(args.config)
    except ConfigError as exc:
        print(f"nitro-wallet-relay: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.relay.log_level)
    try:
        server = build_relay(config)
    except (RelayError, OSError, PolicyKeysError, AuditLogError) as exc:
        log.error("cannot start the relay: %s", exc)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        server.request_stop()

    def drain(signum: int, frame: FrameType | None) -> None:
        draining = signum == signal.SIGUSR1
        log.info(
            "received %s: %s", signal.Signals(signum).name, "draining" if draining else "serving"
        )
        server.api.set_draining(draining)

    handlers = {
        signal.SIGTERM: stop,
        signal.SIGINT: stop,
        signal.SIGUSR1: drain,
        signal.SIGUSR2: drain,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    host, port = server.server_address
    log.info(
        "relay listening on %s:%s (enclave %s cid=%d port=%d, backlog %d)",
        host,
        port,
        config.enclave.transport.spec,
        config.enclave.cid,
        config.enclave.port,
        config.relay.listen_backlog,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("relay stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
