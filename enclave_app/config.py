"""Enclave configuration: ``enclave.toml`` baked into the image (so measured by PCR0),
plus the simulator seams taken from the environment.

Nothing the parent sends at run time can change these values. The KMS settings must
agree on one region: the pinned key ARNs and a public KMS endpoint host name all carry
it (an enclave in a disaster-recovery region pins its region's replica of the
multi-Region key, see ``enclave_app.key_ids``). On hardware the
environment is the image's own; under the simulator, ``nitro-cli run-enclave`` sets
exactly two variables: ``NITRO_SIM_VSOCK_DIR`` and ``NITRO_SIM_NSM_SOCKET``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_app.key_ids import REGION_RE, KeyArn, endpoint_region
from enclave_app.transport import Transport

VSOCK_DIR_ENV = "NITRO_SIM_VSOCK_DIR"
ENCLAVE_CID_ENV = "NITRO_SIM_ENCLAVE_CID"
DEFAULT_ENCLAVE_CID = 16

MIB = 1024 * 1024

_SECTIONS: dict[str, set[str]] = {
    "server": {
        "port",
        "max_frame_bytes",
        "max_connections",
        "workers",
        "queue_depth",
        "idle_timeout_seconds",
        "frame_timeout_seconds",
        "max_buffered_bytes",
    },
    "kms": {
        "region",
        "endpoint_scheme",
        "endpoint_host",
        "proxy_port",
        "allowed_key_ids",
        "timeout_seconds",
        "max_concurrent_calls",
        "recipient_key_pool",
        "recipient_key_uses",
        "recipient_key_max_age_seconds",
        "probe_interval_seconds",
    },
    "key_cache": {"max_entries", "ttl_seconds"},
    "signing": {"allow_pre_eip155"},
}


class ConfigError(ValueError):
    """The baked configuration is unusable: the enclave refuses to start."""


@dataclass(frozen=True)
class EnclaveConfig:
    """Every value, its default and its range (the ranges are enforced by ``load``)."""

    port: int = 5000
    #: Largest request frame; the length prefix is checked before the body is read.
    #: 4 MiB: a stamped request carries its body twice (the relay's cap is 1 MiB).
    max_frame_bytes: int = 4 * MIB
    #: Open connections (idle ones cost a file descriptor, no thread). At the bound,
    #: the connection idle the longest is closed to admit a new one.
    max_connections: int = 4096
    #: Threads that execute requests that may wait on KMS or the NSM (the I/O thread
    #: runs those that only compute: ``enclave_app.server``).
    workers: int = 16
    #: Admitted requests beyond ``workers`` (waiting for a worker, or inline); beyond
    #: ``workers + queue_depth``, ``server_busy`` at once.
    queue_depth: int = 64
    #: A connection with nothing in flight is closed after this long without a byte.
    idle_timeout_seconds: int = 60
    #: A frame must arrive whole within this long of its first byte.
    frame_timeout_seconds: int = 10
    #: Request bytes held at once across all connections (>= max_frame_bytes).
    max_buffered_bytes: int = 64 * MIB
    region: str = "us-east-1"
    kms_endpoint_scheme: str = "https"
    kms_endpoint_host: str = "kms.us-east-1.amazonaws.com"
    kms_proxy_port: int = 8000
    kms_timeout_seconds: int = 10
    allowed_key_ids: tuple[str, ...] = ()
    #: KMS requests in flight at once (also the parallelism of batch unlocks and the
    #: HTTP connections kept to KMS); match the parent's vsock-proxy workers.
    kms_max_concurrent_calls: int = 8
    #: Pre-generated ephemeral RSA keys for KMS Recipient (0: generate when needed).
    kms_recipient_key_pool: int = 8
    #: KMS calls one recipient key serves (each with its own attestation document), and
    #: the seconds after its first use when it is dropped regardless (docs/performance.md).
    kms_recipient_key_uses: int = 100
    kms_recipient_key_max_age_seconds: int = 60
    #: The kms_probe op's answer is reused for this long: however often the relay asks,
    #: each pinned key gets at most one probe (an attested GenerateDataKey) per interval.
    kms_probe_interval_seconds: int = 30
    key_cache_max_entries: int = 20_000
    key_cache_ttl_seconds: int = 900
    allow_pre_eip155: bool = False
    transport: Transport = field(default_factory=Transport.vsock)
    # The CID the enclave listens on. Hardware listens on any CID; the simulator
    # needs the one `nitro-cli run-enclave --enclave-cid` gave it.
    listen_cid: int = DEFAULT_ENCLAVE_CID

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] = os.environ) -> EnclaveConfig:
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read enclave config {path}: {exc}") from exc
        return cls.from_mapping(raw, environ)

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> EnclaveConfig:
        for section, values in raw.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown section [{section}]")
            if not isinstance(values, dict):
                raise ConfigError(f"[{section}] must be a table")
            unknown = set(values) - _SECTIONS[section]
            if unknown:
                raise ConfigError(f"unknown keys in [{section}]: {sorted(unknown)}")
        server = raw.get("server", {})
        kms = raw.get("kms", {})
        cache = raw.get("key_cache", {})
        signing = raw.get("signing", {})
        vsock_dir = environ.get(VSOCK_DIR_ENV)
        defaults = cls()
        max_frame_bytes = _int(server, "max_frame_bytes", defaults.max_frame_bytes, 1024, 16 * MIB)
        region = _str(kms, "region", defaults.region)
        config = cls(
            port=_int(server, "port", defaults.port, 1, 2**32 - 1),
            max_frame_bytes=max_frame_bytes,
            max_connections=_int(server, "max_connections", defaults.max_connections, 1, 65_536),
            workers=_int(server, "workers", defaults.workers, 1, 256),
            queue_depth=_int(server, "queue_depth", defaults.queue_depth, 0, 4096),
            idle_timeout_seconds=_int(
                server, "idle_timeout_seconds", defaults.idle_timeout_seconds, 1, 86_400
            ),
            frame_timeout_seconds=_int(
                server, "frame_timeout_seconds", defaults.frame_timeout_seconds, 1, 600
            ),
            max_buffered_bytes=_int(
                server,
                "max_buffered_bytes",
                defaults.max_buffered_bytes,
                max_frame_bytes,
                4096 * MIB,
            ),
            region=region,
            kms_endpoint_scheme=_str(kms, "endpoint_scheme", defaults.kms_endpoint_scheme),
            # The region's public endpoint unless told otherwise (a VPC endpoint, the simulator).
            kms_endpoint_host=_str(kms, "endpoint_host", f"kms.{region}.amazonaws.com"),
            kms_proxy_port=_int(kms, "proxy_port", defaults.kms_proxy_port, 1, 2**32 - 1),
            kms_timeout_seconds=_int(kms, "timeout_seconds", defaults.kms_timeout_seconds, 1, 120),
            allowed_key_ids=_str_list(kms, "allowed_key_ids"),
            kms_max_concurrent_calls=_int(
                kms, "max_concurrent_calls", defaults.kms_max_concurrent_calls, 1, 64
            ),
            kms_recipient_key_pool=_int(
                kms, "recipient_key_pool", defaults.kms_recipient_key_pool, 0, 256
            ),
            kms_recipient_key_uses=_int(
                kms, "recipient_key_uses", defaults.kms_recipient_key_uses, 1, 1000
            ),
            kms_recipient_key_max_age_seconds=_int(
                kms,
                "recipient_key_max_age_seconds",
                defaults.kms_recipient_key_max_age_seconds,
                1,
                900,
            ),
            kms_probe_interval_seconds=_int(
                kms, "probe_interval_seconds", defaults.kms_probe_interval_seconds, 1, 3600
            ),
            key_cache_max_entries=_int(
                cache, "max_entries", defaults.key_cache_max_entries, 0, 1_000_000
            ),
            key_cache_ttl_seconds=_int(
                cache, "ttl_seconds", defaults.key_cache_ttl_seconds, 0, 86_400
            ),
            allow_pre_eip155=_bool(signing, "allow_pre_eip155", defaults.allow_pre_eip155),
            transport=Transport.unix(vsock_dir) if vsock_dir else Transport.vsock(),
            listen_cid=_cid(environ.get(ENCLAVE_CID_ENV)),
        )
        if config.kms_endpoint_scheme not in {"https", "http"}:
            raise ConfigError("kms.endpoint_scheme must be https (AWS) or http (simulator)")
        if not config.allowed_key_ids:
            raise ConfigError("kms.allowed_key_ids is empty: the enclave would trust any key")
        _check_one_region(config)
        return config

    @property
    def kms_endpoint_url_template(self) -> str:
        """Endpoint with a ``{port}`` placeholder for the in-enclave forwarder's port."""
        return f"{self.kms_endpoint_scheme}://{self.kms_endpoint_host}:{{port}}"


