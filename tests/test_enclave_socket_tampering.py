"""A relay that tampers with a stamped request gets a refusal from the enclave (issue 11:
"a relay that tampers with the body, the account or the stamp gets a refusal").

The hostile relay here is a client on the running stack's enclave socket (what any
process on the parent can reach): it holds the instance role's credentials and the
stored records, takes a request a client stamped for one account, and sends the
enclave its own version of the op: another existing account, an altered body, an
altered stamp (a flipped signature byte, the key id of another registered key, an
unregistered key id, another timestamp or nonce), or the same stamp again. Each is
refused with its own stable code, the answer carries no signature, and the enclave's
receipts (pulled into the relay's audit log) record the refusal and no signature. A
refused forgery does not spend the client's stamp: the genuine request still signs,
once.

The policy is the development one (the stack's stamp key ``dev-api-key`` may do
everything) plus a second registered stamp key, ``other-key``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account

from enclave_app.auth import canonical
from enclave_app.errors import EnclaveError
from nitro_sim.dev_auth import DEV_POLICY_TEMPLATE
from nitro_sim.stack import LocalStack, http_json
from nitro_wallet.stamping import KeyFile, generate_key, load_key_file, make_stamp, public_key_pem
from tests.stack_helpers import (
    account_param,
    create_account,
    eip1559,
    enclave_call,
    role_credentials,
)

pytestmark = pytest.mark.stack

OTHER_KEY = KeyFile("other-key", "api", generate_key("p256"))
SIGN = "sign_transaction"
#: What a hostile relay does to the genuine op's params, given another account's record.
Tamper = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="module")
def stack_options() -> dict[str, Any]:
    """The development policy with ``other-key`` registered next to the dev key."""
    entry = (
        f"    - id: {OTHER_KEY.key_id}\n"
        "      scopes: [create, sign, read]\n"
        f"      public_key: {json.dumps(public_key_pem(OTHER_KEY.private_key))}\n"
    )
    template = DEV_POLICY_TEMPLATE.read_text()
    assert template.count("  stamp_keys:\n") == 1
    return {"policy_text": template.replace("  stamp_keys:\n", "  stamp_keys:\n" + entry)}


def stamped_op(stack: LocalStack, account_id: str, tx: dict[str, Any]) -> dict[str, Any]:
    """The ``sign_transaction`` params the relay sends for a client's stamped
    ``POST /v1/accounts/{id}/sign/transaction``, stamped with the dev key."""
    path = f"/v1/accounts/{account_id}/sign/transaction"
    body = json.dumps({"transaction": tx})
    stamp = make_stamp(load_key_file(stack.api_key_path), "POST", path, body.encode())
    return {
        "account": account_param(stack, account_id),
        "credentials": role_credentials(stack),
        "transaction": tx,
        "auth": {"stamp": stamp, "request": {"method": "POST", "path": path, "body": body}},
    }


def refusal(stack: LocalStack, params: dict[str, Any]) -> EnclaveError:
    with pytest.raises(EnclaveError) as refused:
        enclave_call(stack, SIGN, params)  # no answer with a signature
    return refused.value


def sign_decisions(stack: LocalStack, *account_ids: str) -> list[tuple[str, str, str | None]]:
    """(account, decision, code) of every ``sign_transaction`` receipt of these accounts,
    in order, from the relay's audit log once it holds the enclave's current head."""
    nonce = secrets.token_hex(16)
    status, head = http_json("GET", f"{stack.relay_url}/v1/audit/head?nonce={nonce}")
    assert status == 200, head  # answered once the log holds the head
    decisions = []
    for line in stack.audit_log.read_text().splitlines():
        receipt = json.loads(line)["receipt"]
        if receipt.get("op") == SIGN and receipt.get("account") in account_ids:
            if receipt["decision"] == "allow":
                assert receipt["result"] is not None
            else:
                assert receipt["result"] is None  # nothing signed
            decisions.append((receipt["account"], receipt["decision"], receipt["code"]))
    return decisions


def flipped(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


def other_account(params: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**params, "account": other}


def other_account_and_path(params: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    altered = other_account(params, other)
    path = f"/v1/accounts/{other['account_id']}/sign/transaction"
    altered["auth"] = {**params["auth"], "request": {**params["auth"]["request"], "path": path}}
    return altered


def other_transaction(params: dict[str, Any], _other: dict[str, Any]) -> dict[str, Any]:
    return {**params, "transaction": {**params["transaction"], "to": "0x" + "66" * 20}}


def other_body(params: dict[str, Any], _other: dict[str, Any]) -> dict[str, Any]:
    """The relay sends its own transaction AND rewrites the stamped body to match it."""
    altered = other_transaction(params, _other)
    body = json.dumps({"transaction": altered["transaction"]})
    altered["auth"] = {**params["auth"], "request": {**params["auth"]["request"], "body": body}}
    return altered


def stamp_change(**changes: Callable[[canonical.Stamp], Any]) -> Tamper:
    """A tamper that changes the stamp's fields (the rest of the header as signed)."""

    def alter(params: dict[str, Any], _other: dict[str, Any]) -> dict[str, Any]:
        stamp = canonical.parse_stamp(params["auth"]["stamp"])
        changed = {name: change(stamp) for name, change in changes.items()}
        altered = copy.deepcopy(params)
        altered["auth"]["stamp"] = canonical.format_stamp(dataclasses.replace(stamp, **changed))
        return altered

    return alter


