"""A ``closure`` contract for import-linter, and the one place that reads the contracts.

A closure contract checks that everything a set of modules brings into a process lies
within an allow-list: their imports, the imports of those, and so on, plus the package
``__init__`` modules that Python runs on the way. It is what a wheel with only those
modules needs: ``scripts/build_wheels.py`` puts exactly ``reach(...)`` of a wheel's
packages into it, and the ``relay`` contract bounds what that may be for the relay.

    [[tool.importlinter.contracts]]
    id = "relay"
    type = "closure"
    source_modules = ["parent_app"]              # packages: every descendant is a source
    allowed_modules = ["parent_app", "parent_app.**", "enclave_app", "enclave_app.wire"]

Registered in pyproject.toml as ``closure: scripts.layering.ClosureContract`` (lint-imports
runs from the repository root, which it puts on ``sys.path``).
"""

from __future__ import annotations

import tomllib
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grimp
from importlinter import Contract, ContractCheck, fields, output

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def contract(contract_id: str, pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The [[tool.importlinter.contracts]] entry with this id."""
    with pyproject.open("rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    for entry in contracts:
        if entry.get("id") == contract_id:
            found: dict[str, Any] = entry
            return found
    raise KeyError(f"no import-linter contract with id {contract_id!r} in {pyproject}")


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reach(graph: grimp.ImportGraph, packages: Iterable[str]) -> dict[str, str | None]:
    """Every module a process loads to use ``packages`` (all their descendants), mapped to
    the module that brought it in (None for the packages' own modules)."""
    roots = tuple(packages)
    sources = sorted(
        m for m in graph.modules if any(m == r or m.startswith(r + ".") for r in roots)
    )
    reached_from: dict[str, str | None] = dict.fromkeys(sources)
    queue = deque(sources)
    while queue:
        module = queue.popleft()
        for imported in [
            *_ancestors(module),
            *sorted(graph.find_modules_directly_imported_by(module)),
        ]:
            if imported not in reached_from:
                reached_from[imported] = module
                queue.append(imported)
    return reached_from


class ClosureContract(Contract):
    """Every module reachable from ``source_modules`` must match ``allowed_modules``."""

    type_name = "closure"

    source_modules = fields.ListField(subfield=fields.ModuleExpressionField())
    allowed_modules = fields.ListField(subfield=fields.ModuleExpressionField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        allowed: set[str] = set()
        for expression in self.allowed_modules:  # type: ignore[attr-defined]
            text = expression.expression
            allowed |= graph.find_matching_modules(text) if "*" in text else {text}
        sources = [e.expression for e in self.source_modules]  # type: ignore[attr-defined]
        reached_from = reach(graph, sources)
        outside = sorted(m for m in reached_from if m not in allowed)
        chains = {m: self._chain(m, reached_from) for m in outside}
        return ContractCheck(kept=not outside, metadata={"chains": chains})

    @staticmethod
    def _chain(module: str, reached_from: dict[str, str | None]) -> list[str]:
        chain = [module]
        while (previous := reached_from[chain[-1]]) is not None:
            chain.append(previous)
        return list(reversed(chain))

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, chain in check.metadata["chains"].items():
            output.print_error(f"{module} is outside the allowed set, reached by:", bold=False)
            output.print_error("    " + " -> ".join(chain), bold=False)
            output.new_line()
