"""Shared fixtures. Stack fixtures start the whole simulated appliance as processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_sim.stack import LocalStack, free_port
from tests.auditlog import SimEnclaveNsm, serve_nsm


@pytest.fixture(scope="module")
def stack_options() -> dict[str, Any]:
    """Extra LocalStack settings for ``stack``: a test module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def stack(stack_options: dict[str, Any]) -> Iterator[LocalStack]:
    """One appliance per test module: KMS, IMDS, vsock-proxy, enclave, relay.

    The state lives in a short /tmp path: unix socket paths are limited to 107 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="nw-", dir="/tmp"))
    try:
        with LocalStack(root=root, relay_port=free_port(), **stack_options) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_nsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimEnclaveNsm]:
    """A simulator CA and a served simulated NSM (PCR0 ``tests.auditlog.PCR0``)."""
    yield from serve_nsm(tmp_path_factory)
