"""Shared fixtures. Stack fixtures start the whole simulated appliance as processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nitro_sim.stack import LocalStack, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One appliance per test module: KMS, IMDS, vsock-proxy, enclave, relay."""
    root = tmp_path_factory.mktemp("stack")
    with LocalStack(root=root, relay_port=free_port()) as running:
        yield running
