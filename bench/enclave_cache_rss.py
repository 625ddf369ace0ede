"""Enclave RSS with N keys cached: is the default key cache bound safe for memory?

    .venv/bin/python bench/enclave_cache_rss.py [--entries 10000] [--json]

Runs in a fresh process that imports what the enclave imports, builds the enclave's
objects (key cache, vault, ops with their parsed-record cache, a boto3 KMS client, the
server with its I/O thread and worker pool on a unix socket), then fills both caches
through the code paths a warm signature uses: each record is parsed by
``Operations`` (so it sits in the parsed-record cache) and its key object
(``SigningKey``) is put in the key cache under that record's cache key. The records
have the production sizes (AES-GCM sealed key, a KMS CiphertextBlob); no KMS is
needed, since only the memory held per entry matters. Prints VmRSS before and after.

``measure(entries)`` returns the figures for the bench harness.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import enclave_app.__main__  # noqa: F401 - everything the enclave imports
from enclave_app.accounts import AccountVault
from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.authenticate import Authenticator
from enclave_app.auth.receipts import ReceiptChain
from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from enclave_app.gate import Gate
from enclave_app.key_cache import KeyCache
from enclave_app.kms import AttestedKms, AwsCredentials
from enclave_app.ops import Operations
from enclave_app.policy import PolicyEngine, parse_policy
from enclave_app.server import EnclaveServer
from enclave_app.signing.keys import SigningKey, generate_private_key
from enclave_app.transport import Transport

CIPHERTEXT_BLOB_BYTES = 184  # a KMS CiphertextBlob for a 256-bit data key
SEALED_KEY_BYTES = 1 + 12 + 32 + 16  # version, nonce, key, GCM tag
KEY_ID = "arn:aws:kms:us-east-1:111122223333:key/0d3c2b1a-0000-4000-8000-000000000001"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(entries: int) -> dict[str, Any]:
    """Fill the caches with ``entries`` accounts in this process; the RSS figures."""
    cache: KeyCache[SigningKey] = KeyCache(entries, 900)
    kms = AttestedKms(None, "https://127.0.0.1:1", "us-east-1", (KEY_ID,))  # type: ignore[arg-type]
    kms._client(AwsCredentials("AKIAEXAMPLEEXAMPLE12", "secret"))  # botocore's KMS model loaded
    vault = AccountVault(kms, cache)
    gate = Gate(  # an empty policy and an unattested receipt chain: only memory matters here
        PolicyEngine(parse_policy({"version": 1, "principals": {}, "rules": []})),
        Authenticator(StampVerifier(ReplayMemory()), ApprovalVerifier(ReplayMemory())),
        ReceiptChain(Ed25519PrivateKey.generate(), secrets.token_bytes(16), b""),
    )
    operations = Operations(
        None,  # type: ignore[arg-type]
        vault,
        gate=gate,
        allow_pre_eip155=False,
        record_cache_entries=entries,
    )
    directory = Path(tempfile.mkdtemp(prefix="nw-rss-", dir="/tmp"))
    server = EnclaveServer(Transport.unix(directory).listen(16, 5000), operations)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()  # the I/O thread and the worker pool, as in the running enclave
    gc.collect()
    before = rss_mib()
    for _ in range(entries):
        key = SigningKey(generate_private_key())
        record = {
            "account_id": str(uuid.uuid4()),
            "address": key.address,
            "key_id": KEY_ID,
            "encrypted_private_key": base64.b64encode(
                secrets.token_bytes(SEALED_KEY_BYTES)
            ).decode(),
            "encrypted_data_key": base64.b64encode(
                secrets.token_bytes(CIPHERTEXT_BLOB_BYTES)
            ).decode(),
            "created_by": "relay:trading-bot",  # sealed metadata, as every new account has
        }
        account = operations._account(record)  # the parsed-record cache, as a request fills it
        cache.put(account.cache_key, key)
    gc.collect()
    after = rss_mib()
    assert len(cache) == entries
    server.stop()
    serving.join(timeout=10)
    vault.close()
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "entries": entries,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "per_entry_bytes": round((after - before) * 1024 * 1024 / max(entries, 1)),
        "pid": os.getpid(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.entries)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"keys cached                {figures['entries']}")
        print(f"enclave RSS, caches empty  {figures['rss_before_mib']:7.1f} MiB")
        print(f"enclave RSS, caches full   {figures['rss_after_mib']:7.1f} MiB")
        print(f"per cached account         {figures['per_entry_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
