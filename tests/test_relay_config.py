"""relay.toml: strict parsing, clear errors, loopback-only unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave_app.transport import Transport
from parent_app.config import ConfigError, RelayConfig

EXAMPLE = """
[relay]
listen_host = "127.0.0.1"
listen_port = 8080
max_body_bytes = 65536
log_level = "INFO"

[enclave]
transport = "vsock"
cid = 16
port = 5000
timeout_seconds = 15
max_frame_bytes = 1048576

[kms]
key_id = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
region = "us-east-1"

[storage]
backend = "sqlite"
sqlite_path = "/var/lib/nitro-wallet/accounts.db"

[credentials]
source = "imds"
imds_endpoint = "http://169.254.169.254"
imds_timeout_seconds = 2

[auth]
tokens_file = "/etc/nitro-wallet/tokens.json"
policy_file = "/etc/nitro-wallet/policy.json"

[audit]
log_path = "/var/lib/nitro-wallet/audit.jsonl"
pull_interval_seconds = 0.5
"""


def minimal(**sections: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"kms": {"key_id": "alias/nitro-wallet"}}
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return document


def test_example_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(EXAMPLE)
    config = RelayConfig.load(path)
    assert config.relay.listen_port == 8080
    assert config.enclave.transport == Transport.vsock()
    assert (config.enclave.cid, config.enclave.port) == (16, 5000)
    assert config.enclave.timeout_seconds == 15.0
    assert config.kms.region == "us-east-1"
    assert config.storage.sqlite_path == Path("/var/lib/nitro-wallet/accounts.db")
    assert config.credentials.imds_timeout_seconds == 2.0
    assert config.relay.allow_non_loopback is False
    assert config.auth.tokens_file == Path("/etc/nitro-wallet/tokens.json")
    assert config.auth.policy_file == Path("/etc/nitro-wallet/policy.json")
    assert config.audit.log_path == Path("/var/lib/nitro-wallet/audit.jsonl")
    assert config.audit.pull_interval_seconds == 0.5


def test_defaults_and_simulator_transport() -> None:
    config = RelayConfig.from_mapping(
        minimal(enclave={"transport": "unix:/var/lib/nitro-sim/vsock"})
    )
    assert config.enclave.transport.unix_dir == Path("/var/lib/nitro-sim/vsock")
    assert config.relay.listen_host == "127.0.0.1"
    assert config.relay.max_body_bytes == 1 << 20  # a batch of 100 transactions fits


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, r"\[kms\] is required"),
        ({"kms": {}}, "kms.key_id is required"),
        (minimal(extra={"a": 1}), "unknown section"),
        (minimal(relay={"listen_prot": 1}), r"unknown key\(s\) in \[relay\]: \['listen_prot'\]"),
        (minimal(relay={"listen_port": "8080"}), "listen_port must be an integer"),
        (minimal(relay={"listen_port": True}), "listen_port must be an integer"),
        (minimal(relay={"listen_port": 70000}), "listen_port must be an integer"),
        (minimal(relay={"log_level": "TRACE"}), "log_level must be one of"),
        (minimal(relay={"allow_non_loopback": "yes"}), "true or false"),
        (minimal(relay={"listen_host": "0.0.0.0"}), "not a loopback address"),  # noqa: S104
        (minimal(relay={"listen_host": "example.com"}), "not a loopback address"),
        (minimal(relay={"chain_id": 0}), r"chain_id must be an integer in \[1, "),
        (minimal(relay={"chain_id": "1"}), "chain_id must be an integer"),
        (minimal(relay={"chain_id": True}), "chain_id must be an integer"),
        (minimal(relay={"chain_id": 2**64}), "chain_id must be an integer"),
        (minimal(relay={"max_batch_requests": 0}), "max_batch_requests must be an integer"),
        (minimal(relay={"max_batch_requests": 1001}), "max_batch_requests must be an integer"),
        (minimal(relay={"listen_backlog": 128}), "listen_backlog must be an integer"),
        (minimal(relay={"listen_backlog": 70000}), "listen_backlog must be an integer"),
        (minimal(relay={"max_concurrent_requests": 0}), "max_concurrent_requests must be"),
        (minimal(relay={"max_connections": 0}), "max_connections must be an integer"),
        (
            minimal(relay={"max_connections": 10, "max_concurrent_requests": 20}),
            r"max_connections \(10\) must be at least",
        ),
        (minimal(relay={"request_deadline_seconds": 0}), "request_deadline_seconds must be"),
        (minimal(relay={"request_deadline_seconds": "5"}), "request_deadline_seconds must be"),
        (minimal(relay={"keep_alive_timeout_seconds": -1}), "keep_alive_timeout_seconds must"),
        (minimal(relay={"max_body_bytes": 9 << 20}), "max_body_bytes must be an integer"),
        (minimal(relay={"request_timeout_seconds": 5}), "unknown key"),  # renamed: deadline
        (minimal(enclave={"pool_size": 0}), "pool_size must be an integer"),
        (minimal(enclave={"pool_size": 1.5}), "pool_size must be an integer"),
        (minimal(enclave={"pool_wait_seconds": 0}), "pool_wait_seconds must be a number"),
        (minimal(enclave={"pool_wait_seconds": 61}), "pool_wait_seconds must be a number"),
        (minimal(enclave={"transport": "tcp:1"}), "enclave.transport"),
        (minimal(enclave={"timeout_seconds": 0}), "timeout_seconds must be a number"),
        (minimal(enclave={"max_frame_bytes": 10}), "max_frame_bytes"),
        (minimal(kms={"key_id": "bad key id"}), "not a KMS key id"),
        (minimal(kms={"region": "mars"}), "not an AWS region"),
        (minimal(storage={"backend": "cassandra"}), "backend must be one of"),
        (minimal(storage={"backend": "dynamodb"}), "table_name is required"),
        (minimal(credentials={"source": "env"}), "source must be one of"),
        (minimal(credentials={"imds_endpoint": "file:///etc/passwd"}), "http"),
        ({"kms": "x"}, "must be a table"),
    ],
)
def test_invalid_configs_are_refused_clearly(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig.from_mapping(document)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::"])  # noqa: S104
def test_non_loopback_needs_explicit_opt_in(host: str) -> None:
    config = RelayConfig.from_mapping(
        minimal(relay={"listen_host": host, "allow_non_loopback": True})
    )
    assert config.relay.listen_host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert RelayConfig.from_mapping(minimal(relay={"listen_host": host})).relay.listen_host == host


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        RelayConfig.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[relay\nlisten_port = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RelayConfig.load(broken)


def test_chain_id_is_optional_and_batches_are_bounded_by_default() -> None:
    config = RelayConfig.from_mapping(minimal())
    assert config.relay.chain_id is None
    assert config.relay.max_batch_requests == 100  # ethers' default batch size
    chained = RelayConfig.from_mapping(
        minimal(relay={"chain_id": 11155111, "max_batch_requests": 50})
    )
    assert (chained.relay.chain_id, chained.relay.max_batch_requests) == (11155111, 50)


def test_front_end_and_pool_defaults_and_overrides() -> None:
    defaults = RelayConfig.from_mapping(minimal())
    assert defaults.relay.listen_backlog == 1024
    assert defaults.relay.max_concurrent_requests == 64
    assert defaults.relay.max_connections == 1024
    assert defaults.relay.request_deadline_seconds == 10.0
    assert defaults.relay.keep_alive_timeout_seconds == 5.0
    assert (defaults.enclave.pool_size, defaults.enclave.pool_wait_seconds) == (16, 1.0)
    assert defaults.enclave.max_frame_bytes == 4 << 20
    tuned = RelayConfig.from_mapping(
        minimal(
            relay={
                "listen_backlog": 4096,
                "max_concurrent_requests": 128,
                "max_connections": 2048,
                "request_deadline_seconds": 2.5,
                "keep_alive_timeout_seconds": 30,
            },
            enclave={"pool_size": 4, "pool_wait_seconds": 0.25},
        )
    )
    assert tuned.relay.listen_backlog == 4096
    assert (tuned.relay.max_concurrent_requests, tuned.relay.max_connections) == (128, 2048)
    assert tuned.relay.request_deadline_seconds == 2.5
    assert tuned.relay.keep_alive_timeout_seconds == 30.0
    assert (tuned.enclave.pool_size, tuned.enclave.pool_wait_seconds) == (4, 0.25)


def test_the_role_template_renders_a_config_the_relay_accepts(tmp_path: Path) -> None:
    """roles/parent_relay: defaults + template give a relay.toml that loads, with the
    front-end and pool keys the role sets."""
    import json

    import jinja2
    import yaml

    role = Path(__file__).resolve().parent.parent / "roles" / "parent_relay"
    variables = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    variables.update(
        {
            "ansible_managed": "test",
            "parent_relay_enclave_cid": 16,
            "parent_relay_enclave_port": 5000,
            "parent_relay_enclave_max_frame_bytes": 4 << 20,
            "parent_relay_kms_key_id": "alias/nitro-wallet",
            "parent_relay_sqlite_path": "/var/lib/nitro-wallet/accounts.db",
        }
    )
    environment = jinja2.Environment(  # noqa: S701 - renders TOML
        loader=jinja2.FileSystemLoader(role / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    environment.filters["to_json"] = json.dumps
    path = tmp_path / "relay.toml"
    path.write_text(environment.get_template("relay.toml.j2").render(**variables))
    config = RelayConfig.load(path)
    assert config.relay.listen_backlog == variables["parent_relay_listen_backlog"] >= 1024
    assert config.relay.max_body_bytes == 1 << 20
    assert config.relay.max_concurrent_requests == variables["parent_relay_max_concurrent_requests"]
    assert config.relay.max_connections == variables["parent_relay_max_connections"]
    assert config.relay.request_deadline_seconds == 10
    assert config.relay.keep_alive_timeout_seconds == 5
    assert config.enclave.pool_size == variables["parent_relay_enclave_pool_size"]
    assert config.enclave.pool_wait_seconds == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8545",
        "https://mainnet.example.org/v3/0123456789abcdef",
        "https://node.example.org:8443/rpc?key=1",
        "http://[::1]:8545/",
    ],
)
def test_upstream_rpc_url_accepts_http_and_https(url: str) -> None:
    config = RelayConfig.from_mapping(minimal(relay={"upstream_rpc_url": url}))
    assert config.relay.upstream_rpc_url == url
    assert config.relay.upstream_timeout_seconds == 10.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://127.0.0.1:8546", "http:// or https:// URL"),
        ("file:///etc/passwd", "http:// or https:// URL"),
        ("https://", "http:// or https:// URL"),
        ("127.0.0.1:8545", "http:// or https:// URL"),
        ("https://user:secret-pass@node.example.org", "user info"),
        ("https://node.example.org/#x", "without fragment"),
        ("https://node.example.org:99999", "is not a URL"),
        ("https://node.example.org/a b", "without fragment or blanks"),
        ("", "non-empty string"),
    ],
)
def test_upstream_rpc_url_is_validated_without_echoing_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RelayConfig.from_mapping(minimal(relay={"upstream_rpc_url": url}))
    if len(url) > 10:
        assert url not in str(caught.value)  # it can hold a provider key
    assert "secret-pass" not in str(caught.value)


def test_upstream_timeout_is_bounded() -> None:
    with pytest.raises(ConfigError, match="upstream_timeout_seconds must be a number"):
        RelayConfig.from_mapping(minimal(relay={"upstream_timeout_seconds": 0}))


def test_closed_by_default_no_token_file_no_policy() -> None:
    config = RelayConfig.from_mapping(minimal())
    assert (config.auth.tokens_file, config.auth.policy_file) == (None, None)
    assert config.audit.log_path == Path("/var/lib/nitro-wallet/audit.jsonl")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[auth\]: \['tokens'\]"):
        RelayConfig.from_mapping(minimal(auth={"tokens": "/x"}))
    with pytest.raises(ConfigError, match=r"auth\.tokens_file must be a non-empty string"):
        RelayConfig.from_mapping(minimal(auth={"tokens_file": ""}))
    with pytest.raises(ConfigError, match=r"audit\.pull_interval_seconds"):
        RelayConfig.from_mapping(minimal(audit={"pull_interval_seconds": 0}))


def test_the_frame_cap_must_hold_a_stamped_body_twice() -> None:
    """A stamped request carries its body to the enclave twice: 2 x body + headroom."""
    body = 1 << 20
    needed = 2 * body + (512 << 10)
    fits = RelayConfig.from_mapping(
        minimal(relay={"max_body_bytes": body}, enclave={"max_frame_bytes": needed})
    )
    assert fits.enclave.max_frame_bytes == needed
    with pytest.raises(ConfigError) as caught:
        RelayConfig.from_mapping(
            minimal(relay={"max_body_bytes": body}, enclave={"max_frame_bytes": needed - 1})
        )
    assert "enclave.max_frame_bytes" in str(caught.value)
    assert "relay.max_body_bytes" in str(caught.value)
