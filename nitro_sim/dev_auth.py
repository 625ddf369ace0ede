"""The development stack's credentials and signing policy (``make dev``, the test stack).

In the state directory (``.dev-state`` for ``make dev``), made once and kept, so the
policy and with it PCR0 stay the same across restarts:

    api-key.pem        a stamp (API) key, id ``dev-api-key``, Ed25519, mode 0600
    api-token          a bearer token for the dev identity ``dev-token``, mode 0600
    relay/tokens.json  the relay's token file (only the token's SHA-256)
    policy.json        the signing policy built into the enclave image (and read by the
                       relay for read-only stamps): ``policy/dev.yaml.j2`` rendered with
                       the key and the token's name, compiled by ``nitro-wallet policy``
    sim-root.pem       the simulator's root certificate (``audit verify --root``,
                       ``attestation verify --root``)
    audit.jsonl        the relay's audit log

The dev policy grants that token and that key everything: NEVER deploy it. A test may
pass its own policy YAML (``policy_text``): it is rendered with the same variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from nitro_sim import statedir
from nitro_wallet.policy import compile_policy_text
from nitro_wallet.stamping import (
    KeyFile,
    generate_key,
    load_key_file,
    public_key_pem,
    write_key_file,
)

__all__ = ["DEV_KEY_ID", "DEV_TOKEN_NAME", "DevAuth", "prepare_controller_auth", "prepare_dev_auth"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_POLICY_TEMPLATE = REPO_ROOT / "policy" / "dev.yaml.j2"
DEV_KEY_ID = "dev-api-key"
DEV_TOKEN_NAME = "dev-token"  # noqa: S105 - the token's principal name, not a token
ALL_SCOPES = ("create", "sign", "read")


@dataclass(frozen=True)
class DevAuth:
    key_path: Path
    token: str
    token_path: Path
    tokens_file: Path
    policy_file: Path
    policy_sha256: str
    sim_root: Path
    audit_log: Path


def prepare_dev_auth(root: Path, sim_dir: Path, policy_text: str | None = None) -> DevAuth:
    """Make (or reuse) the dev key, token and policy in ``root``; copy the sim root."""
    token, sha256 = _key_token_policy(root, policy_text)
    sim_root = root / "sim-root.pem"
    shutil.copyfile(statedir.ca_dir(sim_dir) / "root.pem", sim_root)
    return DevAuth(
        key_path=root / "api-key.pem",
        token=token,
        token_path=root / "api-token",
        tokens_file=root / "relay" / "tokens.json",
        policy_file=root / "policy.json",
        policy_sha256=sha256,
        sim_root=sim_root,
        audit_log=root / "audit.jsonl",
    )


def _key_token_policy(root: Path, policy_text: str | None) -> tuple[str, str]:
    """Make (or reuse) api-key.pem, api-token with relay/tokens.json, and policy.json in
    ``root``; the token and the policy's SHA-256."""
    root.mkdir(parents=True, exist_ok=True)
    key = _api_key(root / "api-key.pem")
    token = _api_token(root / "api-token", root / "relay" / "tokens.json")
    return token, render_policy(root / "policy.json", key, policy_text)


def render_policy(output: Path, key: KeyFile, policy_text: str | None = None) -> str:
    """Render and compile the signing policy into ``output``; its SHA-256 (hex)."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders YAML
        keep_trailing_newline=True,
    )
    environment.filters["to_json"] = json.dumps
    template = DEV_POLICY_TEMPLATE.read_text() if policy_text is None else policy_text
    text = environment.from_string(template).render(
        dev_stamp_key_id=key.key_id,
        dev_stamp_public_key=public_key_pem(key.private_key),
        dev_relay_identity=DEV_TOKEN_NAME,
    )
    compiled = compile_policy_text(text)
    output.write_bytes(compiled.canonical)
    return compiled.sha256


def _api_key(path: Path) -> KeyFile:
    if path.exists():
        return load_key_file(path)
    key = KeyFile(DEV_KEY_ID, "api", generate_key("ed25519"))
    write_key_file(path, key)
    return key


def _api_token(token_path: Path, tokens_file: Path) -> str:
    """The dev token, kept in ``token_path``; a new one (``nitro-wallet token add``, as an
    operator makes one) unless the kept one still opens the file with every scope."""
    tokens_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        token = token_path.read_text().strip()
        if _opens(token, json.loads(tokens_file.read_bytes())):
            return token
    except (OSError, ValueError):
        pass
    added = subprocess.run(
        [
            *(sys.executable, "-m", "nitro_wallet", "token", "add"),
            *("--file", str(tokens_file), "--name", DEV_TOKEN_NAME),
            *("--scopes", ",".join(ALL_SCOPES)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if added.returncode != 0:
        raise RuntimeError(f"nitro-wallet token add failed: {added.stderr.strip()}")
    token = added.stdout.strip()
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _opens(token: str, document: object) -> bool:
    """Whether the token file (``{"version": 1, "tokens": [...]}``) holds ``token``'s
    digest under the dev name with every scope."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    records = document.get("tokens") if isinstance(document, dict) else None
    return any(
        isinstance(record, dict)
        and record.get("sha256") == digest
        and record.get("name") == DEV_TOKEN_NAME
        and sorted(record.get("scopes") or ()) == sorted(ALL_SCOPES)
        for record in records or ()
    )


def prepare_controller_auth(root: Path) -> dict[str, object]:
    """The same key, token and policy for a simulated host provisioned by Ansible
    (playbooks/local_site.yml: ``make demo``, molecule): what the playbook passes on as
    nitro_wallet_signing_policy_file, parent_relay_tokens and nitro_wallet_canary_token.
    There is no simulator state on the controller, so no sim root is copied."""
    token, sha256 = _key_token_policy(root, None)
    return {
        "policy_file": str(root / "policy.json"),
        "policy_sha256": sha256,
        "token": token,
        "tokens": json.loads((root / "relay" / "tokens.json").read_bytes())["tokens"],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m nitro_sim.dev_auth DIR``: make (or reuse) the development credentials
    and signing policy in DIR and print what the playbook needs as JSON (the token is
    the development one, printed for Ansible's no_log task only)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nitro_sim.dev_auth DIR", file=sys.stderr)
        return 2
    print(json.dumps(prepare_controller_auth(Path(args[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
