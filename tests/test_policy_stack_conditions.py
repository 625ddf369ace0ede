"""Every condition kind of the signing policy, through the relay and the real enclave
(issue 11's acceptance: "every condition kind has an allowing and a denying test, and
each denial names its rule").

One stack (relay, simulated enclave, KMS, IMDS and vsock-proxy as processes) whose
enclave image carries a policy of :data:`POLICY_RULES`: for each condition kind, allow
and deny rules scoped to accounts with that kind's label, so that exactly the kind's
rules judge its requests (each case in :data:`CASES` names its label). Each case is sent
over REST and over JSON-RPC (``eth_signTransaction``, ``personal_sign`` and ``eth_sign``,
``eth_signTypedData_v4``; an EIP-7702 authorization has no JSON-RPC method), each with
the stack's bearer token (the relay identity ``dev-token``) and stamped with its stamp
key (``dev-api-key``): the policy's rules name both.

- an allowed case signs: eth-account (or eth-keys, for an authorization) recovers the
  account's address from the answer, and the enclave's receipt of the signature, in the
  relay's audit log, names the allow rule and the principal;
- a denied case gets 403 (JSON-RPC -32003) with the stable code ``policy_denied`` in
  ``error.code`` (``error.data.code``) and a message naming the deciding rule: the
  kind's deny rule, or ``default-deny`` where the kind's allow rule does not match (an
  allowlist, or an EIP-7702 authorization with chainId 0 that no rule names).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from eth_keys.datatypes import Signature
from eth_utils.crypto import keccak

from nitro_sim.stack import LocalStack, http_json
from nitro_wallet.stamping import load_key_file, make_stamp
from tests.stack_helpers import CHAIN_ID, wait_for

pytestmark = pytest.mark.stack

GWEI = 10**9
ETH = 10**18
USDC = 10**6
PAYEE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
BLOCKED = "0x000000000000000000000000000000000000dEaD"
STRANGER = "0x" + "11" * 20
ROUTER = "0x" + "7a" * 20
TOKEN = "0x" + "a0" * 20  # the ERC-20 token, and the EIP-712 permits' verifyingContract
DELEGATE = "0x" + "de" * 20  # a trusted EIP-7702 delegation target
DRAINER = "0x" + "dd" * 20
SWAP = "0x38ed1739"  # swapExactTokensForTokens
MULTICALL = "0xac9650d8"  # multicall(bytes[])
TRANSFER, APPROVE = "a9059cbb", "095ea7b3"
BLOB_HASH = "0x01" + "ab" * 31

# The relay identity of the stack's bearer token, and its stamp key, as template values
# (nitro_sim.dev_auth renders the policy text with them).
_TOKEN_NAME = "__dev_relay_identity__"
_KEY_ID = "__dev_stamp_key_id__"
_KEY_PEM = "__dev_stamp_public_key__"
WHO = {"stamp_keys": [_KEY_ID], "relay_identities": [_TOKEN_NAME]}


def rule(name: str, effect: str, label: str, condition: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "effect": effect,
        "principals": WHO,
        "accounts": {"labels": [label]},
        "condition": condition,
    }


def erc20_check(functions: list[str], **checks: Any) -> dict[str, Any]:
    return {"erc20": {"tokens": [TOKEN], "functions": functions, **checks}}


def authorizations(targets: dict[str, Any], **checks: Any) -> dict[str, Any]:
    """The same EIP-7702 check for standalone authorizations and type 4 transactions."""
    check = {"targets": targets, **checks}
    return {"authorization": check, "transaction": {"delegation": check}}


#: Labels (one account each) and the rules that judge each label's requests.
POLICY_RULES: list[dict[str, Any]] = [
    # transaction type
    rule("type-dynamic-fee", "allow", "tx-type", {"transaction": {"type": [2]}}),
    rule("type-no-legacy", "deny", "tx-type", {"transaction": {"type": [0]}}),
    # chain id
    rule("chain-sepolia", "allow", "chain-id", {"transaction": {"chain_id": [CHAIN_ID]}}),
    rule("chain-never-mainnet", "deny", "chain-id", {"transaction": {"chain_id": [1]}}),
    # `to`: an allow list and a deny list
    rule("to-allowlist", "allow", "to", {"transaction": {"to": {"in": [PAYEE]}}}),
    rule("to-denylist", "deny", "to", {"transaction": {"to": {"in": [BLOCKED]}}}),
    rule("to-anyone-but", "allow", "to-not-in", {"transaction": {"to": {"not_in": [BLOCKED]}}}),
    # contract creation, allowed on one account and refused on another
    rule("deployments", "allow", "creation", {"transaction": {"contract_creation": True}}),
    rule("calls-only", "allow", "no-creation", {"transaction": {"contract_creation": False}}),
    rule("never-deploy", "deny", "no-creation", {"transaction": {"contract_creation": True}}),
    # value ceiling
    rule("value-up-to-1-eth", "allow", "value", {"transaction": {"value": {"max": ETH}}}),
    rule("value-over-10-eth", "deny", "value", {"transaction": {"value": {"min": 10 * ETH + 1}}}),
    # gas and fee ceilings
    rule(
        "fee-ceilings",
        "allow",
        "fees",
        {
            "transaction": {
                "gas": {"max": 100_000},
                "gas_price": {"max": 100 * GWEI},
                "max_fee_per_gas": {"max": 100 * GWEI},
                "max_priority_fee_per_gas": {"max": 2 * GWEI},
                "max_fee_per_blob_gas": {"max": 10 * GWEI},
            }
        },
    ),
    rule("gas-over-1m", "deny", "fees", {"transaction": {"gas": {"min": 1_000_001}}}),
    rule("gas-price-over-500", "deny", "fees", {"transaction": {"gas_price": {"min": 500 * GWEI}}}),
    rule(
        "max-fee-over-500",
        "deny",
        "fees",
        {"transaction": {"max_fee_per_gas": {"min": 500 * GWEI}}},
    ),
    rule(
        "tip-over-50",
        "deny",
        "fees",
        {"transaction": {"max_priority_fee_per_gas": {"min": 50 * GWEI}}},
    ),
    rule(
        "blob-fee-over-100",
        "deny",
        "fees",
        {"transaction": {"max_fee_per_blob_gas": {"min": 100 * GWEI}}},
    ),
    # 4-byte selector, per contract
    rule(
        "router-swaps",
        "allow",
        "selector",
        {"transaction": {"calls": [{"contract": ROUTER, "selectors": [SWAP]}]}},
    ),
    rule(
        "router-no-multicall",
        "deny",
        "selector",
        {"transaction": {"calls": [{"contract": ROUTER, "selectors": [MULTICALL]}]}},
    ),
    # ERC-20 transfer/approve: decoded recipient and amount ceilings
    rule(
        "usdc-up-to-1000",
        "allow",
        "erc20",
        {
            "transaction": {
                "value": {"max": 0},
                **erc20_check(
                    ["transfer", "approve"],
                    recipients={"not_in": [BLOCKED]},
                    amount={"max": 1000 * USDC},
                ),
            }
        },
    ),
    rule(
        "usdc-never-to-blocked",
        "deny",
        "erc20",
        {"transaction": erc20_check(["transfer", "approve"], recipients={"in": [BLOCKED]})},
    ),
    rule(
        "usdc-no-huge-approvals",
        "deny",
        "erc20",
        {"transaction": erc20_check(["approve"], amount={"min": 10**6 * USDC})},
    ),
    # EIP-7702 delegation targets (standalone authorizations and type 4 transactions)
    rule("delegate-to-trusted", "allow", "delegation", authorizations({"in": [DELEGATE]})),
    rule("never-delegate-to-drainer", "deny", "delegation", authorizations({"in": [DRAINER]})),
    # EIP-7702 chainId 0 (valid on every chain): only a rule naming chain 0 allows it
    rule(
        "any-chain-delegation",
        "allow",
        "any-chain",
        authorizations({"in": [DELEGATE]}, chain_id=[0]),
    ),
    # blob count
    rule(
        "up-to-two-blobs",
        "allow",
        "blob-count",
        {"transaction": {"type": [3], "blob_count": {"max": 2}}},
    ),
    rule("never-five-blobs", "deny", "blob-count", {"transaction": {"blob_count": {"min": 5}}}),
    # personal_sign / eth_sign on and off
    rule("messages-on", "allow", "messages-on", {"message": {}}),
    rule("messages-off", "deny", "messages-off", {"message": {}}),
    # EIP-712: domain name, version, chainId, verifyingContract; primaryType allowlist
    rule(
        "usdc-permits",
        "allow",
        "typed-data",
        {
            "typed_data": {
                "primary_type": ["Permit"],
                "domain": {
                    "name": ["USD Coin"],
                    "version": ["2"],
                    "chain_id": [CHAIN_ID],
                    "verifying_contract": [TOKEN],
                },
            }
        },
    ),
    rule(
        "never-sign-for-drainer",
        "deny",
        "typed-data",
        {"typed_data": {"domain": {"verifying_contract": [DRAINER]}}},
    ),
]
LABELS = sorted({label for r in POLICY_RULES for label in r["accounts"]["labels"]})


def policy_text() -> str:
    """The policy as the stack's template: JSON (so YAML) with the dev names spliced in."""
    document = {
        "version": 1,
        "description": "tests/test_policy_stack_conditions.py: a rule per condition kind",
        "principals": {
            "stamp_keys": [
                {"id": _KEY_ID, "scopes": ["create", "sign", "read"], "public_key": _KEY_PEM}
            ],
            "relay_identities": [{"id": _TOKEN_NAME, "scopes": ["create", "sign", "read"]}],
        },
        "rules": POLICY_RULES,
    }
    text = json.dumps(document, indent=1)
    for placeholder in (_TOKEN_NAME, _KEY_ID, _KEY_PEM):
        text = text.replace(f'"{placeholder}"', "{{ " + placeholder.strip("_") + " | to_json }}")
    return text


