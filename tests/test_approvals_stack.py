"""N-of-M approvals through the relay and the simulated enclave (issue 11's acceptance:
"approvals are tested for each case above, and N valid approvals sign").

One stack (relay, simulated enclave, KMS, IMDS and vsock-proxy as processes) whose
enclave image carries :data:`POLICY`: transfers up to 1 ETH are allowed to the stack's
bearer token (``relay:dev-token``) and stamp key (``stamp:dev-api-key``); a bigger one
only by ``big-transfers``, which needs 2 of the approvers alice, bob and carol. dave is
an approver the policy declares but the rule does not name. The approver keys are made
by ``nitro-wallet keygen --kind approver`` (the policy lists the entries it prints), and
the approvals by ``nitro-wallet approve`` or its library code
(``nitro_wallet.stamping.make_approval``), in the ``X-Approvals`` header.

Every case runs over REST and JSON-RPC (``eth_signTransaction``), each with the bearer
token and stamped, on an account of its own:

- a refused request gets 403 (JSON-RPC -32003) with its own stable code: too few
  approvals are ``approvals_required`` naming the rule (and how many valid approvals
  came); a forged, expired, malformed, duplicated, replayed approval or one of another
  request refuses the whole request with its ``approval_*`` code. The answer carries no
  signature, and the enclave's receipt (in the relay's audit log, read once
  ``GET /v1/audit/head`` says the log holds the enclave's head) is a deny with that code
  and no result;
- 2 valid approvals of 3 sign: eth-account recovers the account's address, and the
  receipt names the rule, the approvers and the request's digest. The approvals are
  then spent: the same request again is ``approval_replayed``. A refusal spends nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from enclave_app.auth import canonical
from enclave_app.auth.approvals import DEFAULT_MAX_LIFETIME_SECONDS
from nitro_sim.stack import LocalStack, http_json
from nitro_wallet.stamping import KeyFile, generate_key, load_key_file, make_approval, make_stamp
from tests.stack_helpers import audit_decisions, create_account, eip1559, nitro_wallet

pytestmark = pytest.mark.stack

ETH = 10**18
RULE = "big-transfers"
APPROVERS = {"alice": "ed25519", "bob": "p256", "carol": "ed25519", "dave": "p256"}
SIGN = "sign_transaction"

POLICY = """\
version: 1
description: tests/test_approvals_stack.py - 2 of 3 approvers for transfers over 1 ETH
principals:
  stamp_keys:
    - id: {{ dev_stamp_key_id | to_json }}
      scopes: [create, sign, read]
      public_key: {{ dev_stamp_public_key | to_json }}
  relay_identities:
    - id: {{ dev_relay_identity | to_json }}
      scopes: [create, sign, read]
  approvers: @APPROVERS@
rules:
  - name: small-transfers
    effect: allow
    principals:
      stamp_keys: [{{ dev_stamp_key_id | to_json }}]
      relay_identities: [{{ dev_relay_identity | to_json }}]
    accounts: all
    condition: {transaction: {value: {max: @ETH@}}}
  - name: big-transfers
    effect: allow
    principals:
      stamp_keys: [{{ dev_stamp_key_id | to_json }}]
      relay_identities: [{{ dev_relay_identity | to_json }}]
    accounts: all
    approvals: {threshold: 2, approvers: [alice, bob, carol]}
    condition: {transaction: {value: {min: @ETH_PLUS_ONE@}}}
"""


@pytest.fixture(scope="module")
def approver_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Each approver's key file, made by ``nitro-wallet keygen --kind approver``, and the
    policy entry it printed."""
    directory = tmp_path_factory.mktemp("approvers")
    made = {}
    for name, algorithm in APPROVERS.items():
        path = directory / f"{name}.pem"
        keygen = nitro_wallet(
            None,
            *("keygen", "--id", name, "--kind", "approver", "--algorithm", algorithm),
            *("--out", str(path)),
        )
        assert keygen.returncode == 0, keygen.stderr
        made[name] = (path, json.loads(keygen.stdout)["policy_entry"])
    return made


