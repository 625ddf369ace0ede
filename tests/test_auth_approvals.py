"""N-of-M approvals over the request digest: each refusal has its own code."""

from __future__ import annotations

import pytest

from enclave_app.auth import canonical
from enclave_app.auth.approvals import ApprovalVerifier
from enclave_app.auth.canonical import Approval
from enclave_app.auth.replay import ReplayMemory
from enclave_app.errors import EnclaveError, ErrorCode
from nitro_wallet.stamping import KeyFile, make_approval
from tests.authhelpers import Clock, Entry, entry, key_file

PATH = "/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/transaction"
BODY = b'{"transaction":{"nonce":0}}'
DIGEST = canonical.request_digest("POST", PATH, BODY)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> ApprovalVerifier:
    return ApprovalVerifier(ReplayMemory(64, clock), max_lifetime_seconds=3600, clock=clock)


@pytest.fixture
def approvers() -> dict[str, KeyFile]:
    return {
        "alice": key_file("alice", "ed25519", "approver"),
        "bob": key_file("bob", "p256", "approver"),
        "carol": key_file("carol", "ed25519", "approver"),
    }


def registry(keys: dict[str, KeyFile]) -> dict[str, Entry]:
    return {name: entry(key) for name, key in keys.items()}


def approve(key: KeyFile, clock: Clock, ttl: int = 600, body: bytes = BODY) -> str:
    return make_approval(key, "POST", PATH, body, int(clock.now) + ttl)


def test_valid_approvals_yield_the_verified_approver_ids(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    header = ",".join(approve(approvers[name], clock) for name in ("alice", "bob"))
    verified = verifier.verify(header, DIGEST, registry(approvers))
    assert verified.approvers == {"alice", "bob"}


def refusal(verifier: ApprovalVerifier, header: str, approvers: dict[str, KeyFile]) -> ErrorCode:
    with pytest.raises(EnclaveError) as caught:
        verifier.verify(header, DIGEST, registry(approvers))
    return caught.value.code


def test_an_approval_of_another_request_is_refused_as_a_bad_signature(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    other = approve(approvers["alice"], clock, body=b'{"transaction":{"nonce":1}}')
    assert refusal(verifier, other, approvers) == ErrorCode.APPROVAL_SIGNATURE_INVALID


def test_a_forged_approval_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    forger = key_file("alice", "ed25519", "approver")  # alice's id, someone else's key
    header = approve(approvers["bob"], clock) + "," + approve(forger, clock)
    assert refusal(verifier, header, approvers) == ErrorCode.APPROVAL_SIGNATURE_INVALID


def test_an_approval_with_a_changed_expiry_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    approval = canonical.parse_approvals(approve(approvers["alice"], clock))[0]
    moved = Approval(approval.approver_id, approval.expires + 3000, approval.signature)
    assert (
        refusal(verifier, canonical.format_approval(moved), approvers)
        == ErrorCode.APPROVAL_SIGNATURE_INVALID
    )


def test_an_expired_approval_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    header = approve(approvers["alice"], clock, ttl=10)
    clock.now += 11
    assert refusal(verifier, header, approvers) == ErrorCode.APPROVAL_EXPIRED


def test_an_expiry_beyond_the_maximum_lifetime_is_malformed(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    header = approve(approvers["alice"], clock, ttl=3601)
    assert refusal(verifier, header, approvers) == ErrorCode.APPROVAL_MALFORMED


def test_a_duplicated_approver_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    first, second = approve(approvers["alice"], clock), approve(approvers["alice"], clock, 601)
    assert refusal(verifier, first + "," + second, approvers) == ErrorCode.APPROVAL_DUPLICATE


def test_an_approver_outside_the_policy_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    mallory = key_file("mallory", "ed25519", "approver")
    assert (
        refusal(verifier, approve(mallory, clock), approvers) == ErrorCode.APPROVAL_UNKNOWN_APPROVER
    )


def test_a_replayed_approval_is_refused_and_a_released_one_is_not(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile], clock: Clock
) -> None:
    header = approve(approvers["alice"], clock) + "," + approve(approvers["bob"], clock)
    first = verifier.verify(header, DIGEST, registry(approvers))
    assert refusal(verifier, header, approvers) == ErrorCode.APPROVAL_REPLAYED
    # One of the two reused with a fresh one: still a replay, and nothing stays claimed.
    mixed = approve(approvers["carol"], clock) + "," + header.split(",")[1]
    assert refusal(verifier, mixed, approvers) == ErrorCode.APPROVAL_REPLAYED
    verifier.release(first)
    assert verifier.verify(mixed, DIGEST, registry(approvers)).approvers == {"carol", "bob"}


def test_a_malformed_header_is_refused(
    verifier: ApprovalVerifier, approvers: dict[str, KeyFile]
) -> None:
    assert refusal(verifier, "v1.alice.1.xyz", approvers) == ErrorCode.APPROVAL_MALFORMED
