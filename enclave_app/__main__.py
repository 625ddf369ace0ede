"""Enclave entry point: ``python -m enclave_app --config /app/enclave.toml``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from enclave_app.accounts import AccountVault
from enclave_app.config import ConfigError, EnclaveConfig
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AttestedKms
from enclave_app.kms_forwarder import KmsForwarder
from enclave_app.measurements import describe_measurements
from enclave_app.nsm import nsm_from_environment
from enclave_app.ops import Operations
from enclave_app.server import EnclaveServer

log = logging.getLogger("enclave_app")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave_app")
    parser.add_argument("--config", type=Path, default=Path("/app/enclave.toml"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # botocore at DEBUG would log request and response bodies: never allow it here.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = EnclaveConfig.load(args.config)
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2

    nsm = nsm_from_environment()
    forwarder = KmsForwarder(config.transport, config.kms_proxy_port).start()
    kms = AttestedKms(
        nsm,
        endpoint_url=config.kms_endpoint_url_template.format(port=forwarder.port),
        region=config.region,
        allowed_key_ids=config.allowed_key_ids,
        timeout_seconds=config.kms_timeout_seconds,
        describe_measurements=describe_measurements,
    )
    vault = AccountVault(kms, KeyCache(config.key_cache_max_entries, config.key_cache_ttl_seconds))
    operations = Operations(nsm, vault, allow_pre_eip155=config.allow_pre_eip155)
    listener = config.transport.listen(config.listen_cid, config.port)
    server = EnclaveServer(
        listener,
        operations,
        max_frame_bytes=config.max_frame_bytes,
        max_connections=config.max_connections,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "nitro-wallet enclave listening on port %d (%s), KMS via vsock port %d",
        config.port,
        config.transport.spec,
        config.kms_proxy_port,
    )
    server.serve_forever()
    forwarder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
