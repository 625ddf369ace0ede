"""Relay configuration: ``relay.toml``, strictly validated.

Unknown sections or keys are refused (a typo must not silently fall back to a
default), every value is type- and range-checked, and binding a non-loopback
address needs ``allow_non_loopback = true``: the relay is loopback-only by default.

    [relay]       listen_host, listen_port, listen_backlog, max_body_bytes, log_level,
                  allow_non_loopback, max_concurrent_requests, max_connections,
                  request_deadline_seconds, keep_alive_timeout_seconds,
                  chain_id (optional: the default chain, answered by eth_chainId /
                  net_version and filled into transactions that give none),
                  max_batch_requests (JSON-RPC batch size cap),
                  upstream_rpc_url (optional http(s) node: eth_sendTransaction and
                  forwarding), upstream_timeout_seconds
    [enclave]     transport ("vsock" | "unix:DIR"), cid, port, timeout_seconds, max_frame_bytes,
                  pool_size, pool_wait_seconds
    [kms]         key_id (required), region (a key ARN must be in it: the enclave of this
                  region pins its regional key, e.g. the replica of a multi-Region key)
    [storage]     backend ("sqlite" | "dynamodb");
                  sqlite: sqlite_path;
                  dynamodb: table_name (required), region (default [kms].region),
                  endpoint_url (optional: https, or http on a loopback host)
    [credentials] source ("imds"), imds_endpoint, imds_timeout_seconds
    [auth]        tokens_file (optional: the bearer tokens, ``nitro-wallet token``; without
                  it no token is accepted), policy_file (optional: the compiled signing
                  policy the enclave carries; its stamp keys let the relay verify stamps
                  of read-only calls itself; without it those stamps are refused)
    [audit]       log_path (the JSON-lines audit log), pull_interval_seconds

Closed by default: a request without a valid stamp or bearer token gets 401, and
without ``[auth]`` no token and no read-only stamp is accepted.

Frame rule: a stamped request reaches the enclave with its body twice (the exact body
text the stamp covers, and the parsed payload), so ``enclave.max_frame_bytes`` must be
at least ``2 * relay.max_body_bytes + FRAME_HEADROOM_BYTES`` (the account records and
credentials of a batch). The relay refuses to start otherwise; the enclave's own
``server.max_frame_bytes`` must be at least the relay's (the Ansible roles check it).

Capacity rule: ``enclave.pool_size`` (the relay's persistent connections to the
enclave) must not exceed the enclave's ``server.max_connections`` nor its
``server.workers + server.queue_depth``: beyond them the enclave refuses connections or
answers server_busy. The relay cannot read the enclave's file, so the Ansible roles
check the rule (docs/performance.md).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from enclave_app.transport import Transport
from parent_app.upstream import validate_url

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_CONFIG_BYTES = 64 * 1024
_REGION_RE = re.compile(r"\A[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\Z")
MAX_CHAIN_ID = 2**64 - 1
_KEY_ID_RE = re.compile(r"\A[A-Za-z0-9:/_+=,.@-]{1,2048}\Z")
_KEY_ARN_REGION_RE = re.compile(r"\Aarn:aws(?:-[a-z]+)*:kms:(?P<region>[^:]*):")
_TABLE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.-]{3,255}\Z")
STORAGE_BACKENDS = ("sqlite", "dynamodb")
#: Room in a frame besides the body twice: up to 100 account records with their
#: metadata, the credentials and the envelope.
FRAME_HEADROOM_BYTES = 512 * 1024


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class RelaySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    listen_backlog: int = 1024
    # 1 MiB: a batch of 100 transactions fits with room to spare.
    max_body_bytes: int = 1 << 20
    log_level: str = "INFO"
    allow_non_loopback: bool = False
    # Requests being received or answered at once; beyond: 503 server_busy.
    max_concurrent_requests: int = 64
    # Open connections (idle keep-alive ones included); beyond: 503 server_busy.
    max_connections: int = 1024
    # From a request's first byte to its last body byte (headers and body): a client
    # that drips bytes loses its slot when this passes (408).
    request_deadline_seconds: float = 10.0
    # An idle keep-alive connection is closed after this long.
    keep_alive_timeout_seconds: float = 5.0
    chain_id: int | None = None
    max_batch_requests: int = 100
    upstream_rpc_url: str | None = None
    upstream_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class EnclaveSettings:
    transport: Transport
    cid: int = 16
    port: int = 5000
    timeout_seconds: float = 15.0
    # 4 MiB: a stamped request at the 1 MiB body cap fits (see the frame rule above).
    max_frame_bytes: int = 4 << 20
    # Persistent connections to the enclave (<= the enclave's server.max_connections)
    # and how long a request waits for one before 503 server_busy.
    pool_size: int = 16
    pool_wait_seconds: float = 1.0


@dataclass(frozen=True)
class KmsSettings:
    key_id: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "sqlite"
    sqlite_path: Path = Path("/var/lib/nitro-wallet/accounts.db")
    # dynamodb only: region is resolved (defaults to [kms].region) when backend is dynamodb.
    table_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True)
class CredentialsSettings:
    source: str = "imds"
    imds_endpoint: str = "http://169.254.169.254"
    imds_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class AuthSettings:
    tokens_file: Path | None = None
    policy_file: Path | None = None


@dataclass(frozen=True)
class AuditSettings:
    log_path: Path = Path("/var/lib/nitro-wallet/audit.jsonl")
    # The writer pulls receipts about 50 ms after a decision and at least this often.
    pull_interval_seconds: float = 1.0


@dataclass(frozen=True)
class RelayConfig:
    relay: RelaySettings
    enclave: EnclaveSettings
    kms: KmsSettings
    storage: StorageSettings
    credentials: CredentialsSettings
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()

    @classmethod
    def load(cls, path: str | Path) -> RelayConfig:
        file = Path(path)
        try:
            with file.open("rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{file} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from exc
        return cls.from_mapping(document)

    @classmethod
    def from_mapping(cls, document: dict[str, Any]) -> RelayConfig:
        known = {"relay", "enclave", "kms", "storage", "credentials", "auth", "audit"}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}: expected {sorted(known)}")
        kms = _kms(_Section(document, "kms", required=True))
        config = cls(
            relay=_relay(_Section(document, "relay")),
            enclave=_enclave(_Section(document, "enclave")),
            kms=kms,
            storage=_storage(_Section(document, "storage"), kms.region),
            credentials=_credentials(_Section(document, "credentials")),
            auth=_auth(_Section(document, "auth")),
            audit=_audit(_Section(document, "audit")),
        )
        _check_frame_cap(config.relay, config.enclave)
        return config


class _Section:
    """Takes typed values out of one TOML table; ``done()`` refuses leftovers."""

    def __init__(self, document: dict[str, Any], name: str, required: bool = False) -> None:
        self.name = name
        table = document.get(name)
        if table is None:
            if required:
                raise ConfigError(f"section [{name}] is required")
            table = {}
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        self._values = dict(table)

    def _take(self, key: str, default: T | None, kind: str, check: Callable[[Any], bool]) -> Any:
        if key not in self._values:
            if default is None:
                raise ConfigError(f"{self.name}.{key} is required")
            return default
        value = self._values.pop(key)
        if not check(value):
            raise ConfigError(f"{self.name}.{key} must be {kind}, not {value!r}")
        return value

    def string(self, key: str, default: str | None = None) -> str:
        value: str = self._take(key, default, "a non-empty string", _is_nonempty_str)
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self._take(
            key, default, f"an integer in [{low}, {high}]", lambda v: _is_int_in(v, low, high)
        )
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._take(
            key, default, f"a number in ({low}, {high}]", lambda v: _is_number_in(v, low, high)
        )
        return float(value)

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        if key not in self._values:
            return None
        value = self._values.pop(key)
        if not _is_int_in(value, low, high):
            raise ConfigError(f"{self.name}.{key} must be an integer in [{low}, {high}]")
        result: int = value
        return result

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._take(key, default, "true or false", lambda v: isinstance(v, bool))
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self._take(key, default, f"one of {list(choices)}", lambda v: v in choices)
        return value

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def done(self) -> None:
        if self._values:
            raise ConfigError(f"unknown key(s) in [{self.name}]: {sorted(self._values)}")


def _is_nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low < value <= high


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relay(section: _Section) -> RelaySettings:
    defaults = RelaySettings()
    settings = RelaySettings(
        listen_host=section.string("listen_host", defaults.listen_host),
        listen_port=section.integer("listen_port", defaults.listen_port, 0, 65535),
        listen_backlog=section.integer("listen_backlog", defaults.listen_backlog, 1024, 65535),
        max_body_bytes=section.integer("max_body_bytes", defaults.max_body_bytes, 2, 8 << 20),
        log_level=section.choice("log_level", defaults.log_level, LOG_LEVELS),
        allow_non_loopback=section.boolean("allow_non_loopback", defaults.allow_non_loopback),
        max_concurrent_requests=section.integer(
            "max_concurrent_requests", defaults.max_concurrent_requests, 1, 1024
        ),
        max_connections=section.integer("max_connections", defaults.max_connections, 1, 65535),
        request_deadline_seconds=section.number(
            "request_deadline_seconds", defaults.request_deadline_seconds, 0, 300
        ),
        keep_alive_timeout_seconds=section.number(
            "keep_alive_timeout_seconds", defaults.keep_alive_timeout_seconds, 0, 3600
        ),
        chain_id=section.optional_integer("chain_id", 1, MAX_CHAIN_ID),
        max_batch_requests=section.integer(
            "max_batch_requests", defaults.max_batch_requests, 1, 1000
        ),
        upstream_rpc_url=_upstream_rpc_url(section),
        upstream_timeout_seconds=section.number(
            "upstream_timeout_seconds", defaults.upstream_timeout_seconds, 0, 300
        ),
    )
    section.done()
    if settings.max_connections < settings.max_concurrent_requests:
        raise ConfigError(
            f"relay.max_connections ({settings.max_connections}) must be at least "
            f"relay.max_concurrent_requests ({settings.max_concurrent_requests})"
        )
    if not settings.allow_non_loopback and not is_loopback(settings.listen_host):
        raise ConfigError(
            f"relay.listen_host {settings.listen_host!r} is not a loopback address; the relay "
            "binds loopback only unless relay.allow_non_loopback = true"
        )
    return settings


def _upstream_rpc_url(section: _Section) -> str | None:
    if "upstream_rpc_url" not in section:
        return None
    url = section.string("upstream_rpc_url")
    try:
        return validate_url(url)
    except ValueError as exc:
        # The URL can hold a provider key: the message never repeats it.
        raise ConfigError(f"relay.upstream_rpc_url {exc}") from None


def _enclave(section: _Section) -> EnclaveSettings:
    spec = section.string("transport", "vsock")
    try:
        transport = Transport.from_spec(spec)
    except ValueError as exc:
        raise ConfigError(f"enclave.transport: {exc}") from exc
    defaults = EnclaveSettings(transport)
    settings = EnclaveSettings(
        transport=transport,
        cid=section.integer("cid", defaults.cid, 3, 0xFFFFFFFE),
        port=section.integer("port", defaults.port, 1, 0xFFFFFFFE),
        timeout_seconds=section.number("timeout_seconds", defaults.timeout_seconds, 0, 600),
        max_frame_bytes=section.integer(
            "max_frame_bytes", defaults.max_frame_bytes, 1024, 16 << 20
        ),
        pool_size=section.integer("pool_size", defaults.pool_size, 1, 4096),
        pool_wait_seconds=section.number("pool_wait_seconds", defaults.pool_wait_seconds, 0, 60),
    )
    section.done()
    return settings


def _kms(section: _Section) -> KmsSettings:
    key_id = section.string("key_id")
    if not _KEY_ID_RE.match(key_id):
        raise ConfigError(f"kms.key_id {key_id!r} is not a KMS key id, ARN or alias")
    region = section.string("region", KmsSettings.region)
    if not _REGION_RE.match(region):
        raise ConfigError(f"kms.region {region!r} is not an AWS region name")
    arn = _KEY_ARN_REGION_RE.match(key_id)
    if arn is not None and arn["region"] != region:
        raise ConfigError(
            f"kms.key_id {key_id} is a key of {arn['region']!r}, but kms.region is {region!r}: "
            "new accounts are made under the key of the relay's own region (in a "
            "disaster-recovery region, the replica of the multi-Region key)"
        )
    section.done()
    return KmsSettings(key_id=key_id, region=region)


def _storage(section: _Section, kms_region: str) -> StorageSettings:
    defaults = StorageSettings()
    backend = section.choice("backend", defaults.backend, STORAGE_BACKENDS)
    if backend == "sqlite":
        path = Path(section.string("sqlite_path", str(defaults.sqlite_path)))
        section.done()
        return StorageSettings(backend=backend, sqlite_path=path)
    if "table_name" not in section:
        raise ConfigError('storage.table_name is required when storage.backend = "dynamodb"')
    table_name = section.string("table_name")
    if not _TABLE_NAME_RE.match(table_name):
        raise ConfigError(
            f"storage.table_name {table_name!r} is not a DynamoDB table name "
            "(3 to 255 of A-Z a-z 0-9 _ . -)"
        )
    region = section.string("region", kms_region)
    if not _REGION_RE.match(region):
        raise ConfigError(f"storage.region {region!r} is not an AWS region name")
    endpoint_url = None
    if "endpoint_url" in section:
        endpoint_url = _endpoint_url(section.string("endpoint_url"))
    section.done()  # refuses sqlite_path too: it means nothing to this backend
    return StorageSettings(
        backend=backend, table_name=table_name, region=region, endpoint_url=endpoint_url
    )


def _endpoint_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"storage.endpoint_url {url!r} is not a URL") from exc
    plain_loopback = parts.scheme == "http" and is_loopback(parts.hostname or "")
    if (
        not (parts.scheme == "https" or plain_loopback)
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
        or parts.path not in ("", "/")
    ):
        raise ConfigError(
            f"storage.endpoint_url {url!r} must be an https URL (or http on a loopback host) "
            "without path, query or user info"
        )
    return url


def _check_frame_cap(relay: RelaySettings, enclave: EnclaveSettings) -> None:
    needed = 2 * relay.max_body_bytes + FRAME_HEADROOM_BYTES
    if enclave.max_frame_bytes < needed:
        raise ConfigError(
            f"enclave.max_frame_bytes ({enclave.max_frame_bytes}) must be at least "
            f"2 x relay.max_body_bytes + {FRAME_HEADROOM_BYTES} = {needed}: a stamped "
            "request carries its body to the enclave twice (raise the frame cap on both "
            "sides, or lower the body cap)"
        )


def _optional_path(section: _Section, key: str) -> Path | None:
    return Path(section.string(key)) if key in section else None


def _auth(section: _Section) -> AuthSettings:
    settings = AuthSettings(
        tokens_file=_optional_path(section, "tokens_file"),
        policy_file=_optional_path(section, "policy_file"),
    )
    section.done()
    return settings


def _audit(section: _Section) -> AuditSettings:
    defaults = AuditSettings()
    settings = AuditSettings(
        log_path=Path(section.string("log_path", str(defaults.log_path))),
        pull_interval_seconds=section.number(
            "pull_interval_seconds", defaults.pull_interval_seconds, 0, 60
        ),
    )
    section.done()
    return settings


def _credentials(section: _Section) -> CredentialsSettings:
    defaults = CredentialsSettings()
    source = section.choice("source", defaults.source, ("imds",))
    endpoint = section.string("imds_endpoint", defaults.imds_endpoint)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"credentials.imds_endpoint {endpoint!r} must be an http(s) URL")
    timeout = section.number("imds_timeout_seconds", defaults.imds_timeout_seconds, 0, 60)
    section.done()
    return CredentialsSettings(source=source, imds_endpoint=endpoint, imds_timeout_seconds=timeout)