@pytest.fixture(scope="module")
def stack_options(approver_files: dict[str, tuple[Path, Any]]) -> dict[str, Any]:
    entries = [entry for _path, entry in approver_files.values()]
    text = POLICY.replace("@APPROVERS@", json.dumps(entries))
    text = text.replace("@ETH@", str(ETH)).replace("@ETH_PLUS_ONE@", str(ETH + 1))
    return {"policy_text": text}


@pytest.fixture(scope="module")
def approvers(approver_files: dict[str, tuple[Path, Any]]) -> dict[str, KeyFile]:
    return {name: load_key_file(path) for name, (path, _entry) in approver_files.items()}


# -- requests ----------------------------------------------------------------------------
TRANSPORTS = ["rest", "rest+stamp", "jsonrpc", "jsonrpc+stamp"]


@dataclass(frozen=True)
class Request:
    """One signing request as the client sends it: what the approvals approve."""

    transport: str
    account: dict[str, Any]
    path: str
    body: bytes

    @property
    def principal(self) -> str:
        return "stamp:dev-api-key" if self.transport.endswith("+stamp") else "relay:dev-token"

    def digest(self, approvals: str | None) -> str | None:
        """The request digest a receipt names: the enclave hears the request (and binds
        the op to it) with a stamp or approvals; a bare token's op comes alone."""
        if approvals is None and not self.transport.endswith("+stamp"):
            return None
        return canonical.request_digest("POST", self.path, self.body).hex()


def big_transfer(account: dict[str, Any], transport: str, eth: int = 5) -> Request:
    tx = eip1559(value=hex(eth * ETH))
    if transport.startswith("rest"):
        path = f"/v1/accounts/{account['account_id']}/sign/transaction"
        body: dict[str, Any] = {"transaction": tx}
    else:
        path = "/"
        params = [{**tx, "from": account["address"]}]
        body = {"jsonrpc": "2.0", "id": 7, "method": "eth_signTransaction", "params": params}
    return Request(transport, account, path, json.dumps(body).encode())


@dataclass(frozen=True)
class Answer:
    raw_transaction: str | None
    code: str | None  # the stable code of a refusal
    message: str = ""


def send(stack: LocalStack, request: Request, approvals: str | None) -> Answer:
    """POST ``request`` through the relay with ``X-Approvals: approvals`` (stamped with
    the stack's key when its transport says so: a fresh stamp per send); a refusal must
    be a 403 (JSON-RPC: HTTP 200, -32003) without a signature."""
    headers = {} if approvals is None else {canonical.APPROVALS_HEADER: approvals}
    if request.transport.endswith("+stamp"):
        key = load_key_file(stack.api_key_path)
        headers[canonical.STAMP_HEADER] = make_stamp(key, "POST", request.path, request.body)
    status, body = http_json("POST", stack.relay_url + request.path, request.body, headers)
    if request.transport.startswith("rest"):
        if status == 200:
            return Answer(body["raw_transaction"], None)
        assert status == 403, body
        assert set(body) == {"error"}, body
        return Answer(None, body["error"]["code"], body["error"]["message"])
    assert status == 200, body  # JSON-RPC answers errors in the body
    if "result" in body:
        return Answer(body["result"], None)
    assert set(body) == {"jsonrpc", "id", "error"}, body
    assert body["error"]["code"] == -32003, body  # "rejected", for every approval refusal
    return Answer(None, body["error"]["data"]["code"], body["error"]["message"])


def assert_signed(answer: Answer, request: Request) -> str:
    """eth-account recovers the account from the signed transaction; its hash."""
    assert answer.code is None, answer
    assert answer.raw_transaction is not None
    assert Account.recover_transaction(answer.raw_transaction) == request.account["address"]
    return "0x" + keccak(bytes.fromhex(answer.raw_transaction[2:])).hex()


def cli_approval(
    stack: LocalStack, key: Path, request: Request, tmp_path: Path, expires_in: int
) -> str:
    """``nitro-wallet approve --key KEY --method POST --path PATH --body FILE
    --expires-in SECONDS``."""
    body = tmp_path / f"body-{key.stem}.json"
    body.write_bytes(request.body)
    approved = nitro_wallet(
        stack,
        *("approve", "--key", str(key), "--method", "POST", "--path", request.path),
        *("--body", str(body), "--expires-in", str(expires_in)),
    )
    assert approved.returncode == 0, approved.stderr
    return approved.stdout.strip()


