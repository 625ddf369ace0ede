"""The enclave's auth entry point: stamp or relay identity, the stamped request checked
against the op, approvals, and the release of claims when a request fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.authenticate import Authenticator
from enclave_app.auth.intents import OpItem
from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from enclave_app.errors import EnclaveError, ErrorCode
from nitro_wallet.stamping import make_approval, make_stamp
from tests.authhelpers import Clock, entry, key_file

ID = "6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f"
ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
PATH = f"/v1/accounts/{ID}/sign/message"
BODY = json.dumps({"message": "hello"})
ITEM = OpItem("sign_message", ID, ADDRESS, "hello")
API = key_file("ops-1")
ALICE = key_file("alice", kind="approver")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> Authenticator:
    return Authenticator(
        StampVerifier(ReplayMemory(64, clock), clock=clock),
        ApprovalVerifier(ReplayMemory(64, clock), clock=clock),
    )


def call(auth: Authenticator, params: Any, items: tuple[OpItem, ...] = (ITEM,)) -> Any:
    return auth.authenticate(
        params, items, stamp_keys={"ops-1": entry(API)}, approvers={"alice": entry(ALICE)}
    )


def stamped(clock: Clock, body: str = BODY, **extra: Any) -> dict[str, Any]:
    return {
        "request": {"method": "POST", "path": PATH, "body": body},
        "stamp": make_stamp(API, "POST", PATH, body.encode(), timestamp=int(clock.now)),
        **extra,
    }


def code_of(auth: Authenticator, params: Any, items: tuple[OpItem, ...] = (ITEM,)) -> str:
    with pytest.raises(EnclaveError) as caught:
        call(auth, params, items)
    return caught.value.code


def test_a_stamped_request_authenticates_its_key(auth: Authenticator, clock: Clock) -> None:
    result = call(auth, stamped(clock))
    assert (result.principal_kind, result.principal_id) == ("stamp", "ops-1")
    assert result.approvers == frozenset()
    assert result.request_digest is not None


def test_no_auth_is_unauthenticated(auth: Authenticator) -> None:
    assert code_of(auth, None) == ErrorCode.UNAUTHENTICATED
    assert code_of(auth, {"request": {"method": "POST", "path": PATH, "body": BODY}}) == (
        ErrorCode.UNAUTHENTICATED
    )


def test_a_relay_that_alters_the_body_it_forwards_is_refused(
    auth: Authenticator, clock: Clock
) -> None:
    params = stamped(clock)
    params["request"]["body"] = json.dumps({"message": "HELLO"})
    assert code_of(auth, params, (OpItem("sign_message", ID, ADDRESS, "HELLO"),)) == (
        ErrorCode.STAMP_SIGNATURE_INVALID
    )


def test_a_relay_that_alters_the_op_but_not_the_body_is_refused(
    auth: Authenticator, clock: Clock
) -> None:
    assert code_of(auth, stamped(clock), (OpItem("sign_message", ID, ADDRESS, "bye"),)) == (
        ErrorCode.REQUEST_MISMATCH
    )


def test_a_relay_that_points_the_op_at_another_account_is_refused(
    auth: Authenticator, clock: Clock
) -> None:
    other = OpItem("sign_message", "7f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f", ADDRESS, "hello")
    assert code_of(auth, stamped(clock), (other,)) == ErrorCode.REQUEST_MISMATCH


def test_a_relay_that_alters_the_stamp_is_refused(auth: Authenticator, clock: Clock) -> None:
    params = stamped(clock)
    params["stamp"] = params["stamp"].replace("ops-1", "ops-2")
    assert code_of(auth, params) == ErrorCode.STAMP_KEY_UNKNOWN


def test_a_relay_identity_is_passed_on_unverified(auth: Authenticator) -> None:
    result = call(auth, {"relay": {"principal": "ci-bot", "scopes": ["sign"]}})
    assert (result.principal_kind, result.principal_id, result.scopes) == (
        "relay",
        "ci-bot",
        {"sign"},
    )
    assert result.request_digest is None


@pytest.mark.parametrize(
    "relay",
    [
        {"principal": "ci bot", "scopes": []},
        {"principal": "ci", "scopes": ["admin"]},
        {"principal": "ci", "scopes": ["sign", "sign"]},
        {"principal": "ci"},
    ],
)
def test_a_malformed_relay_identity_is_invalid(auth: Authenticator, relay: Any) -> None:
    assert code_of(auth, {"relay": relay}) == ErrorCode.INVALID_PARAMS


def test_both_a_stamp_and_a_relay_identity_is_refused(auth: Authenticator, clock: Clock) -> None:
    params = stamped(clock, relay={"principal": "ci", "scopes": []})
    assert code_of(auth, params) == ErrorCode.UNAUTHENTICATED


def test_approvals_need_the_request_they_sign(auth: Authenticator) -> None:
    params = {"relay": {"principal": "ci", "scopes": ["sign"]}, "approvals": "v1.a.1.x"}
    assert code_of(auth, params) == ErrorCode.INVALID_PARAMS


def test_approvals_on_a_relay_identity_bind_the_op(auth: Authenticator, clock: Clock) -> None:
    approval = make_approval(ALICE, "POST", PATH, BODY.encode(), int(clock.now) + 60)
    params = {
        "relay": {"principal": "ci", "scopes": ["sign"]},
        "request": {"method": "POST", "path": PATH, "body": BODY},
        "approvals": approval,
    }
    assert call(auth, params).approvers == {"alice"}
    # The same approvals attached to another op: refused before they count.
    params["approvals"] = make_approval(ALICE, "POST", PATH, BODY.encode(), int(clock.now) + 61)
    assert code_of(auth, params, (OpItem("sign_message", ID, ADDRESS, "bye"),)) == (
        ErrorCode.REQUEST_MISMATCH
    )


def test_a_failed_approval_gives_the_stamp_back(auth: Authenticator, clock: Clock) -> None:
    params = stamped(
        clock,
        approvals=make_approval(
            key_file("alice", kind="approver"), "POST", PATH, BODY.encode(), int(clock.now) + 60
        ),
    )
    assert code_of(auth, params) == ErrorCode.APPROVAL_SIGNATURE_INVALID
    params.pop("approvals")
    call(auth, params)  # the stamp was not spent by the refused request


def test_release_gives_stamp_and_approvals_back_and_success_spends_them(
    auth: Authenticator, clock: Clock
) -> None:
    params = stamped(
        clock, approvals=make_approval(ALICE, "POST", PATH, BODY.encode(), int(clock.now) + 60)
    )
    result = call(auth, params)
    result.release()  # e.g. KMS was unavailable: nothing was signed
    call(auth, params)  # spent now
    assert code_of(auth, params) == ErrorCode.STAMP_REPLAYED
