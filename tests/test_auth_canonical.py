"""The canonical request digest and the X-Stamp / X-Approvals encodings."""

from __future__ import annotations

import hashlib

import pytest

from enclave_app.auth import canonical
from enclave_app.auth.canonical import Approval, Stamp
from enclave_app.errors import EnclaveError, ErrorCode

SIG = bytes(range(64))
NONCE = bytes(range(16))


def test_request_digest_matches_the_documented_layout_byte_for_byte() -> None:
    # Built by hand from docs/api.md, not through the module's helpers.
    body = b'{"transaction":{"nonce":0}}'
    expected = hashlib.sha256(
        b"nitro-wallet/request/v1\x00"
        + b"\x00\x00\x00\x04POST"
        + b"\x00\x00\x00\x3e/v1/accounts/00000000-0000-4000-8000-000000000000/sign/message"
        + hashlib.sha256(body).digest()
    ).digest()
    target = "/v1/accounts/00000000-0000-4000-8000-000000000000/sign/message"
    assert len(target) == 0x3E
    assert canonical.request_digest("POST", target, body) == expected


def test_fields_are_length_prefixed_so_moving_a_boundary_changes_the_digest() -> None:
    assert canonical.request_digest("POST", "/a", b"") != canonical.request_digest(
        "POSTX", "/a", b""
    )
    assert canonical.request_digest("POST", "/v1?x=1", b"") != canonical.request_digest(
        "POST", "/v1", b"?x=1"
    )


@pytest.mark.parametrize(
    ("method", "target"),
    [("post", "/"), ("", "/"), ("POST", "v1"), ("POST", "/a b"), ("POST", "/" + "a" * 2048)],
)
def test_request_digest_refuses_what_is_not_a_request_line(method: str, target: str) -> None:
    with pytest.raises(EnclaveError) as caught:
        canonical.request_digest(method, target, b"")
    assert caught.value.code == ErrorCode.INVALID_PARAMS


def test_stamp_message_layout() -> None:
    digest = bytes(32)
    message = canonical.stamp_message("ops-1", 0x0102030405, NONCE, digest)
    assert message == (
        b"nitro-wallet/stamp/v1\x00\x00\x00\x00\x05ops-1"
        + bytes.fromhex("0000000102030405")
        + NONCE
        + digest
    )


def test_approval_message_layout() -> None:
    message = canonical.approval_message("alice", 7, b"\x11" * 32)
    assert message == (
        b"nitro-wallet/approval/v1\x00\x00\x00\x00\x05alice" + bytes(7) + b"\x07" + b"\x11" * 32
    )


def test_stamp_round_trips() -> None:
    stamp = Stamp("ops-1", 1_800_000_000, NONCE, SIG)
    text = canonical.format_stamp(stamp)
    assert text.startswith("v1.ops-1.1800000000.")
    assert canonical.parse_stamp(text) == stamp


def test_approvals_round_trip_with_spaces_around_commas() -> None:
    items = [Approval("alice", 10, SIG), Approval("bob", 11, SIG)]
    text = canonical.format_approvals(items)
    assert canonical.parse_approvals(text.replace(",", " , ")) == tuple(items)


GOOD = canonical.format_stamp(Stamp("ops-1", 1_800_000_000, NONCE, SIG))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        GOOD.replace("v1.", "v2."),
        GOOD.replace("ops-1", "ops.1"),
        GOOD.replace("1800000000", "01800000000"),
        GOOD.replace("1800000000", "-1"),
        GOOD + "=",
        GOOD + " ",
        GOOD[:-1],
        GOOD[:-1] + "B",  # non-zero padding bits: a second encoding of the same bytes
        "v1." + "a" * 65 + ".1." + canonical.b64url(NONCE) + "." + canonical.b64url(SIG),
        "v1.ops-1.99999999999999." + canonical.b64url(NONCE) + "." + canonical.b64url(SIG),
    ],
)
def test_malformed_stamps_are_refused_as_stamp_malformed(header: object) -> None:
    with pytest.raises(EnclaveError) as caught:
        canonical.parse_stamp(header)
    assert caught.value.code == ErrorCode.STAMP_MALFORMED


@pytest.mark.parametrize(
    "header",
    [
        "",
        "v1.alice.10",
        "v1.alice.10." + canonical.b64url(SIG) + ",",
        ",".join(["v1.a.1." + canonical.b64url(SIG)] * 17),
        "v1.al ice.10." + canonical.b64url(SIG),
    ],
)
def test_malformed_approvals_are_refused_as_approval_malformed(header: str) -> None:
    with pytest.raises(EnclaveError) as caught:
        canonical.parse_approvals(header)
    assert caught.value.code == ErrorCode.APPROVAL_MALFORMED
