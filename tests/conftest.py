"""Shared fixtures and the test tiers.

Tiers (docs/testing.md): ``make test-unit`` runs the tests marked neither ``process``,
``stack`` nor ``slow``, with every process start refused (``tests.process_guard``);
``make test-fast`` adds the process and stack tests; ``make test`` adds the ``slow``
ones (2,000-example property runs, molecule). ``NITRO_WALLET_HYPOTHESIS`` picks the
hypothesis profile: ``unit`` (few examples), ``default``, ``thorough`` (``make test``).
Stack fixtures start the whole simulated appliance as processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from nitro_sim.stack import LocalStack
from tests.auditlog import SimEnclaveNsm, serve_nsm
from tests.process_guard import forbid_processes

TIER_ENV = "NITRO_WALLET_TEST_TIER"
HYPOTHESIS_ENV = "NITRO_WALLET_HYPOTHESIS"
#: Examples per property test when a test does not set its own count.
PROFILE_EXAMPLES = {"unit": 20, "default": 100, "thorough": 2000}
for _name, _examples in PROFILE_EXAMPLES.items():
    settings.register_profile(_name, max_examples=_examples, deadline=None, database=None)
settings.load_profile(os.environ.get(HYPOTHESIS_ENV, "default"))

#: The way back from the unit tier's guard, while it is on.
_GUARD: list[Callable[[], None]] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """From here on (fixtures and tests; not module imports), no process may start."""
    if os.environ.get(TIER_ENV) == "unit" and not _GUARD:
        _GUARD.append(forbid_processes())


def pytest_unconfigure(config: pytest.Config) -> None:
    while _GUARD:
        _GUARD.pop()()


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
        with LocalStack(root=root, **options) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_nsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimEnclaveNsm]:
    """A simulator CA and a served simulated NSM (PCR0 ``tests.auditlog.PCR0``)."""
    yield from serve_nsm(tmp_path_factory)
