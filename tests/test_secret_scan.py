"""The secret scan (DESIGN.md invariant 1, issue 9): after 50 accounts, no private key
and no data key anywhere outside the enclave: not in storage, not in any log, not in any
response, and not in the live relay's memory (/proc/PID/mem).

The ground truth comes from unlocking every stored record as the measured enclave would
(the test holds the simulator CA). The enclave's own memory is the positive control: the
same scan must find every private key there (its key cache holds them), or a clean
relay would prove nothing about the scan.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import (
    create_account,
    eip1559,
    files_under,
    secret_forms,
    sign,
    stored_record,
    unlock_as_measured_enclave,
)

pytestmark = pytest.mark.stack

ACCOUNTS = 50
#: /proc/PID/maps: address range, permissions, offset, device, inode, path.
_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def writable_memory(pid: int) -> Iterator[tuple[str, bytes]]:
    """Every private writable mapping of ``pid`` (heap, arenas, stacks): where a secret
    the process ever held could be; code and read-only files cannot hold one."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for line in maps:
            found = _MAPS_LINE.match(line)
            if found is None or not found.group(3).startswith("rw"):
                continue
            name = found.group(4) or "[anonymous]"
            if name in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            start, end = int(found.group(1), 16), int(found.group(2), 16)
            try:
                memory.seek(start)
                yield f"{name}@{start:x}", memory.read(end - start)
            except OSError:
                continue  # a mapping that went away or cannot be read


def hits(pid: int, needles: dict[bytes, str]) -> dict[str, set[str]]:
    """Which needles (by label) occur in which of ``pid``'s writable mappings."""
    found: dict[str, set[str]] = {}
    for where, region in writable_memory(pid):
        for needle, label in needles.items():
            if needle in region:
                found.setdefault(label, set()).add(where)
    return found


@pytest.fixture(scope="module")
def fifty_accounts(stack: LocalStack) -> tuple[list[dict[str, Any]], list[bytes]]:
    """50 accounts created and each used to sign once; every response body kept."""
    responses: list[bytes] = []

    def create_and_sign(_: int) -> dict[str, Any]:
        account = create_account(stack)
        status, signed = sign(stack, account["account_id"], eip1559())
        assert status == 200, signed
        assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]
        responses.extend([repr(account).encode(), repr(signed).encode()])
        return account

    with ThreadPoolExecutor(4) as pool:
        accounts = list(pool.map(create_and_sign, range(ACCOUNTS)))
    for path in ("/v1/accounts?limit=100", f"/v1/accounts/{accounts[0]['account_id']}"):
        responses.append(repr(http_json("GET", stack.relay_url + path)).encode())
    for path in ("/metrics", "/readyz", "/openapi.json"):
        with urllib.request.urlopen(stack.relay_url + path, timeout=10) as answer:
            responses.append(answer.read())
    return accounts, responses


def test_no_key_in_storage_logs_responses_or_the_relays_memory_but_in_the_enclaves(
    stack: LocalStack, fifty_accounts: tuple[list[dict[str, Any]], list[bytes]]
) -> None:
    accounts, responses = fifty_accounts
    secrets: dict[str, tuple[bytes, bytes]] = {}
    for account in accounts:
        record = stored_record(stack, account["account_id"])
        private_key, data_key = unlock_as_measured_enclave(stack, record)
        assert Account.from_key(private_key).address == account["address"]
        secrets[account["account_id"]] = (private_key, data_key)

    haystacks = {p: p.read_bytes() for p in files_under(stack.relay_db.parent)}
    haystacks.update({p: p.read_bytes() for p in files_under(stack.log_dir)})
    consoles = list((stack.sim_dir / "enclaves").rglob("console.log"))
    assert consoles, "the enclave's console log is part of what is searched"
    haystacks.update({p: p.read_bytes() for p in consoles})
    audit = stack.sim_dir / "kms" / "audit.log"
    haystacks[audit] = audit.read_bytes()
    haystacks.update({Path(f"response-{i}"): body for i, body in enumerate(responses)})
    for account_id, (private_key, data_key) in secrets.items():
        for secret, what in ((private_key, "private key"), (data_key, "data key")):
            for form in secret_forms(secret):
                for where, content in haystacks.items():
                    assert form not in content, f"{what} of {account_id} in {where}"

    needles: dict[bytes, str] = {}
    for account_id, (private_key, data_key) in secrets.items():
        for secret, what in ((private_key, "private key"), (data_key, "data key")):
            needles[secret] = f"{what} of {account_id} (raw)"
            needles[secret.hex().encode()] = f"{what} of {account_id} (hex)"

    relay_pid = stack.services["relay"].pid
    assert relay_pid is not None
    started = time.monotonic()
    in_relay = hits(relay_pid, needles)
    assert in_relay == {}, f"key material in the relay's memory: {sorted(in_relay)[:5]}"

    enclave = stack.enclave_record()
    assert enclave is not None
    in_enclave = hits(int(enclave["EnclaveProcessID"]), needles)
    private_keys_found = {label for label in in_enclave if label.startswith("private key")}
    missing = ACCOUNTS - len({label.split()[3] for label in private_keys_found})
    assert missing == 0, f"the positive control failed: {missing} keys not in the enclave"
    print(
        f"scanned the relay's and the enclave's writable memory in "
        f"{time.monotonic() - started:.1f}s: relay 0 hits, enclave {len(in_enclave)} hits"
    )