TAMPERING = [
    # the account
    pytest.param(other_account, "request_mismatch", id="account-swapped"),
    pytest.param(other_account_and_path, "stamp_signature_invalid", id="account-and-path-swapped"),
    # the body
    pytest.param(other_transaction, "request_mismatch", id="transaction-swapped"),
    pytest.param(other_body, "stamp_signature_invalid", id="transaction-and-body-swapped"),
    # the stamp
    pytest.param(
        stamp_change(signature=lambda s: flipped(s.signature)),
        "stamp_signature_invalid",
        id="signature-byte-flipped",
    ),
    pytest.param(
        stamp_change(key_id=lambda _: OTHER_KEY.key_id),
        "stamp_signature_invalid",
        id="key-id-of-another-registered-key",
    ),
    pytest.param(
        stamp_change(key_id=lambda _: "nobody"), "stamp_key_unknown", id="key-id-unregistered"
    ),
    pytest.param(
        stamp_change(timestamp=lambda s: s.timestamp - 5),
        "stamp_signature_invalid",
        id="timestamp-changed-within-the-window",
    ),
    pytest.param(
        stamp_change(timestamp=lambda s: s.timestamp - 3600),
        "stamp_expired",
        id="timestamp-moved-out-of-the-window",
    ),
    pytest.param(
        stamp_change(nonce=lambda s: flipped(s.nonce)),
        "stamp_signature_invalid",
        id="nonce-changed",
    ),
]


@pytest.mark.parametrize(("tamper", "code"), TAMPERING)
def test_a_tampered_stamped_request_is_refused_and_signs_nothing(
    stack: LocalStack,
    tamper: Tamper,
    code: str,
) -> None:
    mine, theirs = create_account(stack), create_account(stack)
    genuine = stamped_op(stack, mine["account_id"], eip1559())
    tampered = tamper(genuine, account_param(stack, theirs["account_id"]))
    assert tampered != genuine

    assert refusal(stack, tampered).code == code
    ids = (mine["account_id"], theirs["account_id"])
    decisions = sign_decisions(stack, *ids)
    assert [decision for _, decision, _ in decisions] == ["deny"]
    assert decisions[0][2] == code

    # The refused copy did not spend the client's stamp: the genuine request signs.
    signed = enclave_call(stack, SIGN, genuine)
    assert Account.recover_transaction(signed["raw_transaction"]) == mine["address"]
    assert sign_decisions(stack, *ids)[1:] == [(mine["account_id"], "allow", None)]


def test_a_stamp_replayed_within_its_window_is_refused(stack: LocalStack) -> None:
    account = create_account(stack)
    genuine = stamped_op(stack, account["account_id"], eip1559())
    signed = enclave_call(stack, SIGN, genuine)
    assert Account.recover_transaction(signed["raw_transaction"]) == account["address"]

    assert refusal(stack, genuine).code == "stamp_replayed"  # the very same op again
    # ... and through the relay, as the client's own request: the enclave remembers it.
    request = genuine["auth"]["request"]
    status, answer = http_json(
        "POST",
        stack.relay_url + request["path"],
        request["body"].encode(),
        {"X-Stamp": genuine["auth"]["stamp"]},
    )
    assert (status, answer["error"]["code"]) == (401, "stamp_replayed")
    assert "raw_transaction" not in answer
    assert sign_decisions(stack, account["account_id"]) == [
        (account["account_id"], "allow", None),
        (account["account_id"], "deny", "stamp_replayed"),
        (account["account_id"], "deny", "stamp_replayed"),
    ]