@pytest.fixture(scope="module")
def stack_options() -> dict[str, Any]:
    return {"policy_text": policy_text()}


@pytest.fixture(scope="module")
def accounts(stack: LocalStack) -> dict[str, dict[str, Any]]:
    """One account per label: its id and address."""
    made = {}
    for label in LABELS:
        status, body = http_json("POST", f"{stack.relay_url}/v1/accounts", {"labels": [label]})
        assert status == 201, body
        made[label] = body
    return made


# -- requests ----------------------------------------------------------------------------
def tx(**fields: Any) -> dict[str, Any]:
    """An EIP-1559 transaction on CHAIN_ID within every ceiling; None drops a field."""
    base: dict[str, Any] = {
        "type": "0x2",
        "chainId": hex(CHAIN_ID),
        "nonce": "0x0",
        "to": PAYEE,
        "value": hex(ETH // 10),
        "gas": hex(21_000),
        "maxFeePerGas": hex(30 * GWEI),
        "maxPriorityFeePerGas": hex(GWEI),
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def legacy(**fields: Any) -> dict[str, Any]:
    fees = {"gasPrice": hex(30 * GWEI), "maxFeePerGas": None, "maxPriorityFeePerGas": None}
    return tx(**{"type": "0x0", **fees, **fields})


def blob_tx(count: int, **fields: Any) -> dict[str, Any]:
    blobs = {"maxFeePerBlobGas": hex(GWEI), "blobVersionedHashes": [BLOB_HASH] * count}
    return tx(**{"type": "0x3", **blobs, **fields})


def word(address: str) -> str:
    return address[2:].lower().rjust(64, "0")


def erc20_call(selector: str, recipient: str, amount: int, trailing: str = "") -> dict[str, Any]:
    data = "0x" + selector + word(recipient) + amount.to_bytes(32, "big").hex() + trailing
    return tx(to=TOKEN, value="0x0", gas=hex(60_000), data=data)


def signed_authorization(address: str, chain_id: int = CHAIN_ID) -> dict[str, Any]:
    """A real signed EIP-7702 tuple (of a throwaway key) for a type 4 transaction."""
    signed = Account.sign_authorization(
        {"chainId": chain_id, "address": address, "nonce": 0}, Account.create().key
    )
    return {
        "chainId": hex(chain_id),
        "address": address,
        "nonce": "0x0",
        "yParity": hex(signed.y_parity),
        "r": hex(signed.r),
        "s": hex(signed.s),
    }


def set_code_tx(address: str, chain_id: int = CHAIN_ID) -> dict[str, Any]:
    authorization = signed_authorization(address, chain_id)
    return tx(type="0x4", value="0x0", gas=hex(80_000), authorizationList=[authorization])


def authorization(address: str, chain_id: int = CHAIN_ID) -> dict[str, Any]:
    return {"chainId": hex(chain_id), "address": address, "nonce": "0x0"}


def permit(domain: dict[str, Any] | None = None, primary: str = "Permit") -> dict[str, Any]:
    """An EIP-2612 permit (or another primary type) under a USDC-like domain."""
    full_domain = {
        "name": "USD Coin",
        "version": "2",
        "chainId": CHAIN_ID,
        "verifyingContract": TOKEN,
    }
    full_domain.update(domain or {})
    full_domain = {key: value for key, value in full_domain.items() if value is not None}
    fields = {
        "name": "string",
        "version": "string",
        "chainId": "uint256",
        "verifyingContract": "address",
    }
    return {
        "types": {
            "EIP712Domain": [{"name": k, "type": fields[k]} for k in full_domain],
            primary: [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
            ],
        },
        "primaryType": primary,
        "domain": full_domain,
        "message": {"owner": PAYEE, "spender": STRANGER, "value": 5},
    }


T, M, TD, A = "transaction", "message", "typed_data", "authorization"
DEFAULT = "default-deny"


@dataclass(frozen=True)
class Case:
    kind: str  # the condition kind
    what: str  # the request, in a word or two
    payload: Any
    rule: str  # the rule that decides
    allowed: bool
    op: str = T  # transaction | message | typed_data | authorization
    on: str = ""  # the label of the account it runs on; the kind's by default

    @property
    def label(self) -> str:
        return self.on or self.kind

    @property
    def id(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return f"{self.kind}:{self.what}:{verdict}-by-{self.rule}"


def allow(kind: str, what: str, payload: Any, rule_name: str, **where: str) -> Case:
    return Case(kind, what, payload, rule_name, True, **where)


def deny(kind: str, what: str, payload: Any, rule_name: str, **where: str) -> Case:
    return Case(kind, what, payload, rule_name, False, **where)


CREATE = tx(to=None, value="0x0", gas=hex(90_000), data="0x6080")
ACCESS_LIST_TX = tx(type="0x1", gasPrice=hex(GWEI), maxFeePerGas=None, maxPriorityFeePerGas=None)
TEXT = "hello from the policy test"
CASES = [
    allow("tx-type", "eip1559", tx(), "type-dynamic-fee"),
    deny("tx-type", "legacy", legacy(), "type-no-legacy"),
    deny("tx-type", "access-list-unlisted", ACCESS_LIST_TX, DEFAULT),
    allow("chain-id", "sepolia", tx(), "chain-sepolia"),
    deny("chain-id", "mainnet", tx(chainId="0x1"), "chain-never-mainnet"),
    deny("chain-id", "unlisted-chain", tx(chainId=hex(8453)), DEFAULT),
    allow("to", "listed-payee", tx(to=PAYEE), "to-allowlist"),
    deny("to", "denylisted", tx(to=BLOCKED), "to-denylist"),
    deny("to", "unlisted", tx(to=STRANGER), DEFAULT),
    allow("to-not-in", "any-other", tx(to=STRANGER), "to-anyone-but"),
    deny("to-not-in", "excluded", tx(to=BLOCKED), DEFAULT),
    allow("contract-creation", "create", CREATE, "deployments", on="creation"),
    deny("contract-creation", "call", tx(), DEFAULT, on="creation"),
    allow("contract-creation", "call", tx(), "calls-only", on="no-creation"),
    deny("contract-creation", "create", CREATE, "never-deploy", on="no-creation"),
    allow("value", "1-eth", tx(value=hex(ETH)), "value-up-to-1-eth"),
    deny("value", "20-eth", tx(value=hex(20 * ETH)), "value-over-10-eth"),
    deny("value", "2-eth", tx(value=hex(2 * ETH)), DEFAULT),
    allow(
        "fees",
        "at-every-ceiling",
        tx(gas=hex(100_000), maxFeePerGas=hex(100 * GWEI), maxPriorityFeePerGas=hex(2 * GWEI)),
        "fee-ceilings",
    ),
    allow("fees", "legacy-gas-price", legacy(gasPrice=hex(100 * GWEI)), "fee-ceilings"),
    allow(
        "fees", "blob-fee-at-ceiling", blob_tx(1, maxFeePerBlobGas=hex(10 * GWEI)), "fee-ceilings"
    ),
    deny("fees", "gas", tx(gas=hex(2_000_000)), "gas-over-1m"),
    deny("fees", "gas-price", legacy(gasPrice=hex(600 * GWEI)), "gas-price-over-500"),
    deny("fees", "max-fee", tx(maxFeePerGas=hex(600 * GWEI)), "max-fee-over-500"),
    deny(
        "fees",
        "tip",
        tx(maxFeePerGas=hex(60 * GWEI), maxPriorityFeePerGas=hex(60 * GWEI)),
        "tip-over-50",
    ),
    deny("fees", "blob-fee", blob_tx(1, maxFeePerBlobGas=hex(200 * GWEI)), "blob-fee-over-100"),
    deny("fees", "gas-above-ceiling", tx(gas=hex(100_001)), DEFAULT),
    deny("fees", "gas-price-above-ceiling", legacy(gasPrice=hex(101 * GWEI)), DEFAULT),
    deny("fees", "max-fee-above-ceiling", tx(maxFeePerGas=hex(101 * GWEI)), DEFAULT),
    deny("fees", "tip-above-ceiling", tx(maxPriorityFeePerGas=hex(3 * GWEI)), DEFAULT),
    deny("fees", "blob-fee-above-ceiling", blob_tx(1, maxFeePerBlobGas=hex(11 * GWEI)), DEFAULT),
    allow("selector", "swap", tx(to=ROUTER, data=SWAP + "00" * 32), "router-swaps"),
    deny("selector", "multicall", tx(to=ROUTER, data=MULTICALL + "00" * 32), "router-no-multicall"),
    deny("selector", "swap-elsewhere", tx(to=STRANGER, data=SWAP + "00" * 32), DEFAULT),
    allow("erc20", "transfer", erc20_call(TRANSFER, PAYEE, 1000 * USDC), "usdc-up-to-1000"),
    allow("erc20", "approve", erc20_call(APPROVE, STRANGER, 5 * USDC), "usdc-up-to-1000"),
    deny(
        "erc20", "transfer-to-blocked", erc20_call(TRANSFER, BLOCKED, USDC), "usdc-never-to-blocked"
    ),
    deny(
        "erc20",
        "unlimited-approve",
        erc20_call(APPROVE, PAYEE, 2**256 - 1),
        "usdc-no-huge-approvals",
    ),
    deny("erc20", "transfer-above-ceiling", erc20_call(TRANSFER, PAYEE, 1000 * USDC + 1), DEFAULT),
    # Calldata the policy cannot read strictly (a trailing byte): a deny rule catches it.
    deny(
        "erc20", "trailing-byte", erc20_call(TRANSFER, PAYEE, USDC, "00"), "usdc-never-to-blocked"
    ),
    allow("delegation", "authorization", authorization(DELEGATE), "delegate-to-trusted", op=A),
    deny(
        "delegation",
        "authorization-to-drainer",
        authorization(DRAINER),
        "never-delegate-to-drainer",
        op=A,
    ),
    deny("delegation", "authorization-unlisted", authorization(STRANGER), DEFAULT, op=A),
    allow("delegation", "type4", set_code_tx(DELEGATE), "delegate-to-trusted"),
    deny("delegation", "type4-to-drainer", set_code_tx(DRAINER), "never-delegate-to-drainer"),
    allow(
        "chain-zero",
        "authorization-named",
        authorization(DELEGATE, 0),
        "any-chain-delegation",
        op=A,
        on="any-chain",
    ),
    allow(
        "chain-zero",
        "type4-named",
        set_code_tx(DELEGATE, 0),
        "any-chain-delegation",
        on="any-chain",
    ),
    deny(
        "chain-zero",
        "authorization-unnamed",
        authorization(DELEGATE, 0),
        DEFAULT,
        op=A,
        on="delegation",
    ),
    deny("chain-zero", "type4-unnamed", set_code_tx(DELEGATE, 0), DEFAULT, on="delegation"),
    allow("blob-count", "2-blobs", blob_tx(2), "up-to-two-blobs"),
    deny("blob-count", "5-blobs", blob_tx(5), "never-five-blobs"),
    deny("blob-count", "3-blobs", blob_tx(3), DEFAULT),
    allow("messages", "on", TEXT, "messages-on", op=M, on="messages-on"),
    deny("messages", "off", TEXT, "messages-off", op=M, on="messages-off"),
    deny("messages", "no-message-rule", TEXT, DEFAULT, op=M, on="value"),
    allow("typed-data", "permit", permit(), "usdc-permits", op=TD),
    deny(
        "typed-data",
        "drainer-contract",
        permit({"verifyingContract": DRAINER}),
        "never-sign-for-drainer",
        op=TD,
    ),
    deny("typed-data", "name", permit({"name": "USD Coin Fake"}), DEFAULT, op=TD),
    deny("typed-data", "version", permit({"version": "1"}), DEFAULT, op=TD),
    deny("typed-data", "no-version", permit({"version": None}), DEFAULT, op=TD),
    deny("typed-data", "chain-id", permit({"chainId": 1}), DEFAULT, op=TD),
    deny(
        "typed-data", "verifying-contract", permit({"verifyingContract": STRANGER}), DEFAULT, op=TD
    ),
    deny("typed-data", "primary-type", permit(primary="Order"), DEFAULT, op=TD),
]


# -- transports --------------------------------------------------------------------------
REST_ROUTES = {T: "transaction", M: "message", TD: "typed-data", A: "authorization"}
#: The JSON-RPC methods per op; an authorization has none (REST only).
RPC_METHODS = {
    T: ["eth_signTransaction"],
    M: ["personal_sign", "eth_sign"],
    TD: ["eth_signTypedData_v4"],
    A: [],
}
STAMP = "+stamp"


def transports(op: str) -> list[str]:
    """REST and each JSON-RPC method of ``op``, each with the stack's bearer token (the
    relay identity ``dev-token``) and stamped with its stamp key (``dev-api-key``)."""
    return [name + auth for name in ["rest", *RPC_METHODS[op]] for auth in ("", STAMP)]


def principal(transport: str) -> str:
    return "stamp:dev-api-key" if transport.endswith(STAMP) else "relay:dev-token"


Answer = tuple[Any, dict[str, Any] | None]
"""(the signed result, None), or (None, the refusal as {code, message})."""


def send(stack: LocalStack, account: dict[str, Any], case: Case, transport: str) -> Answer:
    method = transport.removesuffix(STAMP)
    if method == "rest":
        path = f"/v1/accounts/{account['account_id']}/sign/{REST_ROUTES[case.op]}"
        body = json.dumps({case.op: case.payload}).encode()
    else:
        path = "/"
        params = rpc_params(method, account["address"], case.payload)
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode()
    headers = {}
    if transport.endswith(STAMP):
        headers["X-Stamp"] = make_stamp(load_key_file(stack.api_key_path), "POST", path, body)
    status, answer = http_json("POST", stack.relay_url + path, body, headers)
    return rest_answer(case, status, answer) if method == "rest" else rpc_answer(status, answer)


def rest_answer(case: Case, status: int, body: dict[str, Any]) -> Answer:
    if status == 200:
        if case.op == T:
            return body["raw_transaction"], None
        return (body["authorization"] if case.op == A else body["signature"]), None
    assert status == 403, body  # every policy refusal of these cases is a 403
    assert set(body) == {"error"}, body
    return None, body["error"]


def rpc_params(method: str, address: str, payload: Any) -> list[Any]:
    if method == "eth_signTransaction":
        return [{**payload, "from": address}]
    if method == "personal_sign":
        return ["0x" + payload.encode().hex(), address]
    if method == "eth_sign":
        return [address, "0x" + payload.encode().hex()]
    return [address, payload]  # eth_signTypedData_v4


def rpc_answer(status: int, body: dict[str, Any]) -> Answer:
    assert status == 200, body  # JSON-RPC answers errors in the body
    if "result" in body:
        return body["result"], None
    error = body["error"]
    assert error["code"] == -32003, error  # "rejected", for every policy refusal
    return None, {"code": error["data"]["code"], "message": error["message"]}


# -- independent checks ------------------------------------------------------------------
def signable(case: Case) -> SignableMessage:
    if case.op == M:
        return encode_defunct(text=case.payload)
    return encode_typed_data(full_message=case.payload)


def authorization_digest(authorization_request: dict[str, Any]) -> bytes:
    """EIP-7702: keccak256(0x05 || rlp([chain_id, address, nonce]))."""
    fields = [
        int(authorization_request["chainId"], 16),
        bytes.fromhex(authorization_request["address"][2:]),
        int(authorization_request["nonce"], 16),
    ]
    return keccak(b"\x05" + rlp.encode(fields))


def check_signature(case: Case, result: Any, address: str) -> str:
    """Recover the signer of ``result`` with eth-account (eth-keys for an authorization)
    and assert it is ``address``; what the enclave's receipt names (hash or digest)."""
    if case.op == T:
        assert Account.recover_transaction(result) == address
        return "0x" + keccak(bytes.fromhex(result[2:])).hex()
    if case.op == A:
        digest = authorization_digest(case.payload)
        assert (result["chainId"], result["nonce"]) == (
            case.payload["chainId"],
            case.payload["nonce"],
        )
        assert result["address"].lower() == case.payload["address"]
        vrs = (int(result["yParity"], 16), int(result["r"], 16), int(result["s"], 16))
        signer = Signature(vrs=vrs).recover_public_key_from_msg_hash(digest)
        assert signer.to_checksum_address() == address
        return "0x" + digest.hex()
    message = signable(case)
    assert Account.recover_message(message, signature=result) == address
    return "0x" + keccak(b"\x19" + message.version + message.header + message.body).hex()


def receipts(stack: LocalStack) -> Iterator[dict[str, Any]]:
    for line in stack.audit_log.read_text().splitlines():
        receipt: dict[str, Any] = json.loads(line)["receipt"]
        if receipt["kind"] == "decision":
            yield receipt


def receipt_of(stack: LocalStack, result: str) -> dict[str, Any]:
    """The receipt of the signature that ``result`` (hash or digest) names, once the
    relay has appended it to the audit log."""
    found: list[dict[str, Any]] = []

    def appended() -> bool:
        found[:] = [r for r in receipts(stack) if r["result"] == result]
        return bool(found)

    assert wait_for(appended, timeout=15), f"no receipt names {result}"
    assert len(found) == 1, found
    return found[0]


def variant(case: Case, transport: str) -> Any:
    """The case's payload made unique to the transport, in a field no rule looks at (the
    nonce, the text, a permit's value): each signature has its own receipt."""
    n = transports(case.op).index(transport)
    if case.op == M:
        return f"{case.payload} ({transport})"
    if case.op == TD:
        return {**case.payload, "message": {**case.payload["message"], "value": n}}
    return {**case.payload, "nonce": hex(n)}  # a transaction or an authorization


PARAMS = [
    pytest.param(case, transport, id=f"{case.id}:{transport}")
    for case in CASES
    for transport in transports(case.op)
]


def test_every_condition_kind_has_an_allowed_and_a_denied_case() -> None:
    kinds = {case.kind for case in CASES}
    assert kinds == {
        "tx-type",
        "chain-id",
        "to",
        "to-not-in",
        "contract-creation",
        "value",
        "fees",
        "selector",
        "erc20",
        "delegation",
        "chain-zero",
        "blob-count",
        "messages",
        "typed-data",
    }
    for kind in kinds:
        verdicts = {case.allowed for case in CASES if case.kind == kind}
        assert verdicts == {True, False}, kind
    for effect, allowed in (("allow", True), ("deny", False)):
        rules = {r["name"] for r in POLICY_RULES if r["effect"] == effect}
        deciding = {case.rule for case in CASES if case.allowed is allowed} - {DEFAULT}
        assert deciding == rules, effect  # every rule of the policy decides a case


@pytest.mark.parametrize(("case", "transport"), PARAMS)
def test_the_policy_decides_through_the_relay_and_names_the_rule(
    stack: LocalStack, accounts: dict[str, dict[str, Any]], case: Case, transport: str
) -> None:
    account = accounts[case.label]
    case = dataclasses.replace(case, payload=variant(case, transport))
    result, error = send(stack, account, case, transport)
    if case.allowed:
        assert error is None, error
        reference = check_signature(case, result, account["address"])
        receipt = receipt_of(stack, reference)
        assert (receipt["decision"], receipt["rule"], receipt["code"]) == ("allow", case.rule, None)
        assert receipt["account"] == account["account_id"]
        assert receipt["principal"] == principal(transport)
    else:
        assert result is None, result
        assert error is not None
        assert error["code"] == "policy_denied", error
        assert error["message"].startswith(f"policy rule '{case.rule}': "), error
        if case.kind == "chain-zero":
            assert "chainId 0" in error["message"], error


def test_a_batch_is_judged_item_by_item_each_refusal_naming_its_rule(
    stack: LocalStack, accounts: dict[str, dict[str, Any]]
) -> None:
    """The transaction cases of each account in one REST batch (``sign/transactions``),
    then in one JSON-RPC batch: each item gets the verdict it gets alone."""
    labels = sorted({c.label for c in CASES if c.op == T})
    assert len(labels) > 10
    for label in labels:
        account = accounts[label]
        cases = [c for c in CASES if c.label == label and c.op == T]
        txs = [{**c.payload, "nonce": hex(100 + i)} for i, c in enumerate(cases)]
        status, body = http_json(
            "POST",
            f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transactions",
            {"transactions": txs},
        )
        assert status == 200, body
        rpc_batch = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_signTransaction", "params": [params]}
            for i, params in enumerate({**tx, "from": account["address"]} for tx in txs)
        ]
        status, rpc_body = http_json("POST", stack.relay_url, json.dumps(rpc_batch).encode())
        assert status == 200, rpc_body
        answers: list[dict[str, Any]] = sorted(rpc_body, key=lambda a: a["id"])  # type: ignore[arg-type]
        for case, item, answer in zip(cases, body["results"], answers, strict=True):
            if case.allowed:
                assert Account.recover_transaction(item["raw_transaction"]) == account["address"]
                assert Account.recover_transaction(answer["result"]) == account["address"]
                continue
            assert item["error"]["code"] == "policy_denied", (case.id, item)
            assert item["error"]["message"].startswith(f"policy rule '{case.rule}': ")
            assert (answer["error"]["code"], answer["error"]["data"]["code"]) == (
                -32003,
                "policy_denied",
            )
            assert answer["error"]["message"].startswith(f"policy rule '{case.rule}': ")
