"""The README's and docs/api.md's shell examples run against a simulated appliance.

Every fenced ``sh`` block is an example an operator will paste. Each document's blocks
run in order in one bash (``set -euo pipefail``: variables such as ``$ID`` carry from
one block to the next, as in a terminal), against a stack started on free ports. A block
that cannot run here says so, with the reason, in an HTML comment right before it:

    <!-- doc-test: skip (needs root, podman and a systemd container) -->

Bindings (what the text says -> what the harness uses):
- ``http://127.0.0.1:8080`` -> the test stack's relay; ``.dev-state`` -> its state
  directory; ``.venv/bin/`` -> this virtualenv's ``bin/``;
- ``$TOKEN`` (and ``<TOKEN>``) -> the stack's API token once the relay authenticates
  callers (empty until then); any other ``<PLACEHOLDER>`` fails the test, so examples
  never grow values nobody can fill in.

Checks: exit status 0 (``curl`` runs with ``--fail-with-body``: an HTTP error fails the
block); every answer printed by ``curl`` is JSON; no REST answer is an ``error`` object
and no JSON-RPC answer carries ``error``; and each ``# {...}`` comment that documents an
answer's shape matches an answer of its block (same keys).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nitro_sim.stack import LocalStack

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/api.md")
_FENCE = re.compile(r"^```(\S*)\s*$")
_SKIP = re.compile(r"^<!-- doc-test: skip \((.+)\) -->$")
_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")
_DOCUMENTED_ANSWER = re.compile(r"^#\s*(\{.*\}|\[.*\])\s*$")
BOUND_PLACEHOLDERS = {"TOKEN"}

CURL_WRAPPER = r"""
doctest_n=0
curl() {
  local out status=0
  out=$(command curl --silent --show-error --fail-with-body "$@") || status=$?
  doctest_n=$((doctest_n + 1))
  printf '%s' "$out" > "$DOCTEST_OUT/$DOCTEST_BLOCK.$BASHPID.$doctest_n.$RANDOM.json"
  if [ "$status" -ne 0 ]; then
    printf 'curl failed (%s): %s\n%s\n' "$status" "$*" "$out" >&2
    return "$status"
  fi
  printf '%s\n' "$out"
}
"""


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    text: str
    skip_reason: str | None

    @property
    def documented_answers(self) -> list[Any]:
        answers = []
        for line in self.text.splitlines():
            match = _DOCUMENTED_ANSWER.match(line.strip())
            if match:
                answers.append(json.loads(match.group(1)))
        return answers


def extract(document: str) -> list[Block]:
    """The ``sh`` blocks of a Markdown file, with their skip markers."""
    lines = (ROOT / document).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("sh", "bash", "shell"):
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skip = _SKIP.match(before.strip())
            text = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(document, i + 1, text, skip.group(1) if skip else None))
        i = end + 1
    return blocks


def test_every_skipped_example_gives_a_reason_and_the_rest_is_runnable() -> None:
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        markers = [line for line in text.splitlines() if "doc-test" in line]
        for marker in markers:
            assert _SKIP.match(marker.strip()), f"{document}: malformed marker {marker!r}"
        runnable = [b for b in extract(document) if b.skip_reason is None]
        assert runnable, f"{document} has no runnable example"
        for block in runnable:
            unknown = set(_PLACEHOLDER.findall(block.text)) - BOUND_PLACEHOLDERS
            assert not unknown, f"{document}:{block.line}: unbound placeholders {unknown}"


def bind(text: str, stack: LocalStack, venv_bin: Path) -> str:
    bound = text.replace("http://127.0.0.1:8080", stack.relay_url)
    bound = bound.replace(".venv/bin/", f"{venv_bin}/")
    bound = re.sub(r"(?<![\w/])\.dev-state\b", str(stack.root), bound)
    return bound.replace("<TOKEN>", "$TOKEN")


def script(blocks: list[Block], stack: LocalStack, venv_bin: Path) -> str:
    parts = ["set -euo pipefail", CURL_WRAPPER]
    for index, block in enumerate(blocks):
        parts.append(f"DOCTEST_BLOCK={index}")
        parts.append(f"echo '--- example at {block.document}:{block.line}' >&2")
        parts.append(bind(block.text, stack, venv_bin))
    return "\n".join(parts) + "\n"


def _answers(directory: Path, index: int) -> list[tuple[str, Any]]:
    found = []
    for path in sorted(directory.glob(f"{index}.*.json")):
        raw = path.read_text()
        try:
            found.append((path.name, json.loads(raw)))
        except json.JSONDecodeError:
            pytest.fail(f"an answer is not JSON: {raw[:200]!r}")
    return found


def _check_answer(where: str, answer: Any) -> None:
    items = answer if isinstance(answer, list) else [answer]
    for item in items:
        assert isinstance(item, dict), f"{where}: answer {item!r} is not an object"
        assert "error" not in item, f"{where}: the example got an error: {item}"
        if item.get("jsonrpc") == "2.0":
            assert "result" in item, f"{where}: JSON-RPC answer without result: {item}"


def _same_shape(documented: Any, actual: Any) -> bool:
    if isinstance(documented, dict):
        return isinstance(actual, dict) and set(documented) == set(actual)
    if isinstance(documented, list):
        return isinstance(actual, list) and len(documented) == len(actual)
    return True


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [tool for tool in ("curl", "jq", "openssl") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the examples need {missing}: .ci/run installs them")
        pytest.skip(f"the examples need {missing}")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_examples_of_a_document_run(
    document: str, tools: None, stack: LocalStack, tmp_path: Path
) -> None:
    blocks = [b for b in extract(document) if b.skip_reason is None]
    answers_dir = tmp_path / "answers"
    answers_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    venv_bin = Path(sys.executable).parent
    env = {
        **stack.env(),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "DOCTEST_OUT": str(answers_dir),
        "TOKEN": str(getattr(stack, "api_token", "")),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", "-c", script(blocks, stack, venv_bin)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"an example of {document} failed (exit {result.returncode}); the last "
        f"'--- example at' line names it:\n{result.stderr[-3000:]}"
    )
    for index, block in enumerate(blocks):
        where = f"{document}:{block.line}"
        answers = [answer for _, answer in _answers(answers_dir, index)]
        assert answers, f"{where}: the example printed no answer"
        for answer in answers:
            _check_answer(where, answer)
        for documented in block.documented_answers:
            assert any(_same_shape(documented, a) for a in answers), (
                f"{where}: no answer has the documented shape {documented}; got {answers}"
            )
