"""One simulated appliance and one anvil for the whole client suite; the result table."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.toolchain import Anvil, Row, missing_toolchain, table

ROWS: list[Row] = []


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil | None]:
    """A real anvil on a free port (None when the toolchain is missing: the tests that
    need it then skip, or fail under NITRO_WALLET_REQUIRE_CLIENTS=1)."""
    if missing_toolchain() is not None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="nw-anvil-", dir="/tmp"))
    try:
        node = Anvil(directory / "anvil.log")
        try:
            yield node
        finally:
            node.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack_options(anvil: Anvil | None) -> dict[str, Any]:
    """The relay of this module's stack uses anvil as its upstream node."""
    return {"chain_id": 31337, "upstream_rpc_url": anvil.url if anvil else None}


def record(rows: list[Row]) -> None:
    ROWS.extend(rows)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        failed = sum(not row.ok for row in ROWS)
        terminalreporter.section(f"Ethereum clients: {len(ROWS)} checks, {failed} failed")
        terminalreporter.write_line(table(ROWS))
