"""The fleet (molecule scenario `cluster`): two simulated hosts, one KMS, one DynamoDB table.

The tests run in file order, on the converged fleet (release cluster-a), and drive the real
playbooks with ansible-playbook against the scenario's inventory. Relays are reached from
the controller (host network); every signature is recovered with eth-account here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
import testinfra
from eth_account import Account
from eth_account.messages import encode_defunct

from nitro_wallet.key_policy import validate_key_policy

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
HOSTS = ("nitro-cl-1", "nitro-cl-2")
RELAYS = {"nitro-cl-1": "http://127.0.0.1:18121", "nitro-cl-2": "http://127.0.0.1:18131"}
KMS_URL = "http://127.0.0.1:14610"
TRANSACTION = {
    "type": "0x2",
    "chainId": "0x1",
    "nonce": "0x0",
    "to": "0x000000000000000000000000000000000000dEaD",
    "value": "0x1",
    "gas": "0x5208",
    "maxFeePerGas": "0x3b9aca00",
    "maxPriorityFeePerGas": "0x3b9aca00",
    "data": "0x",
}

pytestmark = [
    pytest.mark.skipif(not INVENTORY, reason="runs as molecule's verifier"),
    pytest.mark.timeout(1800),
]


# --- the load generator --------------------------------------------------------------
# A load generator that signs continuously through several relays, as clients behind a load
# balancer would, and counts what failed.
#
# Routing is what a load balancer does: each relay's /readyz is checked every
# ``HEALTH_INTERVAL`` seconds and only ready relays get requests, round robin. A relay that
# answers 503 with Retry-After (drained, or busy) is taken out at once and the same signature
# is sent to another relay: that is a retry, not a failure. Everything else is a failure: any
# other status, a connection refused or reset by a relay in rotation, a signature that does
# not recover to its account (eth-account), or a signature nobody could make within
# ``REQUEST_DEADLINE`` seconds.

HEALTH_INTERVAL = 0.2
REQUEST_TIMEOUT = 30.0
REQUEST_DEADLINE = 60.0


@dataclass(frozen=True)
class Wallet:
    account_id: str
    address: str


@dataclass(frozen=True)
class Signed:
    relay: str
    wallet: Wallet
    message: str
    signature: str


@dataclass
class Report:
    signed: list[Signed] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: int = 0

    def per_relay(self) -> dict[str, int]:
        return dict(Counter(item.relay for item in self.signed))


# The development bearer token playbooks/local_site.yml made on this controller.
DEV_TOKEN_FILE = Path(__file__).resolve().parents[3] / "build" / "dev-auth" / "api-token"


def post_json(url: str, body: object, timeout: float = REQUEST_TIMEOUT) -> tuple[int, Any, Any]:
    """(status, decoded body, headers) of a JSON POST; HTTP errors are answers, not raised."""
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        url,
        data=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {DEV_TOKEN_FILE.read_text().strip()}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            payload = json.loads(raw or b"null")
        except ValueError:
            payload = raw.decode(errors="replace")
        return error.code, payload, error.headers


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LoadGenerator:
    def __init__(
        self, relays: list[str], wallets: list[Wallet], workers: int = 3, pause: float = 0.1
    ) -> None:
        self.relays = relays
        self.wallets = wallets
        self.workers = workers
        self.pause = pause
        self.report = Report()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = {relay: ready(relay) for relay in relays}
        self._turn = itertools.count()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadGenerator:
        self._threads = [threading.Thread(target=self._health, daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, args=(index,), daemon=True)
            for index in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)
        self._verify()

    def _health(self) -> None:
        while not self._stop.wait(HEALTH_INTERVAL):
            for relay in self.relays:
                self._ready[relay] = ready(relay)

    def _pick(self) -> str | None:
        in_rotation = [relay for relay in self.relays if self._ready[relay]]
        if not in_rotation:
            return None
        return in_rotation[next(self._turn) % len(in_rotation)]

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.report.failures.append(reason)

    def _work(self, index: int) -> None:
        for count in itertools.count():
            if self._stop.is_set():
                return
            wallet = self.wallets[(index + count) % len(self.wallets)]
            self._sign(wallet, f"load {index}-{count} {uuid.uuid4()}")
            time.sleep(self.pause)

    def _sign(self, wallet: Wallet, message: str) -> None:
        deadline = time.monotonic() + REQUEST_DEADLINE
        while time.monotonic() < deadline:
            relay = self._pick()
            if relay is None:
                time.sleep(0.05)
                continue
            url = f"{relay}/v1/accounts/{wallet.account_id}/sign/message"
            try:
                status, body, headers = post_json(url, {"message": message})
            except (urllib.error.URLError, OSError) as error:
                self._fail(f"{relay}: {type(error).__name__}: {error}")
                return
            if status == 200:
                with self._lock:
                    self.report.signed.append(Signed(relay, wallet, message, body["signature"]))
                return
            if status == 503 and headers.get("Retry-After"):
                self._ready[relay] = False  # out until its /readyz says otherwise
                with self._lock:
                    self.report.retries += 1
                continue
            self._fail(f"{relay}: HTTP {status} {body}")
            return
        self._fail(f"no relay signed {message!r} within {REQUEST_DEADLINE:.0f} s")

    def _verify(self) -> None:
        for item in self.report.signed:
            signer = Account.recover_message(
                encode_defunct(text=item.message), signature=item.signature
            )
            if signer.lower() != item.wallet.address.lower():
                self._fail(f"{item.relay}: signature of {item.message!r} recovers to {signer}")


# --- helpers ---------------------------------------------------------------------------


def playbook(name: str, *args: str, extra: dict[str, Any] | None = None) -> tuple[int, str]:
    """Run playbooks/NAME on the scenario's inventory with the converge's pins."""
    command = [
        "ansible-playbook",
        "--inventory",
        INVENTORY,
        f"--extra-vars=@{EPHEMERAL / 'pins.yml'}",
        f"--extra-vars=kms_key_policy_artifact_dir={EPHEMERAL / 'artifacts'}",
        f"--extra-vars=enclave_release_root={EPHEMERAL / 'releases'}",
        *([f"--extra-vars={json.dumps(extra)}"] if extra else []),
        *args,
        str(PROJECT / "playbooks" / name),
    ]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": os.environ.get("ANSIBLE_CONFIG", str(EPHEMERAL / "ansible.cfg")),
        "ANSIBLE_NOCOLOR": "1",
    }
    started = time.monotonic()
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    print(
        f"\n# ansible-playbook {name} {' '.join(args)}: rc {result.returncode}, "
        f"{time.monotonic() - started:.0f} s"
    )
    return result.returncode, result.stdout + result.stderr


def must(name: str, *args: str, extra: dict[str, Any] | None = None) -> str:
    code, output = playbook(name, *args, extra=extra)
    assert code == 0, output[-6000:]
    return output


@cache
def pins() -> dict[str, Any]:
    import yaml  # noqa: PLC0415 - from the controller's venv

    loaded: dict[str, Any] = yaml.safe_load((EPHEMERAL / "pins.yml").read_text())
    return loaded


def release_pcr0(release: str) -> str:
    info = json.loads((EPHEMERAL / "releases" / release / "release.json").read_text())
    pcr0: str = info["measurements"]["PCR0"]
    return pcr0


def build(release: str, **settings: Any) -> str:
    must(
        "enclave_build.yml",
        extra={"nitro_wallet_release": release, "enclave_build_replace": True, **settings},
    )
    return release_pcr0(release)


def host(name: str) -> Any:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def running_pcr0(name: str) -> str:
    enclaves = json.loads(host(name).check_output("nitro-cli describe-enclaves"))
    running = [e for e in enclaves if e["EnclaveName"] == "nitro-wallet"]
    assert len(running) == 1, enclaves
    pcr0: str = running[0]["Measurements"]["PCR0"].lower()
    return pcr0


def applied_policy_pcr0s() -> list[str]:
    principals = json.loads((EPHEMERAL / "aws" / "principals.json").read_text())["principals"]
    admin = next(p for p in principals if p["administrator"])
    kms = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=KMS_URL,
        aws_access_key_id=admin["access_key_id"],
        aws_secret_access_key=admin["secret_access_key"],
        aws_session_token=admin["session_token"],
    )
    policy = json.loads(kms.get_key_policy(KeyId=pins()["nitro_wallet_kms_key_arn"])["Policy"])
    summary = validate_key_policy(policy, allow_debug=False)
    return sorted(summary.pcr0s)


def create_wallet(relay: str) -> Wallet:
    status, body, _ = post_json(f"{relay}/v1/accounts", {})
    assert status == 201, body
    return Wallet(body["account_id"], body["address"])


def wait_ready(relay: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready(relay):
        assert time.monotonic() < deadline, f"{relay} is not ready after {timeout} s"
        time.sleep(0.5)


def answer(url: str, body: object, timeout: float = 60) -> tuple[int, Any, Any]:
    """The first answer that is not 503 (the relay waiting for its enclave) nor a refused
    connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = post_json(url, body)
        except (urllib.error.URLError, OSError):
            reply = None
        if reply is not None and reply[0] != 503:
            return reply
        assert time.monotonic() < deadline, f"{url}: no answer but 503 after {timeout} s"
        time.sleep(0.5)


