"""Signing policies on the operator's side: YAML in, the enclave's canonical JSON out.

    compiled = compile_policy_text(Path("policy.yaml").read_text())
    Path("policy.json").write_bytes(compiled.canonical)   # into the enclave image
    print(compiled.sha256)                                 # show it next to PCR0

Compilation is three checks, each stopping at the first layer that fails:
1. the YAML is plain data: no duplicate keys (PyYAML would keep the last one), no
   floats (a JSON Schema ``integer`` accepts ``1.0``; the enclave does not), integers
   in decimal or 0x-hex only (YAML 1.1 reads ``010`` as 8), no timestamps or other
   non-JSON values, string keys only;
2. the published JSON Schema (``docs/policy.schema.json``, draft 2020-12), every
   violation reported with its path;
3. the enclave's own validator (:func:`enclave_app.policy.parse_policy`), which adds
   what a schema cannot say (unique names, declared ids, valid keys, ``min <= max``...).
The canonical bytes are what the enclave loads; their SHA-256 is the policy hash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from enclave_app.policy import (
    Policy,
    PolicyDocumentError,
    canonical_bytes,
    parse_policy,
    parse_policy_bytes,
)

SCHEMA_RESOURCE = "policy.schema.json"


class PolicyCompileError(ValueError):
    """The policy does not compile; ``problems`` lists each finding with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class CompiledPolicy:
    document: dict[str, Any]
    canonical: bytes
    sha256: str
    policy: Policy


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def schema() -> dict[str, Any]:
    """The policy JSON Schema shipped with this package."""
    text = resources.files("nitro_wallet").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, non-string keys and floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping keys must be strings, got {key!r}", key_node.start_mark
                )
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _refuse(tag: str, why: str) -> None:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(None, None, why, node.start_mark)

    _StrictLoader.add_constructor(tag, construct)


_refuse("tag:yaml.org,2002:float", "floats are not accepted: amounts are integers (wei)")
_refuse("tag:yaml.org,2002:timestamp", "timestamps are not accepted; quote the value")
_refuse("tag:yaml.org,2002:binary", "binary values are not accepted")
_refuse("tag:yaml.org,2002:set", "sets are not accepted; use a list")
_refuse("tag:yaml.org,2002:omap", "ordered maps are not accepted; use a mapping")
_refuse("tag:yaml.org,2002:pairs", "pairs are not accepted; use a mapping")
_PLAIN_INT_RE = re.compile(r"[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F][0-9a-fA-F_]*)")


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """Decimal (``_`` separators allowed) or 0x-hex; YAML 1.1's octal (``010`` is 8)
    and base-60 (``1:30`` is 90) spellings are refused rather than misread."""
    text = loader.construct_scalar(node)  # type: ignore[arg-type]
    if not isinstance(text, str) or _PLAIN_INT_RE.fullmatch(text) is None:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer {text!r}: write it in decimal or 0x-hex", node.start_mark
        )
    return int(text.replace("_", ""), 0)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:map",
    lambda loader, node: loader.construct_mapping(node, deep=True),  # type: ignore[arg-type]
)


def load_yaml(text: str) -> object:
    """Plain data from YAML (see the module docstring); PolicyCompileError otherwise."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyCompileError([f"YAML: {exc}"]) from None


def schema_problems(document: object) -> list[str]:
    """Every schema violation as ``<json path>: <message>``, sorted by path."""
    problems = []
    for error in _validator().iter_errors(document):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"policy{path}: {error.message}")
    return sorted(problems)


def compile_policy(document: object) -> CompiledPolicy:
    """Check a decoded document (schema, then the enclave's validator) and serialise it."""
    problems = schema_problems(document)
    if problems:
        raise PolicyCompileError(problems)
    try:
        parse_policy(document)
    except PolicyDocumentError as exc:
        raise PolicyCompileError([str(exc)]) from None
    if not isinstance(document, dict):  # the schema requires an object
        raise PolicyCompileError(["policy must be an object"])
    canonical = canonical_bytes(document)
    policy = parse_policy_bytes(canonical)  # exactly what the enclave will do at boot
    return CompiledPolicy(document, canonical, policy.sha256, policy)


def compile_policy_text(text: str) -> CompiledPolicy:
    """YAML (or JSON, which is YAML) text to a compiled policy."""
    return compile_policy(load_yaml(text))
