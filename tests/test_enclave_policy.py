"""The signing policy inside the running enclave, driven as a hostile parent would: a
client on the enclave's socket that asserts identities, edits records and replays
requests. Every refusal carries its code and names its rule; every decision leaves a
receipt."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from enclave_app.errors import EnclaveError
from nitro_wallet.stamping import KeyFile, generate_key, make_approval, make_stamp, public_key_pem
from tests.enclave_rig import EnclaveRig, error_code

CHAIN_ID = 1
ETH = 10**18
OTHER = "0x" + "22" * 20
RECIPIENT = "0x" + "11" * 20
WINDOW = 600
OPS = KeyFile("ops", "api", generate_key("ed25519"))
ALICE = KeyFile("alice", "approver", generate_key("p256"))
BOB = KeyFile("bob", "approver", generate_key("ed25519"))
EVERY_SCOPE = ["create", "sign", "read"]


def relay(name: str = "bot", scopes: list[str] | None = None) -> dict[str, Any]:
    return {"relay": {"principal": name, "scopes": scopes or EVERY_SCOPE}}


POLICY: dict[str, Any] = {
    "version": 1,
    "principals": {
        "stamp_keys": [
            {"id": "ops", "public_key": public_key_pem(OPS.private_key), "scopes": EVERY_SCOPE}
        ],
        "relay_identities": [{"id": "bot", "scopes": ["create", "sign"]}],
        "approvers": [
            {"id": "alice", "public_key": public_key_pem(ALICE.private_key)},
            {"id": "bob", "public_key": public_key_pem(BOB.private_key)},
        ],
    },
    "rules": [
        {
            "name": "never-to-other",
            "effect": "deny",
            "principals": {"stamp_keys": "any", "relay_identities": "any"},
            "accounts": "all",
            "condition": {"transaction": {"to": {"in": [OTHER]}}},
        },
        {
            "name": "bot-small-on-hot",
            "effect": "allow",
            "principals": {"relay_identities": ["bot"]},
            "accounts": {"labels": ["hot"]},
            "condition": {"transaction": {"chain_id": [CHAIN_ID], "value": {"max": ETH}}},
        },
        {
            "name": "bot-big-with-approvals",
            "effect": "allow",
            "principals": {"relay_identities": ["bot"]},
            "accounts": {"labels": ["hot"]},
            "approvals": {"threshold": 2, "approvers": ["alice", "bob"]},
            "condition": {"transaction": {"chain_id": [CHAIN_ID]}},
        },
        {
            "name": "ops-anything",
            "effect": "allow",
            "principals": {"stamp_keys": ["ops"]},
            "accounts": "all",
            "condition": {"transaction": {}, "message": {}},
        },
    ],
    "limits": [
        {
            "name": "bot-three-per-window",
            "accounts": "all",
            "principals": {"relay_identities": ["bot"]},
            "window_seconds": WINDOW,
            "max_count": 3,
        }
    ],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[EnclaveRig]:
    root = Path(tmp_path_factory.mktemp("policy-rig"))
    with EnclaveRig(root, signing_policy=POLICY, policy_clock=clock) as started:
        clock.now += WINDOW  # past the boot window of the velocity limit
        yield started


def create(rig: EnclaveRig, auth: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return rig.call(
        "generate_account",
        {
            "account_id": str(uuid.uuid4()),
            "key_id": rig.key_arn,
            "credentials": rig.credentials,
            "auth": auth or relay(),
            **metadata,
        },
    )


@pytest.fixture(scope="module")
def hot(rig: EnclaveRig) -> dict[str, Any]:
    return create(rig, labels=["hot"])


def tx(nonce: int = 0, **fields: Any) -> dict[str, Any]:
    base = {
        "type": 2,
        "chainId": CHAIN_ID,
        "nonce": nonce,
        "to": RECIPIENT,
        "value": ETH // 10,
        "gas": 21000,
        "maxFeePerGas": 30 * 10**9,
        "maxPriorityFeePerGas": 10**9,
    }
    return {**base, **fields}


def sign(
    rig: EnclaveRig, account: dict[str, Any], transaction: dict[str, Any], auth: dict[str, Any]
) -> dict[str, Any]:
    return rig.call(
        "sign_transaction",
        {
            "account": account,
            "credentials": rig.credentials,
            "transaction": transaction,
            "auth": auth,
        },
    )


def refusal(call: Any) -> EnclaveError:
    try:
        call()
    except EnclaveError as exc:
        return exc
    raise AssertionError("the enclave did not refuse")


def http_request(account: dict[str, Any], transaction: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"transaction": transaction})
    return {
        "method": "POST",
        "path": f"/v1/accounts/{account['account_id']}/sign/transaction",
        "body": body,
    }


def stamped(request: dict[str, Any], key: KeyFile = OPS) -> dict[str, Any]:
    stamp = make_stamp(key, request["method"], request["path"], request["body"].encode())
    return {"request": request, "stamp": stamp}


def fresh_window(clock: Clock) -> None:
    clock.now += WINDOW + WINDOW / 60


# -- who may ask ------------------------------------------------------------------------
def test_a_request_without_auth_is_refused(rig: EnclaveRig, hot: dict[str, Any]) -> None:
    assert error_code(lambda: sign(rig, hot, tx(), None)) == "unauthenticated"  # type: ignore[arg-type]


def test_an_identity_the_policy_does_not_declare_gets_nothing(
    rig: EnclaveRig, hot: dict[str, Any]
) -> None:
    error = refusal(lambda: sign(rig, hot, tx(), relay("mallory")))
    assert error.code == "principal_unknown"
    assert "'mallory'" in error.message


def test_the_relay_can_narrow_an_identitys_scopes_but_not_widen_them(
    rig: EnclaveRig, hot: dict[str, Any]
) -> None:
    error = refusal(lambda: sign(rig, hot, tx(), relay("bot", ["create"])))
    assert (error.code, error.message.split(":")[0]) == (
        "scope_denied",
        "policy rule 'principal-scopes'",
    )


# -- what the policy grants a relay-asserted identity ---------------------------------------------
def test_a_relay_identity_gets_exactly_what_its_rules_grant(
    rig: EnclaveRig, hot: dict[str, Any], clock: Clock
) -> None:
    fresh_window(clock)
    signed = sign(rig, hot, tx(), relay())
    assert Account.recover_transaction(signed["raw_transaction"]) == hot["address"]
    unlabelled = create(rig)
    error = refusal(lambda: sign(rig, unlabelled, tx(), relay()))
    assert (error.code, error.message.split(":")[0]) == (
        "policy_denied",
        "policy rule 'default-deny'",
    )
    error = refusal(lambda: sign(rig, hot, tx(to=OTHER), relay()))
    assert (error.code, error.message.split(":")[0]) == (
        "policy_denied",
        "policy rule 'never-to-other'",
    )
    error = refusal(lambda: sign(rig, hot, tx(value=2 * ETH), relay()))
    assert error.code == "approvals_required"
    assert error.message.startswith("policy rule 'bot-big-with-approvals': needs 2 of")


def test_two_valid_approvals_let_the_big_transfer_through(
    rig: EnclaveRig, hot: dict[str, Any], clock: Clock
) -> None:
    fresh_window(clock)
    big = tx(nonce=1, value=2 * ETH)
    request = http_request(hot, big)
    expires = int(time.time()) + 300
    approvals = ", ".join(
        make_approval(key, "POST", request["path"], request["body"].encode(), expires)
        for key in (ALICE, BOB)
    )
    one = make_approval(ALICE, "POST", request["path"], request["body"].encode(), expires)
    error = refusal(lambda: sign(rig, hot, big, {**relay(), "request": request, "approvals": one}))
    assert (error.code, error.message.split(":")[0]) == (
        "approvals_required",
        "policy rule 'bot-big-with-approvals'",
    )
    auth = {**relay(), "request": request, "approvals": approvals}
    signed = sign(rig, hot, big, auth)
    assert Account.recover_transaction(signed["raw_transaction"]) == hot["address"]
    assert error_code(lambda: sign(rig, hot, big, auth)) == "approval_replayed"


# -- stamps -----------------------------------------------------------------------------
def test_a_stamped_request_is_judged_as_its_key_and_a_changed_payload_is_refused(
    rig: EnclaveRig, clock: Clock
) -> None:
    plain = create(rig)
    message = {"transaction": tx(value=5 * ETH)}
    request = http_request(plain, message["transaction"])
    signed = sign(rig, plain, message["transaction"], stamped(request))
    assert Account.recover_transaction(signed["raw_transaction"]) == plain["address"]
    auth = stamped(http_request(plain, tx(nonce=2)))
    assert error_code(lambda: sign(rig, plain, tx(nonce=2, to=OTHER), auth)) == "request_mismatch"


# -- account labels and creation --------------------------------------------------------
def test_labels_and_the_creator_are_sealed_with_the_account(
    rig: EnclaveRig, hot: dict[str, Any], clock: Clock
) -> None:
    assert hot["labels"] == ["hot"]
    assert hot["created_by"] == "relay:bot"
    assert base64.b64decode(hot["encrypted_private_key"])[0] == 0x02  # envelope version 2
    unlabelled = create(rig)
    forged = {**unlabelled, "labels": ["hot"]}  # the parent relabels an account
    fresh_window(clock)
    assert error_code(lambda: sign(rig, forged, tx(), relay())) == "ciphertext_invalid"
    rig.forget_keys()
    assert error_code(lambda: sign(rig, forged, tx(), relay())) == "ciphertext_invalid"
    relabelled_creator = {**hot, "created_by": "stamp:ops"}
    assert error_code(lambda: sign(rig, relabelled_creator, tx(), relay())) == "ciphertext_invalid"


def test_a_relay_identity_cannot_bind_a_stamp_key_to_a_new_account(rig: EnclaveRig) -> None:
    key = {"id": "backdoor", "public_key": public_key_pem(generate_key("p256")), "scopes": ["sign"]}
    error = refusal(lambda: create(rig, stamp_keys=[key]))
    assert (error.code, error.message.split(":")[0]) == (
        "policy_denied",
        "policy rule 'account-creation'",
    )
    body = json.dumps({"stamp_keys": [key]})
    request = {"method": "POST", "path": "/v1/accounts", "body": body}
    account = create(rig, stamped(request), stamp_keys=[key])
    assert account["stamp_keys"][0]["id"] == "backdoor"
    assert account["created_by"] == "stamp:ops"


def test_creating_needs_the_create_scope(rig: EnclaveRig) -> None:
    error = refusal(lambda: create(rig, relay("bot", ["sign"])))
    assert error.code == "scope_denied"


# -- velocity ---------------------------------------------------------------------------
def test_the_request_that_crosses_a_limit_is_refused_in_single_ops_and_batches(
    rig: EnclaveRig, hot: dict[str, Any], clock: Clock
) -> None:
    fresh_window(clock)
    for nonce in range(3):
        sign(rig, hot, tx(nonce=nonce), relay())
    error = refusal(lambda: sign(rig, hot, tx(nonce=3), relay()))
    assert (error.code, error.message.split(":")[0]) == (
        "velocity_exceeded",
        "policy rule 'bot-three-per-window'",
    )
    fresh_window(clock)
    items = [{"op": "sign_transaction", "account": 0, "transaction": tx(nonce=n)} for n in range(5)]
    result = rig.call(
        "sign_batch",
        {"credentials": rig.credentials, "accounts": [hot], "items": items, "auth": relay()},
    )["results"]
    assert [item["ok"] for item in result] == [True, True, True, False, False]
    assert {item["error"]["code"] for item in result[3:]} == {"velocity_exceeded"}


def test_a_refused_batch_item_takes_no_share_of_the_window(
    rig: EnclaveRig, hot: dict[str, Any], clock: Clock
) -> None:
    fresh_window(clock)
    items = [
        {"op": "sign_transaction", "account": 0, "transaction": tx(nonce=0, to=OTHER)},
        {"op": "sign_transaction", "account": 0, "transaction": tx(nonce=1, value=9 * ETH)},
        *({"op": "sign_transaction", "account": 0, "transaction": tx(nonce=n)} for n in (2, 3, 4)),
    ]
    result = rig.call(
        "sign_batch",
        {"credentials": rig.credentials, "accounts": [hot], "items": items, "auth": relay()},
    )["results"]
    assert [item["ok"] for item in result] == [False, False, True, True, True]
    assert [item["error"]["code"] for item in result[:2]] == ["policy_denied", "approvals_required"]


def test_a_restarted_enclave_counts_its_first_window_as_used(tmp_path: Path, clock: Clock) -> None:
    with EnclaveRig(tmp_path, signing_policy=POLICY, policy_clock=clock) as fresh:
        account = create(fresh, labels=["hot"])
        error = refusal(lambda: sign(fresh, account, tx(), relay()))
        assert error.code == "velocity_exceeded"
        assert "started less than one window ago" in error.message
        clock.now += WINDOW
        sign(fresh, account, tx(), relay())


# -- receipts ---------------------------------------------------------------------------
def test_every_decision_leaves_a_receipt_naming_its_rule(rig: EnclaveRig, clock: Clock) -> None:
    fresh_window(clock)
    account = create(rig, labels=["hot"])
    sign(rig, account, tx(), relay())
    refusal(lambda: sign(rig, account, tx(to=OTHER), relay()))
    refusal(lambda: sign(rig, account, tx(), relay("mallory")))
    receipts = [
        json.loads(line)["receipt"]
        for line in rig.call("audit_receipts", {"after": None, "limit": 1000})["receipts"]
    ]
    decisions = [r for r in receipts if r["kind"] == "decision"][-4:]
    assert [(r["op"], r["decision"], r["rule"], r["code"]) for r in decisions] == [
        ("generate_account", "allow", "account-creation", None),
        ("sign_transaction", "allow", "bot-small-on-hot", None),
        ("sign_transaction", "deny", "never-to-other", "policy_denied"),
        ("sign_transaction", "deny", None, "principal_unknown"),
    ]
    assert decisions[1]["principal"] == "relay:bot"
    assert decisions[1]["result"].startswith("0x")
    assert decisions[2]["payload"] is not None


def test_stats_report_the_policy_hash_and_its_refusals_by_rule(
    rig: EnclaveRig, clock: Clock
) -> None:
    # The policy's name is the SHA-256 of its canonical JSON (what `policy compile` writes).
    canonical = json.dumps(POLICY, sort_keys=True, separators=(",", ":")).encode()
    assert rig.policy.sha256 == hashlib.sha256(canonical).hexdigest()
    assert rig.call("health")["policy_sha256"] == rig.policy.sha256
    before = rig.call("stats")["policy"]
    assert before["sha256"] == rig.policy.sha256
    assert (before["rules"], before["limits"]) == (4, 1)
    account = create(rig, labels=["hot"])
    fresh_window(clock)
    refusal(lambda: sign(rig, account, tx(to=OTHER), relay()))
    refusal(lambda: sign(rig, account, tx(to=OTHER), relay()))
    refusal(lambda: sign(rig, account, tx(), relay("mallory")))
    after = rig.call("stats")["policy"]["denials"]
    assert after["never-to-other"] == before["denials"].get("never-to-other", 0) + 2
    assert after["principal-scopes"] == before["denials"].get("principal-scopes", 0) + 1
