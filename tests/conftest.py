"""Shared fixtures. Stack fixtures start the whole simulated appliance as processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_sim.stack import LocalStack


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """One appliance per test module: KMS, IMDS, vsock-proxy, enclave, relay.

    The state lives in a short /tmp path: unix socket paths are limited to 107 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="nw-", dir="/tmp"))
    try:
        with LocalStack(root=root) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)
