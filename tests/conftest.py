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

    The key policy pins the image's PCR0 (pcr0 mode), so that a test may run a modified
    image and see it refused; tests/test_sealed_release.py runs the sealed default.
    The state lives in a short /tmp path: unix socket paths are limited to 107 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="nw-", dir="/tmp"))
    try:
        options = {"key_policy_mode": "pcr0", **stack_options}
        with LocalStack(root=root, relay_port=free_port(), **options) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_nsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimEnclaveNsm]:
    """A simulator CA and a served simulated NSM (PCR0 ``tests.auditlog.PCR0``)."""
    yield from serve_nsm(tmp_path_factory)