# -- the refusals ------------------------------------------------------------------------
Approvals = Callable[[dict[str, KeyFile], Request], str | None]


def approval(key: KeyFile, request: Request, ttl: int = 600) -> str:
    return make_approval(key, "POST", request.path, request.body, int(time.time()) + ttl)


def of(*names: str) -> Approvals:
    """Valid approvals of the request by these approvers."""
    return lambda keys, request: ",".join(approval(keys[name], request) for name in names)


def alice_and(other: Callable[[dict[str, KeyFile], Request], str]) -> Approvals:
    """alice's valid approval, then ``other``."""
    return lambda keys, request: approval(keys["alice"], request) + "," + other(keys, request)


def signature_flipped(keys: dict[str, KeyFile], request: Request) -> str:
    (genuine,) = canonical.parse_approvals(approval(keys["bob"], request))
    flipped = bytes([genuine.signature[0] ^ 0x01]) + genuine.signature[1:]
    return canonical.format_approval(dataclasses.replace(genuine, signature=flipped))


def another_key_as(name: str) -> Callable[[dict[str, KeyFile], Request], str]:
    """An approval signed by a key not in the policy, under ``name``'s id."""
    return lambda _keys, request: approval(KeyFile(name, "approver", generate_key("p256")), request)


def of_another_request(keys: dict[str, KeyFile], request: Request) -> str:
    """alice's and bob's approvals of the same transfer with another value."""
    other = big_transfer(request.account, request.transport, eth=50)
    return ",".join(approval(keys[name], other) for name in ("alice", "bob"))


@dataclass(frozen=True)
class Refusal:
    name: str
    approvals: Approvals
    code: str
    valid: tuple[str, ...] = ()  # approvers verified (approvals_required only)


REFUSALS = [
    Refusal("no-approvals", lambda _keys, _request: None, "approvals_required"),
    Refusal("one-of-two", of("alice"), "approvals_required", ("alice",)),
    Refusal(
        "an-approver-the-rule-does-not-name",
        of("alice", "dave"),
        "approvals_required",
        ("alice", "dave"),
    ),
    Refusal(
        "forged-by-a-key-outside-the-policy",
        alice_and(another_key_as("mallory")),
        "approval_unknown_approver",
    ),
    Refusal(
        "forged-under-an-approvers-id",
        alice_and(another_key_as("bob")),
        "approval_signature_invalid",
    ),
    Refusal("signature-byte-flipped", alice_and(signature_flipped), "approval_signature_invalid"),
    Refusal("of-another-request", of_another_request, "approval_signature_invalid"),
    Refusal(
        "expired",
        alice_and(lambda keys, request: approval(keys["bob"], request, ttl=-60)),
        "approval_expired",
    ),
    Refusal(
        "expiring-beyond-the-enclaves-limit",
        alice_and(
            lambda keys, request: approval(
                keys["bob"], request, ttl=DEFAULT_MAX_LIFETIME_SECONDS + 120
            )
        ),
        "approval_malformed",
    ),
    Refusal(
        "the-same-approver-twice",
        alice_and(lambda keys, request: approval(keys["alice"], request, ttl=601)),
        "approval_duplicate",
    ),
    Refusal("unreadable", lambda _keys, _request: "v1.alice.soon.c2ln", "approval_malformed"),
]


