"""Shared fixtures. Stack fixtures start the whole simulated appliance as processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_sim.stack import LocalStack, free_port


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """One appliance per test module: KMS, IMDS, vsock-proxy, enclave, relay.

    The key policy pins the image's PCR0 (pcr0 mode), so that a test may run a modified
    image and see it refused; tests/test_sealed_release.py runs the sealed default.
    The state lives in a short /tmp path: unix socket paths are limited to 107 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="nw-", dir="/tmp"))
    try:
        with LocalStack(root=root, relay_port=free_port(), key_policy_mode="pcr0") as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)
