"""Build docs/configuration.md from the configuration code itself.

    python -m scripts.config_reference [--check]

Every key, its type, default and bounds come from running the real loaders
(``parent_app.config.RelayConfig.from_mapping``, ``enclave_app.config.EnclaveConfig
.from_mapping``) with their typed readers wrapped to record each read: a key the
loaders read is documented, with exactly the bounds they enforce. Whether the Ansible
roles set a key comes from the roles' TOML templates (``roles/*/templates/*.toml.j2``).
The words that explain each key are the only hand-written part (``DESCRIPTIONS``): a key
without one stops the build. A key read without a default is "required" unless the
loader accepts the document without it (then it is optional and unset by default).
``--check`` exits 1 when docs/configuration.md differs
(tests/test_config_reference.py runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from enclave_app import config as enclave_config
from parent_app import config as relay_config

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
TEMPLATES = {
    "relay.toml": ROOT / "roles" / "parent_relay" / "templates" / "relay.toml.j2",
    "enclave.toml": ROOT / "roles" / "enclave" / "templates" / "enclave.toml.j2",
}

#: Keys no role sets, on purpose (tests/test_config_reference.py allows only these).
NOT_SET_BY_ANSIBLE = {
    "relay.toml": {
        "relay.allow_non_loopback": "the role binds loopback only; its preflight refuses others",
    },
    "enclave.toml": {},
}

RELAY_DESCRIPTIONS: dict[str, str] = {
    "relay.listen_host": "Address the relay binds (loopback unless allow_non_loopback).",
    "relay.listen_port": "TCP port of the relay (0: any free port, logged at start).",
    "relay.listen_backlog": "Listen backlog of the relay's socket.",
    "relay.max_body_bytes": "Largest request body; larger ones get 413 body_too_large.",
    "relay.log_level": "Log level of the relay.",
    "relay.allow_non_loopback": "Allow a non-loopback listen_host (put authentication in front).",
    "relay.max_concurrent_requests": "Requests answered at once (counted once a request "
    "arrived whole); beyond, 503 server_busy.",
    "relay.max_connections": "Open connections, idle keep-alive ones included; beyond, 503.",
    "relay.request_deadline_seconds": "From a request's first byte to its last body byte (408).",
    "relay.keep_alive_timeout_seconds": "Idle keep-alive connections are closed after this.",
    "relay.chain_id": "Chain id for eth_chainId/net_version and transactions without one.",
    "relay.max_batch_requests": "Largest JSON-RPC batch (array) accepted.",
    "relay.upstream_rpc_url": "Ethereum node for eth_sendTransaction and forwarded methods.",
    "relay.upstream_timeout_seconds": "Timeout of one call to the upstream node.",
    "enclave.transport": 'How to reach the enclave: "vsock" (hardware) or "unix:DIR" (simulator).',
    "enclave.cid": "vsock CID of the enclave.",
    "enclave.port": "vsock port the enclave listens on.",
    "enclave.timeout_seconds": "Time allowed for one enclave call.",
    "enclave.max_frame_bytes": "Largest frame sent to or accepted from the enclave.",
    "enclave.pool_size": "Persistent enclave connections (<= max_connections, workers + queue).",
    "enclave.pool_wait_seconds": "How long a request waits for a pooled connection (then 503).",
    "kms.key_id": "The appliance's KMS key (ARN): new accounts' data keys come from it.",
    "kms.region": "Region of that key.",
    "storage.backend": '"sqlite" (one host) or "dynamodb" (a fleet sharing one table).',
    "storage.sqlite_path": "The SQLite account store (sqlite backend).",
    "storage.table_name": "The DynamoDB table (dynamodb backend).",
    "storage.region": "Region of the table (default: [kms] region).",
    "storage.endpoint_url": "DynamoDB endpoint override: https, or http on loopback (tests).",
    "credentials.source": "Where the role credentials come from (IMDSv2).",
    "credentials.imds_endpoint": "IMDS endpoint (the simulator serves one on loopback).",
    "credentials.imds_timeout_seconds": "Timeout of one IMDS call.",
    "auth.tokens_file": "Bearer tokens (nitro-wallet token add; hashes only). Unset: none "
    "accepted.",
    "auth.policy_file": "The enclave image's compiled signing policy: its stamp keys let the "
    "relay verify read-only stamps. Unset: read calls need a token.",
    "audit.log_path": "The JSON-lines log of the enclave's signed receipts (audit verify).",
    "audit.pull_interval_seconds": "The audit writer pulls receipts about 50 ms after a "
    "decision (at once after 500) and at least this often; `GET /v1/audit/head` drains "
    "before it answers.",
}
ENCLAVE_DESCRIPTIONS: dict[str, str] = {
    "server.port": "vsock port the enclave listens on.",
    "server.max_frame_bytes": "Largest request frame (checked before the body is read).",
    "server.max_connections": "Open connections at once.",
    "server.workers": "Threads executing requests that may wait on KMS or the NSM.",
    "server.queue_depth": "Admitted requests beyond workers (queued or inline); then server_busy.",
    "server.idle_timeout_seconds": "An idle connection is closed after this long.",
    "server.frame_timeout_seconds": "A frame must arrive whole within this long.",
    "server.max_buffered_bytes": "Request bytes held at once across connections.",
    "kms.endpoint_scheme": "https on AWS; http only for the simulator.",
    "kms.endpoint_host": (
        "KMS host name, reached through the parent's vsock-proxy (its region must be kms.region)."
    ),
    "kms.proxy_port": "vsock port of the parent's KMS vsock-proxy.",
    "kms.allowed_key_ids": "KMS keys the enclave accepts (required, non-empty).",
    "kms.timeout_seconds": "Timeout of one KMS call.",
    "kms.max_concurrent_calls": "KMS requests in flight at once (match the vsock-proxy workers).",
    "kms.recipient_key_pool": "Pre-generated RSA keys for KMS Recipient (0: none kept ready).",
    "kms.recipient_key_uses": "KMS calls one recipient key serves (1: a key per call).",
    "kms.recipient_key_max_age_seconds": "A recipient key is dropped this long after first use.",
    "kms.probe_interval_seconds": "kms_probe answers are reused this long (one KMS call per key).",
    "key_cache.max_entries": "Unlocked keys kept in enclave memory (0: no cache).",
    "key_cache.ttl_seconds": "How long an unlocked key stays cached.",
    "signing.allow_pre_eip155": "Sign legacy transactions without a chain id (replayable).",
    "kms.region": "Region of the KMS endpoint the enclave calls (pinned ARNs must be in it).",
}
DESCRIPTIONS = {"relay.toml": RELAY_DESCRIPTIONS, "enclave.toml": ENCLAVE_DESCRIPTIONS}


@dataclass
class Key:
    file: str
    section: str
    name: str
    kind: str
    default: Any = None
    required: bool = False
    bounds: str = ""
    only: str = ""  # the condition under which the key is read at all
    ansible: str = ""  # the role variable that sets it

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass
class Recorder:
    file: str
    scenario: str = ""
    keys: dict[tuple[str, str], Key] = field(default_factory=dict)
    seen_in: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, section: str, name: str, kind: str, default: Any, bounds: str = "") -> None:
        ident = (section, name)
        self.seen_in.setdefault(ident, set()).add(self.scenario)
        if ident not in self.keys:
            self.keys[ident] = Key(self.file, section, name, kind, default, default is None, bounds)


# ---------------------------------------------------------------- relay.toml

#: Optional keys that are read only when present get a value here, so they are documented.
RELAY_BASE: dict[str, Any] = {
    "kms": {"key_id": "alias/example"},
    "relay": {"upstream_rpc_url": "https://node.example.com"},
    "auth": {
        "tokens_file": "/etc/nitro-wallet/tokens.json",
        "policy_file": "/etc/nitro-wallet/policy.json",
    },
}
RELAY_SCENARIOS: dict[str, dict[str, Any]] = {
    'storage.backend = "sqlite"': {**RELAY_BASE, "storage": {}},
    'storage.backend = "dynamodb"': {
        **RELAY_BASE,
        "storage": {
            "backend": "dynamodb",
            "table_name": "accounts",
            "endpoint_url": "https://dynamodb.example.com",
        },
    },
}


def relay_keys() -> list[Key]:
    recorder = Recorder("relay.toml")
    original = relay_config._Section
    probed: set[tuple[str, str]] = set()

    class Recording(original):  # type: ignore[misc,valid-type]
        def __contains__(self, key: str) -> bool:
            probed.add((self.name, key))
            return bool(super().__contains__(key))

        def string(self, key: str, default: str | None = None) -> str:
            recorder.add(self.name, key, "string", default)
            return str(super().string(key, default))

        def integer(self, key: str, default: int, low: int, high: int) -> int:
            recorder.add(self.name, key, "integer", default, f"{low} to {high}")
            return int(super().integer(key, default, low, high))

        def number(self, key: str, default: float, low: float, high: float) -> float:
            recorder.add(self.name, key, "number", default, f"> {low:g}, <= {high:g}")
            return float(super().number(key, default, low, high))

        def optional_integer(self, key: str, low: int, high: int) -> int | None:
            recorder.add(self.name, key, "integer", "(unset)", f"{low} to {high}")
            value: int | None = super().optional_integer(key, low, high)
            return value

        def boolean(self, key: str, default: bool) -> bool:
            recorder.add(self.name, key, "boolean", default)
            return bool(super().boolean(key, default))

        def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
            recorder.add(self.name, key, "string", default, " or ".join(map(repr, choices)))
            return str(super().choice(key, default, choices))

    with mock.patch.object(relay_config, "_Section", Recording):
        for scenario, document in RELAY_SCENARIOS.items():
            recorder.scenario = scenario
            relay_config.RelayConfig.from_mapping(document)
    unread = sorted(f"{s}.{k}" for s, k in probed - set(recorder.keys))
    if unread:
        raise SystemExit(f"keys only read when present: give them a value in RELAY_BASE: {unread}")
    _find_optional(recorder, RELAY_SCENARIOS, relay_config.RelayConfig.from_mapping)
    return _finish(recorder, set(RELAY_SCENARIOS))


def _find_optional(
    recorder: Recorder, scenarios: dict[str, dict[str, Any]], load: Callable[[Any], Any]
) -> None:
    """A key read without default is optional when the document loads without it."""
    for (section, name), key in recorder.keys.items():
        if not key.required:
            continue
        for document in scenarios.values():
            if name not in document.get(section, {}):
                continue
            trimmed = {s: dict(t) for s, t in document.items()}
            del trimmed[section][name]
            try:
                load(trimmed)
            except ValueError:
                continue
            key.required = False
            key.default = "(unset)"


# -------------------------------------------------------------- enclave.toml

ENCLAVE_SECTIONS = tuple(enclave_config._SECTIONS)


def enclave_keys() -> list[Key]:
    recorder = Recorder("enclave.toml", scenario="all")
    document: dict[str, dict[str, Any]] = {name: {} for name in ENCLAVE_SECTIONS}
    document["kms"]["allowed_key_ids"] = ["arn:aws:kms:us-east-1:111122223333:key/example"]
    section_of = {id(table): name for name, table in document.items()}

    def wrap(reader: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def recording(table: Mapping[str, Any], key: str, *args: Any) -> Any:
            section = section_of.get(id(table), "?")
            default = args[0] if args else None
            bounds = f"{args[1]} to {args[2]}" if len(args) == 3 else ""
            recorder.add(section, key, kind, default, bounds)
            return reader(table, key, *args)

        return recording

    readers = {"_int": "integer", "_str": "string", "_bool": "boolean", "_str_list": "strings"}
    with _patched(
        enclave_config, {n: wrap(getattr(enclave_config, n), k) for n, k in readers.items()}
    ):
        enclave_config.EnclaveConfig.from_mapping(document, environ={})
    declared = {(s, k) for s, keys in enclave_config._SECTIONS.items() for k in keys}
    unread = sorted(f"{s}.{k}" for s, k in declared - set(recorder.keys))
    if unread:
        raise SystemExit(f"enclave_app/config.py declares keys it never reads: {unread}")
    return _finish(recorder, {"all"})


@contextmanager
def _patched(module: Any, replacements: dict[str, Any]) -> Iterator[None]:
    with mock.patch.multiple(module, **replacements):
        yield


# ------------------------------------------------------------------ roles


_SECTION_LINE = re.compile(r"^\[([a-z_]+)\]\s*$")
_KEY_LINE = re.compile(r"^([a-z_0-9]+)\s*=\s*(.*)$")
_VARIABLE = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)")


def template_keys(path: Path) -> dict[str, str]:
    """``section.key`` -> the role variable its line renders, from a TOML template."""
    found: dict[str, str] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if match := _SECTION_LINE.match(line):
            section = match.group(1)
        elif (match := _KEY_LINE.match(line)) and section:
            variable = _VARIABLE.search(match.group(2))
            found[f"{section}.{match.group(1)}"] = variable.group(1) if variable else "(fixed)"
    return found


def template_sections(path: Path) -> list[str]:
    return [
        m.group(1) for line in path.read_text().splitlines() if (m := _SECTION_LINE.match(line))
    ]


def _finish(recorder: Recorder, scenarios: set[str]) -> list[Key]:
    settable = template_keys(TEMPLATES[recorder.file])
    keys = []
    for ident, key in recorder.keys.items():
        seen = recorder.seen_in[ident]
        if seen != scenarios:
            key.only = " / ".join(sorted(seen))
        key.ansible = settable.get(key.dotted, "")
        keys.append(key)
    return keys


# ---------------------------------------------------------------- rendering


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str) and value != "(unset)":
        return f'`"{value}"`'
    if isinstance(value, Path):
        return f'`"{value}"`'
    return f"`{value}`" if value != "(unset)" else "unset"


def render(keys_by_file: dict[str, list[Key]]) -> str:
    missing = sorted(
        f"{k.file}: {k.dotted}" for keys in keys_by_file.values() for k in keys
        if k.dotted not in DESCRIPTIONS[k.file]
    )  # fmt: skip
    if missing:
        raise SystemExit(f"no description in scripts/config_reference.py for: {missing}")
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m scripts.config_reference` from parent_app/config.py,",
        "     enclave_app/config.py and roles/*/templates/*.toml.j2. Do not edit by hand:",
        "     tests/test_config_reference.py fails when this file is stale. -->",
        "",
        "Both files are TOML, read strictly: an unknown section or key, a wrong type or a",
        "value out of bounds stops the program with a message naming the key. `relay.toml`",
        "is read by the relay at start; `enclave.toml` is baked into the enclave image, so",
        "every value in it is measured into PCR0 (changing one is a rolling upgrade). The",
        "last column names the Ansible variable that sets the key (roles `parent_relay` and",
        "`enclave`, defaults in `roles/<role>/defaults/main.yml`).",
    ]
    for file, keys in keys_by_file.items():
        lines += ["", f"## {file}"]
        sections: dict[str, list[Key]] = {}
        for key in keys:
            sections.setdefault(key.section, []).append(key)
        order = template_sections(TEMPLATES[file])
        for section, members in sorted(
            sections.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99
        ):
            lines += [
                "",
                f"### [{section}]",
                "",
                "| key | type | default | bounds | Ansible variable | meaning |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for key in members:
                default = "required" if key.required else _value(key.default)
                meaning = DESCRIPTIONS[file][key.dotted]
                if key.only:
                    meaning += f" Read only with {key.only}."
                ansible = f"`{key.ansible}`" if key.ansible else "not set by Ansible"
                if key.dotted in NOT_SET_BY_ANSIBLE[file]:
                    ansible += f": {NOT_SET_BY_ANSIBLE[file][key.dotted]}"
                lines.append(
                    f"| `{key.name}` | {key.kind} | {default} | {key.bounds} | {ansible} "
                    f"| {meaning} |"
                )
    return "\n".join(lines) + "\n"


def build() -> tuple[str, dict[str, list[Key]]]:
    keys = {"relay.toml": relay_keys(), "enclave.toml": enclave_keys()}
    return render(keys), keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.config_reference")
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    args = parser.parse_args(argv)
    text, _ = build()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python -m scripts.config_reference", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
