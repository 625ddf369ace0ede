"""Backups of a running appliance under signing load, restored onto a fresh host that
signs for every account.

The appliance is the simulated stack (KMS, IMDS, vsock-proxy, enclave, relay as
processes). ``nitro-wallet backup`` runs as its own process while client threads create
accounts and sign. The "fresh host" is a second relay process with a new, empty store,
restored from the last backup, in front of a restarted enclave (an empty key cache), with
the same KMS key: every signature there needs an attested KMS Decrypt of a restored
ciphertext, and every one is checked with eth-account.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import assert_every_account_signs, eip1559, nitro_wallet

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"relay listening on [^\s:]+:(\d+)")


class Load:
    """Client threads creating accounts and signing with random ones, as traffic does."""

    def __init__(self, stack: LocalStack, accounts: dict[str, str]) -> None:
        self.stack = stack
        self.accounts = accounts  # account_id -> address, only answered (201) ones
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.signed = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(3)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        while not self.stop.is_set():
            if index == 0:
                status, body = http_json("POST", f"{self.stack.relay_url}/v1/accounts", {})
                if status != 201:
                    self.errors.append(f"create {status} {body}")
                    continue
                with self.lock:
                    self.accounts[body["account_id"]] = body["address"]
            else:
                with self.lock:
                    account_id = rng.choice(sorted(self.accounts))
                url = f"{self.stack.relay_url}/v1/accounts/{account_id}/sign/transaction"
                status, body = http_json("POST", url, {"transaction": eip1559()})
                if status != 200:
                    self.errors.append(f"sign {status} {body}")
                    continue
                with self.lock:
                    self.signed += 1


@pytest.fixture(scope="module")
def accounts(stack: LocalStack) -> dict[str, str]:
    created: dict[str, str] = {}
    for _ in range(5):
        status, body = http_json("POST", f"{stack.relay_url}/v1/accounts", {})
        assert status == 201, body
        created[body["account_id"]] = body["address"]
    return created


@dataclass
class LoadedBackups:
    counts: list[int]  # accounts in each backup taken under load
    signed: int
    errors: list[str]
    final: Path  # taken after the load
    final_accounts: int


@pytest.fixture(scope="module")
def backups(
    stack: LocalStack, accounts: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> LoadedBackups:
    """Three backups (each verified) while clients create and sign, then one more."""
    directory = tmp_path_factory.mktemp("backups")
    config = stack.root / "relay.toml"
    counts: list[int] = []
    with Load(stack, accounts) as load:
        for i in range(3):
            time.sleep(1.0)
            out = directory / f"b{i}.db"
            result = nitro_wallet(stack, "backup", "--config", str(config), "--out", str(out))
            assert result.returncode == 0, result.stderr
            summary = json.loads(result.stdout)
            counts.append(summary["accounts"])
            check = nitro_wallet(stack, "verify-backup", str(out), "--require-manifest")
            assert check.returncode == 0, check.stderr
            assert json.loads(check.stdout)["accounts"] == summary["accounts"]
    final = directory / "final.db"
    result = nitro_wallet(stack, "backup", "--config", str(config), "--out", str(final))
    assert result.returncode == 0, result.stderr
    return LoadedBackups(
        counts, load.signed, load.errors, final, json.loads(result.stdout)["accounts"]
    )


def test_backups_under_signing_load_hold_every_answered_account(
    backups: LoadedBackups, accounts: dict[str, str]
) -> None:
    assert not backups.errors, backups.errors[:3]
    assert backups.signed > 0
    assert backups.counts == sorted(backups.counts)
    assert backups.counts[0] >= 5
    # After the load: the backup holds every account whose creation was answered.
    assert backups.final_accounts == len(accounts)


@pytest.fixture
def fresh_relay(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A new host's relay: same enclave transport and KMS key, a new empty store."""
    host = tmp_path_factory.mktemp("fresh-host")
    store = host / "state" / "accounts.db"
    text = stack.relay_config().replace(str(stack.relay_db), str(store))
    text = re.sub(r"(?m)^listen_port = \d+$", "listen_port = 0", text)
    config = host / "relay.toml"
    config.write_text(text)
    return str(config), store


def _start_relay(stack: LocalStack, config: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "parent_app", "--config", config],
        cwd=REPO,
        env=stack.env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = _LISTENING.search(line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # drain
            url = f"http://127.0.0.1:{found.group(1)}"
            for _ in range(300):
                if http_json("GET", f"{url}/readyz")[0] == 200:
                    return process, url
                time.sleep(0.1)
            break
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("the fresh host's relay did not become ready")


def test_a_restore_onto_a_fresh_host_signs_for_every_account(
    stack: LocalStack,
    accounts: dict[str, str],
    backups: LoadedBackups,
    fresh_relay: tuple[str, Path],
) -> None:
    backup = backups.final
    config, store = fresh_relay
    restored = nitro_wallet(stack, "restore", "--config", config, "--from", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"] == len(accounts)
    assert stack.measurements is not None
    stack.run_enclave(stack.measurements.eif)  # a new enclave: nothing cached
    process, url = _start_relay(stack, config)
    try:
        assert_every_account_signs(url, accounts, nonce=7, token=stack.api_token)
        # A second restore onto this store, which now holds accounts, is refused.
        again = nitro_wallet(stack, "restore", "--config", config, "--from", str(backup))
        assert again.returncode == 1
        assert "store_not_empty" in again.stderr
    finally:
        process.terminate()
        process.wait(30)
    assert store.exists()