def assert_refused(
    stack: LocalStack,
    request: Request,
    approvals: str | None,
    code: str,
    valid: tuple[str, ...] = (),
) -> None:
    """``request`` sent with ``approvals`` is refused with ``code``, and the enclave's
    last receipt for the account says so: nothing signed."""
    answer = send(stack, request, approvals)
    assert answer.raw_transaction is None, answer
    assert answer.code == code, answer
    receipt = audit_decisions(stack, SIGN, request.account["account_id"])[-1]
    assert (receipt["decision"], receipt["code"], receipt["result"]) == ("deny", code, None)
    assert receipt["address"] == request.account["address"]
    if code == "approvals_required":  # the policy decided: rule, caller, approvers, request
        assert answer.message == (
            f"policy rule '{RULE}': needs 2 of the approvers alice, bob, carol; "
            f"{len(set(valid) & {'alice', 'bob', 'carol'})} valid approval(s) given"
        )
        assert receipt["rule"] == RULE
        assert receipt["principal"] == request.principal
        assert receipt["approvers"] == sorted(valid)
        assert receipt["request"] == request.digest(approvals)
    else:  # authentication refused the request before the policy saw it
        assert (receipt["rule"], receipt["principal"], receipt["approvers"]) == (None, None, [])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.name for r in REFUSALS])
def test_a_big_transfer_without_two_valid_approvals_is_refused_with_its_code(
    stack: LocalStack, approvers: dict[str, KeyFile], refusal: Refusal, transport: str
) -> None:
    request = big_transfer(create_account(stack), transport)
    assert_refused(
        stack, request, refusal.approvals(approvers, request), refusal.code, refusal.valid
    )
    assert [r["decision"] for r in audit_decisions(stack, SIGN, request.account["account_id"])] == [
        "deny"
    ]


# -- the signatures ----------------------------------------------------------------------
PAIRS = {
    "rest": ("alice", "bob"),
    "rest+stamp": ("bob", "carol"),
    "jsonrpc": ("alice", "carol"),
    "jsonrpc+stamp": ("carol", "alice"),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_of_three_approvals_made_by_the_cli_sign(
    stack: LocalStack,
    approver_files: dict[str, tuple[Path, Any]],
    transport: str,
    tmp_path: Path,
) -> None:
    """The first approval expires as late as the CLI allows, the second in 600 s."""
    request = big_transfer(create_account(stack), transport)
    header = ", ".join(
        cli_approval(stack, approver_files[name][0], request, tmp_path, expires_in)
        for name, expires_in in zip(
            PAIRS[transport], (DEFAULT_MAX_LIFETIME_SECONDS, 600), strict=True
        )
    )
    result = assert_signed(send(stack, request, header), request)

    (receipt,) = audit_decisions(stack, SIGN, request.account["account_id"])
    assert (receipt["decision"], receipt["rule"], receipt["code"]) == ("allow", RULE, None)
    assert receipt["result"] == result
    assert receipt["principal"] == request.principal
    assert receipt["approvers"] == sorted(PAIRS[transport])
    assert receipt["request"] == request.digest(header)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_approvals_are_spent_by_the_signature_and_only_by_it(
    stack: LocalStack, approvers: dict[str, KeyFile], transport: str
) -> None:
    """A refusal gives the approvals back; a signature spends them, so sending the same
    request again (with the same approvals, or one of them next to a fresh one) is a
    replay."""
    request = big_transfer(create_account(stack), transport)
    alice, bob = approval(approvers["alice"], request), approval(approvers["bob"], request)

    assert_refused(stack, request, alice, "approvals_required", ("alice",))
    assert_signed(send(stack, request, f"{alice},{bob}"), request)  # alice's was not spent
    for spent in (f"{alice},{bob}", f"{approval(approvers['carol'], request)},{bob}"):
        assert_refused(stack, request, spent, "approval_replayed")
    decisions = audit_decisions(stack, SIGN, request.account["account_id"])
    assert [(r["decision"], r["code"]) for r in decisions] == [
        ("deny", "approvals_required"),
        ("allow", None),
        ("deny", "approval_replayed"),
        ("deny", "approval_replayed"),
    ]


@pytest.mark.parametrize("transport", ["rest", "jsonrpc"])
def test_a_small_transfer_needs_no_approval(stack: LocalStack, transport: str) -> None:
    """The rule that wants approvals decides only what it covers: 1 ETH signs without."""
    request = big_transfer(create_account(stack), transport, eth=1)
    assert_signed(send(stack, request, None), request)
    (receipt,) = audit_decisions(stack, SIGN, request.account["account_id"])
    assert (receipt["rule"], receipt["approvers"]) == ("small-transfers", [])