def _check_one_region(config: EnclaveConfig) -> None:
    """Refuse KMS settings that name different regions: the enclave signs its requests
    for ``kms.region`` and calls one regional endpoint, which serves only its region's
    keys. A pin of another region's ARN is a mistake (pin the replica of this region)."""
    region = config.region
    if not REGION_RE.fullmatch(region):
        raise ConfigError(f"kms.region {region!r} is not an AWS region name")
    for key_id in config.allowed_key_ids:
        arn = KeyArn.parse(key_id)
        if arn is not None and arn.region != region:
            raise ConfigError(
                f"kms.allowed_key_ids: {key_id} is a key of {arn.region}, but kms.region is "
                f"{region}; pin the key's ARN in {region} (for a multi-Region key: its replica "
                "there)"
            )
    served = endpoint_region(config.kms_endpoint_host)
    if served is not None and served != region:
        raise ConfigError(
            f"kms.endpoint_host {config.kms_endpoint_host} serves {served}, but kms.region "
            f"is {region}"
        )


def _cid(value: str | None) -> int:
    if value is None:
        return DEFAULT_ENCLAVE_CID
    if not value.isdigit() or not 4 <= int(value) < 2**32 - 1:
        raise ConfigError(f"{ENCLAVE_CID_ENV} must be a CID >= 4")
    return int(value)


def _int(table: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer in [{low}, {high}]")
    return value


def _str(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ConfigError(f"{key} must be a non-empty string")
    return value


def _bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false")
    return value


def _str_list(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be a list of non-empty strings")
    return tuple(value)