def roll_under_load(release: str, trusted: list[str]) -> tuple[int, str, Report]:
    wallets = [create_wallet(RELAYS[name]) for name in HOSTS for _ in range(2)]
    with LoadGenerator(list(RELAYS.values()), wallets) as load:
        code, output = playbook(
            "upgrade.yml",
            extra={"nitro_wallet_release": release, "nitro_wallet_trusted_pcr0s": trusted},
        )
    report = load.report
    print(
        f"\n# rolling upgrade to {release} under load: {len(report.signed)} signatures during the "
        f"roll, {len(report.failures)} failed, {report.retries} retried on the other relay after "
        f"503 + Retry-After; per relay {report.per_relay()}"
    )
    return code, output, report


# --- the tests, in order -------------------------------------------------------------------


def test_account_created_on_host_1_signs_on_host_2() -> None:
    wallet = create_wallet(RELAYS["nitro-cl-1"])
    status, signed, _ = post_json(
        f"{RELAYS['nitro-cl-2']}/v1/accounts/{wallet.account_id}/sign/transaction",
        {"transaction": TRANSACTION},
    )
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == wallet.address


def test_key_policy_refuses_limit() -> None:
    """key_policy.yml --limit would apply the fleet's lock from a partial view: refused."""
    before = applied_policy_pcr0s()
    code, output = playbook(
        "key_policy.yml", "--limit", "nitro-cl-1", extra={"kms_key_policy_apply": True}
    )
    assert code != 0
    assert "Refusing to apply the KMS key policy under --limit nitro-cl-1" in output
    assert applied_policy_pcr0s() == before


