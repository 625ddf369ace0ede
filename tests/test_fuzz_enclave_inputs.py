"""Hypothesis against everything the enclave parses from the parent (issue 9): the frame
decoder, and the transaction, typed-data and message parsers. In-process, each input
gets a result or a typed ``EnclaveError``, nothing else; through the live appliance
(relay HTTP, and raw frames straight to the enclave's vsock port as any local process
could send), every answer is a 4xx or a typed refusal, and afterwards the relay is ready
and the enclave signs. Examples per test: the hypothesis profile (docs/testing.md).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_app import wire
from enclave_app.errors import EnclaveError
from enclave_app.signing import parse_transaction
from enclave_app.signing.messages import message_bytes
from enclave_app.signing.typed_data import hash_typed_data
from enclave_app.transport import Transport
from nitro_sim.enclave_runner import probe
from nitro_sim.stack import ENCLAVE_CID, ENCLAVE_PORT, LocalStack, http_json, http_status
from tests import strategies as gen
from tests.stack_helpers import create_account, eip1559

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid object with one field replaced, removed or added: near-misses."""
    value = dict(draw(valid))
    how = draw(st.sampled_from(["replace", "remove", "add"]))
    if how == "add" or not value:
        value[draw(st.text(max_size=12))] = draw(json_values)
        return value
    key = draw(st.sampled_from(sorted(value)))
    if how == "remove":
        del value[key]
    else:
        value[key] = draw(json_values)
    return value


transaction_inputs = st.one_of(
    st.dictionaries(st.text(max_size=16), json_values, max_size=8),
    st.sampled_from([0, 1, 2, 3, 4]).flatmap(
        lambda tx_type: mutated(gen.transactions(tx_type).map(lambda case: case.json))
    ),
)
typed_data_inputs = st.one_of(json_values, mutated(gen.typed_data()))
frames = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"version": json_values, "id": json_values, "op": json_values, "params": json_values}
    ).map(lambda value: json.dumps(value).encode()),
)


# ------------------------------------------------------------------------- in-process


@SETTINGS
@given(body=frames)
def test_the_frame_decoder_gives_a_request_or_a_typed_error(body: bytes) -> None:
    try:
        request = wire.parse_request(body)
    except EnclaveError:
        return
    assert isinstance(request.op, str)


@SETTINGS
@given(stream=st.binary(max_size=512), cap=st.integers(min_value=1, max_value=256))
def test_reading_a_frame_from_any_byte_stream_ends_in_a_frame_or_a_typed_error(
    stream: bytes, cap: int
) -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.settimeout(2)
        writer.sendall(stream)
        writer.shutdown(socket.SHUT_WR)
        try:
            while (body := wire.read_frame(reader, cap)) is not None:
                assert len(body) <= cap
        except EnclaveError:
            pass


@SETTINGS
@given(tx=transaction_inputs)
def test_the_transaction_parser_gives_a_transaction_or_a_typed_error(tx: dict[str, Any]) -> None:
    with contextlib.suppress(EnclaveError):
        parse_transaction(tx)


@SETTINGS
@given(data=typed_data_inputs)
def test_the_typed_data_parser_gives_a_hash_or_a_typed_error(data: Any) -> None:
    with contextlib.suppress(EnclaveError):
        assert len(hash_typed_data(data).digest) == 32


@SETTINGS
@given(message=json_values | st.binary(max_size=64).map(lambda raw: "0x" + raw.hex()))
def test_the_message_parser_gives_bytes_or_a_typed_error(message: Any) -> None:
    with contextlib.suppress(EnclaveError):
        assert isinstance(message_bytes(message), bytes)


# ------------------------------------------------------------- through the appliance


@pytest.fixture(scope="module")
def account(stack: LocalStack) -> dict[str, Any]:
    return create_account(stack)


def still_healthy(stack: LocalStack, account: dict[str, Any]) -> None:
    assert http_status(f"{stack.relay_url}/readyz") == 200
    status, signed = http_json(
        "POST",
        f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
        {"transaction": eip1559()},
    )
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]


def refused_or_signed(status: int, body: dict[str, Any]) -> None:
    assert status < 500, body  # a 4xx with a code, or signed: never a 5xx
    if status >= 400:
        assert isinstance(body.get("error", {}).get("code"), str), body


@pytest.mark.stack
@SETTINGS
@given(kind=st.sampled_from(["transaction", "typed-data", "message"]), data=st.data())
def test_hostile_signing_bodies_through_the_relay_leave_it_healthy(
    stack: LocalStack, account: dict[str, Any], kind: str, data: st.DataObject
) -> None:
    field, strategy = {
        "transaction": ("transaction", transaction_inputs),
        "typed-data": ("typed_data", typed_data_inputs),
        "message": ("message", json_values),
    }[kind]
    body = {field: data.draw(strategy)}
    status, answer = http_json(
        "POST", f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/{kind}", body
    )
    refused_or_signed(status, answer)


@pytest.mark.stack
@SETTINGS
@given(body=frames)
def test_hostile_frames_to_the_enclave_port_leave_it_serving(
    stack: LocalStack, body: bytes
) -> None:
    """What any local process can send to the enclave's vsock port, framed or not."""
    transport = Transport.unix(stack.sim_dir / "vsock")
    with transport.connect(ENCLAVE_CID, ENCLAVE_PORT, timeout=5) as sock:
        sock.sendall(struct.pack(">I", len(body)) + body)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the enclave may close on a broken frame: allowed, it must live on
    assert probe(transport, ENCLAVE_CID, ENCLAVE_PORT)


@pytest.mark.stack
def test_after_the_fuzzing_the_relay_and_the_enclave_are_healthy(
    stack: LocalStack, account: dict[str, Any]
) -> None:
    still_healthy(stack, account)
