"""Framing between parent and enclave, over real socket pairs."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_app import wire
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.transport import Transport


def pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    return left, right


def test_a_request_round_trips() -> None:
    left, right = pair()
    request = wire.Request("id-1", "sign_transaction", {"transaction": {"nonce": 1}})
    wire.write_frame(left, wire.request_frame(request))
    body = wire.read_frame(right)
    assert body is not None
    assert wire.parse_request(body) == request


def test_the_cap_is_checked_before_the_body_is_read() -> None:
    left, right = pair()
    left.sendall(struct.pack(">I", 1025) + b"x" * 10)
    with pytest.raises(EnclaveError) as error:
        wire.read_frame(right, max_bytes=1024)
    assert error.value.code is ErrorCode.FRAME_TOO_LARGE
    # Only the header was consumed: the 10 body bytes are still in the socket.
    assert right.recv(100) == b"x" * 10


def test_clean_end_of_stream_and_truncated_frames() -> None:
    left, right = pair()
    left.close()
    assert wire.read_frame(right) is None
    left, right = pair()
    left.sendall(struct.pack(">I", 100) + b"{}")
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(EnclaveError, match="mid-frame"):
        wire.read_frame(right)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xff\xfe", ErrorCode.BAD_FRAME),
        (b"[1]", ErrorCode.BAD_FRAME),
        (b'{"v": 2, "id": "a", "op": "health"}', ErrorCode.UNSUPPORTED_VERSION),
        (b'{"v": 1, "id": "", "op": "health"}', ErrorCode.BAD_FRAME),
        (b'{"v": 1, "id": "a", "op": 5}', ErrorCode.BAD_FRAME),
        (b'{"v": 1, "id": "a", "op": "x", "params": []}', ErrorCode.BAD_FRAME),
        (b'{"v": 1, "id": "a", "op": "x", "params": {"value": 1.5}}', ErrorCode.BAD_FRAME),
        (b'{"v": 1, "id": "a", "op": "x", "params": {"value": NaN}}', ErrorCode.BAD_FRAME),
        (
            b'{"v": 1, "id": "a", "op": "x", "params": {"value": 1' + b"0" * 5000 + b"}}",
            ErrorCode.BAD_FRAME,
        ),
        (b"[" * 100_000, ErrorCode.BAD_FRAME),
    ],
)
def test_hostile_frames_get_typed_errors(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(EnclaveError) as error:
        wire.parse_request(body)
    assert error.value.code is code


def test_error_responses_carry_their_code() -> None:
    frame = wire.error_frame("r", EnclaveError(ErrorCode.KMS_ATTESTATION_DENIED, "no"))
    with pytest.raises(EnclaveError) as error:
        wire.parse_response(frame, "r")
    assert error.value.code is ErrorCode.KMS_ATTESTATION_DENIED
    unknown = b'{"v": 1, "id": "r", "ok": false, "error": {"code": "??", "message": "m"}}'
    with pytest.raises(EnclaveError) as error:
        wire.parse_response(unknown, "r")
    assert error.value.code is ErrorCode.INTERNAL


def test_a_response_for_another_request_is_refused() -> None:
    with pytest.raises(EnclaveError, match="does not match"):
        wire.parse_response(wire.ok_frame("other", {}), "mine")


def test_simulated_vsock_maps_cid_and_port_to_a_socket_path(tmp_path: object) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path))
    transport = Transport.from_spec(f"unix:{directory}")
    assert transport.spec == f"unix:{directory}"
    listener = transport.listen(16, 5000)
    try:
        assert (directory / "16_5000.sock").exists()
        client = transport.connect(16, 5000, timeout=5)
        server, _ = listener.accept()
        client.sendall(b"ping")
        assert server.recv(4) == b"ping"
        client.close()
        server.close()
        with pytest.raises(FileNotFoundError):
            transport.connect(16, 5001, timeout=1)
    finally:
        listener.close()
    for bad in ("", "unix:", "tcp:1", "vsock:3"):
        with pytest.raises(ValueError, match="transport"):
            Transport.from_spec(bad)


def test_deep_nesting_is_refused_before_parsing_even_with_a_raised_recursion_limit() -> None:
    """Libraries (py_ecc, py-evm) raise the recursion limit on import; the parser's C
    stack must still be safe, in a thread with a small stack."""
    import sys
    import threading

    from enclave_app import strict_json

    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    outcome: list[BaseException] = []

    def parse() -> None:
        try:
            strict_json.loads(b"[" * 500_000 + b"]" * 500_000)
        except BaseException as exc:
            outcome.append(exc)

    try:
        threading.stack_size(256 * 1024)
        worker = threading.Thread(target=parse)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(0)
        sys.setrecursionlimit(previous)
    assert len(outcome) == 1
    assert isinstance(outcome[0], strict_json.StrictJsonError)
    assert "nested" in str(outcome[0])
    assert strict_json.loads('{"a": ["[{", "\\"]"]}') == {"a": ["[{", '"]']}


@pytest.mark.parametrize("bound", [1, 2, 5, 64])
def test_depth_bound_is_exact_with_and_without_the_bracket_count_shortcut(bound: int) -> None:
    from enclave_app import strict_json

    at_bound = "[" * bound + "]" * bound
    over = "[" * (bound + 1) + "]" * (bound + 1)
    assert strict_json.loads(at_bound, max_depth=bound) is not None  # count == bound: no scan
    with pytest.raises(strict_json.StrictJsonError, match="nested"):
        strict_json.loads(over, max_depth=bound)
    # Brackets inside strings push the count over the bound: the scan runs and skips them.
    if bound > 1:
        padded = '{"s": "' + "[{" * bound + '", "a": ' + "[" * (bound - 1) + "]" * (bound - 1) + "}"
        assert strict_json.loads(padded, max_depth=bound)["s"] == "[{" * bound
    # Many shallow siblings: count far above the bound, depth 2.
    siblings = "[" + ",".join(["[]"] * (bound * 3)) + "]"
    assert len(strict_json.loads(siblings, max_depth=2)) == bound * 3


def _reference_depth(text: str) -> int:
    """The deepest nesting outside strings, one character at a time (the oracle)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


_JSON_TEXT = st.text(alphabet='[]{}"\\ab', max_size=12)
_JSON_VALUES = st.recursive(
    st.none() | st.integers() | _JSON_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_JSON_TEXT, children, max_size=4)
    ),
    max_leaves=40,
)


@given(value=_JSON_VALUES, bound=st.integers(min_value=0, max_value=8))
def test_the_depth_check_agrees_with_a_scan_on_documents(value: object, bound: int) -> None:
    """Strings full of brackets, quotes and backslashes: the depth check refuses exactly
    the documents that nest deeper than the bound."""
    from enclave_app import strict_json

    text = json.dumps(value)
    if _reference_depth(text) > bound:
        with pytest.raises(strict_json.StrictJsonError, match="nested"):
            strict_json.check_depth(text, bound)
    else:
        strict_json.check_depth(text, bound)


@given(text=st.text(alphabet='[]{}"\\ a,:0', max_size=80), bound=st.integers(0, 6))
def test_the_depth_check_covers_everything_the_parser_reaches(text: str, bound: int) -> None:
    """Any text, valid or not: what the check lets through never nests deeper than the
    bound up to the point where the parser stops (the end, or its first error)."""
    from enclave_app import strict_json

    try:
        strict_json.check_depth(text, bound)
    except strict_json.StrictJsonError:
        return
    try:
        json.loads(text)
        reached = len(text)
    except json.JSONDecodeError as exc:
        reached = exc.pos + 1
    assert _reference_depth(text[:reached]) <= bound