def test_policy_without_the_running_image_denies_data_keys() -> None:
    """key_policy_deny_covers_wrong_measurements: a policy allowing another image makes both
    Decrypt (sign with an existing account) and GenerateDataKey (new account) fail with the
    attestation denial, exactly as AWS KMS would; the pinned policy brings them back."""
    wallet = create_wallet(RELAYS["nitro-cl-2"])
    must(
        "key_policy.yml",
        extra={"kms_key_policy_apply": True, "nitro_wallet_trusted_pcr0s": ["ab" * 48]},
    )
    assert applied_policy_pcr0s() == ["ab" * 48]
    host("nitro-cl-2").run("systemctl restart nitro-wallet-enclave.service")  # empty the key cache
    relay = RELAYS["nitro-cl-2"]
    # /readyz stays 503 here (the enclave's attested KMS probe is denied too): wait for answers.
    sign = answer(f"{relay}/v1/accounts/{wallet.account_id}/sign/message", {"message": "m"})
    create = answer(f"{relay}/v1/accounts", {})
    for status, body, _ in (sign, create):
        assert status == 403, body
        assert body["error"]["code"] == "kms_attestation_denied", body
    must("key_policy.yml", extra={"kms_key_policy_apply": True})
    assert applied_policy_pcr0s() == sorted(pins()["nitro_wallet_trusted_pcr0s"])
    status, signed, _ = post_json(
        f"{relay}/v1/accounts/{wallet.account_id}/sign/message", {"message": "back"}
    )
    assert status == 200, signed
    wait_ready(relay, timeout=90)  # the enclave's next KMS probe (every 30 s) passes again


def test_untrusted_release_is_refused_before_anything_moves() -> None:
    """Each host checks the release against the inventory's pins: release cluster-b is not
    trusted yet, so no host fetches it, the policy stays, every enclave keeps running."""
    old_pcr0 = release_pcr0("cluster-a")
    new_pcr0 = build("cluster-b", enclave_key_cache_ttl_seconds=901)
    assert new_pcr0 != old_pcr0
    before = applied_policy_pcr0s()
    code, output = playbook("upgrade.yml", extra={"nitro_wallet_release": "cluster-b"})
    assert code != 0
    assert "which the inventory does not trust" in output
    assert applied_policy_pcr0s() == before
    assert all(running_pcr0(name) == old_pcr0 for name in HOSTS)
    assert all(not host(name).file("/opt/nitro-wallet/releases/cluster-b").exists for name in HOSTS)


def test_rolling_upgrade_under_load_fails_no_signature() -> None:
    old_pcr0, new_pcr0 = release_pcr0("cluster-a"), release_pcr0("cluster-b")
    code, output, report = roll_under_load("cluster-b", [old_pcr0, new_pcr0])
    assert code == 0, output[-6000:]
    assert report.failures == [], report.failures[:20]
    assert len(report.signed) > 0
    assert set(report.per_relay()) == set(RELAYS.values())  # both served during the roll
    assert all(running_pcr0(name) == new_pcr0 for name in HOSTS)
    assert applied_policy_pcr0s() == [new_pcr0]  # only the new image after the last host
    for name in HOSTS:
        previous = host(name).file("/opt/nitro-wallet/releases/previous")
        assert previous.linked_to == "/opt/nitro-wallet/releases/cluster-a"


def test_broken_release_is_rolled_back_under_load() -> None:
    """Release cluster-c boots and answers health checks but cannot reach KMS (built to speak
    TLS to the simulated KMS, which speaks plain HTTP), so it cannot open an account. The
    first host rolls back to cluster-b and rejoins, the roll stops with the policy still
    widened, and no client sees a failed signature."""
    good = release_pcr0("cluster-b")
    broken = build("cluster-c", enclave_kms_endpoint_scheme="https")
    code, output, report = roll_under_load("cluster-c", [good, broken])
    assert code != 0
    assert "Upgrade of nitro-cl-1 to cluster-c failed" in output
    assert "The host is back on cluster-b and serving" in output
    assert report.failures == [], report.failures[:20]
    assert len(report.signed) > 0
    assert all(running_pcr0(name) == good for name in HOSTS)
    assert applied_policy_pcr0s() == sorted([good, broken])  # still widened: safe
    for relay in RELAYS.values():
        wait_ready(relay, timeout=10)
