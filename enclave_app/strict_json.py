"""Strict JSON for every boundary that parses untrusted bytes (enclave frames, relay
bodies, the simulated KMS).

- Nesting depth is checked on the raw text *before* parsing, so a deeply nested
  document cannot exhaust the C stack of the parser (CPython's recursion guard is
  not a stack guard: any library in the process may raise the recursion limit, and
  server threads have smaller stacks than the main thread).
- No floats, NaN or Infinity: amounts are integers or 0x-hex.
- No duplicate object keys: two parsers must never read two different documents.
- Integers are bounded by CPython's 4300-digit default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_DEPTH = 64


class StrictJsonError(ValueError):
    """The text is not a document we accept; the message says why (no content echoed)."""


class FloatNotAllowedError(StrictJsonError):
    pass


#: Every byte but the four brackets (``bytes.translate`` deletes them at C speed).
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENERS = frozenset(b"[{")


def check_depth(text: str, max_depth: int) -> None:
    r"""Raise if arrays/objects nest deeper than ``max_depth`` (strings are skipped).

    A document with at most ``max_depth`` opening brackets (strings included) cannot
    nest deeper than that: two C-speed counts settle it. Otherwise the strings are cut
    out and the nesting is counted over the brackets alone, so the one Python loop runs
    over bracket characters, never over the text (a batch of 50 transactions: about
    100 brackets in 15 KB).

    Strings are cut the way a JSON parser reads them, up to the parser's first error:
    ``\\`` and ``\"`` are removed first (inside strings they are escapes; outside
    strings a backslash is already an error, and nothing after an error is parsed),
    then every ``"..."`` (the even pieces of a split on quotes are outside strings).
    What remains outside strings holds every structural bracket the parser reaches.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    brackets = outside.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > max_depth:
                raise StrictJsonError(f"nested more than {max_depth} levels deep")
        else:
            depth -= 1


def _refuse_float(text: str) -> Any:
    raise FloatNotAllowedError(
        "floating-point numbers are not accepted: send integers or 0x-hex strings "
        f"(got {text[:32]})"
    )


def _refuse_constant(text: str) -> Any:
    raise StrictJsonError(f"{text} is not valid JSON here")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # C-speed on the common path; find the culprit
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJsonError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return result


def _decoder(parse_float: Callable[[str], Any]) -> json.JSONDecoder:
    return json.JSONDecoder(
        parse_float=parse_float, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates
    )


#: One decoder for every default call, as ``json.loads`` keeps one for its defaults:
#: building a decoder (and its scanner) per document cost more than a small document's
#: parse. It holds no state between calls (the scanner's key memo is cleared per call).
_DECODER = _decoder(_refuse_float)


def loads(
    data: bytes | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    parse_float: Callable[[str], Any] | None = None,
) -> Any:
    """Parse strictly; raise StrictJsonError (FloatNotAllowedError for floats).

    ``parse_float`` may replace the refusal with a marker, for callers that report
    *where* a float was (JSON-RPC answers with the request id and the path).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise StrictJsonError("not UTF-8") from exc
    check_depth(text, max_depth)
    decoder = _DECODER if parse_float is None else _decoder(parse_float)
    try:
        if text.startswith("\ufeff"):  # json.loads refuses it before decoding, so do we
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return decoder.decode(text)
    except StrictJsonError:
        raise
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise StrictJsonError(f"invalid JSON: {exc}") from exc
