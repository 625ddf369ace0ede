"""Enclave entry point: ``python -m enclave_app --config /app/enclave.toml``.

The signing policy is ``policy.json`` in the configuration's directory (``/app``): both
are built into the image, so PCR0 covers them. Without a valid policy the enclave does
not start."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from pathlib import Path
from types import FrameType

from enclave_app.accounts import AccountVault
from enclave_app.auth.entropy import MixedEntropy
from enclave_app.config import ConfigError, EnclaveConfig
from enclave_app.gate import Gate
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AttestedKms
from enclave_app.kms_forwarder import KmsForwarder
from enclave_app.kms_probe import KmsProber
from enclave_app.measurements import describe_measurements
from enclave_app.nsm import nsm_from_environment
from enclave_app.ops import Operations
from enclave_app.policy import PolicyDocumentError, load_policy
from enclave_app.recipient_keys import RecipientKeyPool
from enclave_app.server import EnclaveServer, ServerLimits
from enclave_app.signing.keys import SigningKey
from enclave_app.stats import EnclaveStats

log = logging.getLogger("enclave_app")

#: Descriptors kept for everything but client connections (KMS forwarding, NSM, logs).
RESERVED_DESCRIPTORS = 256
#: The signing policy, next to enclave.toml in the image.
POLICY_FILE = "policy.json"
LISTEN_BACKLOG = 1024


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
    try:
        policy = load_policy(args.config.parent / POLICY_FILE)
    except PolicyDocumentError as exc:
        log.error("refusing to start: signing policy: %s", exc)
        return 2

    stats = EnclaveStats()
    nsm = nsm_from_environment()
    # Key material (account keys and their GCM nonces, the receipt key) mixes the OS
    # CSPRNG with the NSM's random source; either failing refuses to generate.
    entropy = MixedEntropy(nsm.get_random)
    gate = Gate.boot(policy, nsm, entropy=entropy)
    log.info(
        "signing policy sha256 %s: %d rules, %d velocity limits",
        policy.sha256,
        len(policy.rules),
        len(policy.limits),
    )
    forwarder = KmsForwarder(config.transport, config.kms_proxy_port).start()
    recipient_keys = RecipientKeyPool(
        config.kms_recipient_key_pool,
        uses_per_key=config.kms_recipient_key_uses,
        max_age_seconds=config.kms_recipient_key_max_age_seconds,
    ).start()
    kms = AttestedKms(
        nsm,
        endpoint_url=config.kms_endpoint_url_template.format(port=forwarder.port),
        region=config.region,
        allowed_key_ids=config.allowed_key_ids,
        timeout_seconds=config.kms_timeout_seconds,
        describe_measurements=describe_measurements,
        max_concurrent_calls=config.kms_max_concurrent_calls,
        recipient_keys=recipient_keys,
        stats=stats,
    )
    cache: KeyCache[SigningKey] = KeyCache(
        config.key_cache_max_entries, config.key_cache_ttl_seconds
    )
    vault = AccountVault(
        kms,
        cache,
        max_parallel_unlocks=config.kms_max_concurrent_calls,
        stats=stats,
        random=entropy.random_bytes,
    )
    limits = server_limits(config, allow_descriptors(config.max_connections + RESERVED_DESCRIPTORS))
    operations = Operations(
        nsm,
        vault,
        gate=gate,
        allow_pre_eip155=config.allow_pre_eip155,
        record_cache_entries=config.key_cache_max_entries,
        capacity=limits.capacity(),
        stats=stats,
        prober=KmsProber(kms, config.kms_probe_interval_seconds),
    )
    listener = config.transport.listen(config.listen_cid, config.port, backlog=LISTEN_BACKLOG)
    server = EnclaveServer(
        listener, operations, limits, housekeeping=cache.purge_expired, stats=stats
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
    vault.close()
    recipient_keys.close()
    forwarder.close()
    return 0


def allow_descriptors(wanted: int) -> int:
    """Raise this process's open-file limit to ``wanted`` if it can; the limit in force.

    Every idle connection holds a descriptor. Root in the enclave may raise the hard
    limit; elsewhere the soft limit goes up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for limits in ((wanted, max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        except (OSError, ValueError):
            continue
        return limits[0]
    return soft


def server_limits(config: EnclaveConfig, descriptors: int) -> ServerLimits:
    max_connections = min(config.max_connections, max(1, descriptors - RESERVED_DESCRIPTORS))
    if max_connections < config.max_connections:
        log.warning(
            "open-file limit %d allows %d connections, not the configured %d",
            descriptors,
            max_connections,
            config.max_connections,
        )
    return ServerLimits.from_config(config, max_connections)


if __name__ == "__main__":
    sys.exit(main())
