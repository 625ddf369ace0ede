"""Every condition kind allows what it describes and refuses what it does not, as an
allow rule and as a deny rule, and every denial names the rule that decided it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from enclave_app.errors import ErrorCode
from enclave_app.policy import DEFAULT_DENY, Decision, Request, evaluate
from tests.policy_helpers import (
    OTHER,
    RECIPIENT,
    TOKEN,
    TYPED,
    authorization_request,
    message_request,
    policy,
    rule,
    signed_authorization,
    tx_request,
    typed_request,
)

GWEI = 10**9
BLOB_HASH = "0x01" + "ab" * 31
TRANSFER, APPROVE, TRANSFER_FROM = "0xa9059cbb", "0x095ea7b3", "0x23b872dd"


def word(value: int | str) -> str:
    """A 32-byte ABI word: an address (left-padded) or a uint256."""
    if isinstance(value, str):
        return "00" * 12 + value[2:]
    return f"{value:064x}"


def call(selector: str, *args: int | str) -> str:
    return selector + "".join(word(arg) for arg in args)


def legacy(**fields: Any) -> Request:
    base = {"type": 0, "gasPrice": GWEI, "maxFeePerGas": None, "maxPriorityFeePerGas": None}
    return tx_request(**{**base, **fields})


def blob(count: int = 1, **fields: Any) -> Request:
    base = {"type": 3, "maxFeePerBlobGas": GWEI, "blobVersionedHashes": [BLOB_HASH] * count}
    return tx_request(**{**base, **fields})


def set_code(*authorizations: dict[str, Any]) -> Request:
    return tx_request(type=4, authorizationList=list(authorizations))


Case = tuple[str, dict[str, Any], Callable[[], Request], Callable[[], Request]]

# (id, condition, a request it matches, a request it does not match)
CASES: list[Case] = [
    ("type", {"transaction": {"type": [2]}}, tx_request, legacy),
    ("chain_id", {"transaction": {"chain_id": [1]}}, tx_request, lambda: tx_request(chainId=5)),
    (
        "to.in",
        {"transaction": {"to": {"in": [RECIPIENT]}}},
        tx_request,
        lambda: tx_request(to=OTHER),
    ),
    (
        "to.not_in",
        {"transaction": {"to": {"not_in": [OTHER]}}},
        tx_request,
        lambda: tx_request(to=OTHER),
    ),
    (
        "to.in never matches a contract creation",
        {"transaction": {"to": {"not_in": [OTHER]}}},
        tx_request,
        lambda: tx_request(to=None, data="0x6000"),
    ),
    (
        "contract_creation=true",
        {"transaction": {"contract_creation": True}},
        lambda: tx_request(to=None, data="0x6000"),
        tx_request,
    ),
    (
        "contract_creation=false",
        {"transaction": {"contract_creation": False}},
        tx_request,
        lambda: tx_request(to=None, data="0x6000"),
    ),
    (
        "value.max",
        {"transaction": {"value": {"max": 10**17}}},
        tx_request,
        lambda: tx_request(value=10**17 + 1),
    ),
    (
        "value.min",
        {"transaction": {"value": {"min": 10**17}}},
        tx_request,
        lambda: tx_request(value=10**17 - 1),
    ),
    (
        "gas.max",
        {"transaction": {"gas": {"max": 21000}}},
        tx_request,
        lambda: tx_request(gas=21001),
    ),
    (
        "gas_price.max",
        {"transaction": {"gas_price": {"max": GWEI}}},
        legacy,
        lambda: legacy(gasPrice=GWEI + 1),
    ),
    (
        "max_fee_per_gas.max",
        {"transaction": {"max_fee_per_gas": {"max": 30 * GWEI}}},
        tx_request,
        lambda: tx_request(maxFeePerGas=30 * GWEI + 1),
    ),
    (
        "max_priority_fee_per_gas.max",
        {"transaction": {"max_priority_fee_per_gas": {"max": GWEI}}},
        tx_request,
        lambda: tx_request(maxPriorityFeePerGas=GWEI + 1),
    ),
    (
        "max_fee_per_blob_gas.max",
        {"transaction": {"max_fee_per_blob_gas": {"max": GWEI}}},
        blob,
        lambda: blob(maxFeePerBlobGas=GWEI + 1),
    ),
    (
        "max_fee_per_gas.min is not met by a type that has no such fee",
        {"transaction": {"max_fee_per_gas": {"min": 1}}},
        tx_request,
        legacy,
    ),
    ("blob_count.max", {"transaction": {"blob_count": {"max": 1}}}, blob, lambda: blob(2)),
    (
        "data_empty",
        {"transaction": {"data_empty": True}},
        tx_request,
        lambda: tx_request(data="0x00"),
    ),
    (
        "calls (selector per contract)",
        {"transaction": {"calls": [{"contract": TOKEN, "selectors": [TRANSFER]}]}},
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 5)),
        lambda: tx_request(to=TOKEN, data=call(APPROVE, RECIPIENT, 5)),
    ),
    (
        "calls: the selector on another contract",
        {"transaction": {"calls": [{"contract": TOKEN, "selectors": [TRANSFER]}]}},
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 5)),
        lambda: tx_request(to=OTHER, data=call(TRANSFER, RECIPIENT, 5)),
    ),
    (
        "erc20 transfer: amount ceiling",
        {
            "transaction": {
                "erc20": {"tokens": [TOKEN], "functions": ["transfer"], "amount": {"max": 5}}
            }
        },
        lambda: tx_request(to=TOKEN, value=0, data=call(TRANSFER, RECIPIENT, 5)),
        lambda: tx_request(to=TOKEN, value=0, data=call(TRANSFER, RECIPIENT, 6)),
    ),
    (
        "erc20 transfer: recipient list",
        {
            "transaction": {
                "erc20": {
                    "tokens": [TOKEN],
                    "functions": ["transfer"],
                    "recipients": {"in": [RECIPIENT]},
                }
            }
        },
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 5)),
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, OTHER, 5)),
    ),
    (
        "erc20 approve: spender list",
        {
            "transaction": {
                "erc20": {
                    "tokens": [TOKEN],
                    "functions": ["approve"],
                    "recipients": {"not_in": [OTHER]},
                }
            }
        },
        lambda: tx_request(to=TOKEN, data=call(APPROVE, RECIPIENT, 2**256 - 1)),
        lambda: tx_request(to=TOKEN, data=call(APPROVE, OTHER, 1)),
    ),
    (
        "erc20 transferFrom: recipient and amount",
        {
            "transaction": {
                "erc20": {
                    "tokens": [TOKEN],
                    "functions": ["transferFrom"],
                    "recipients": {"in": [RECIPIENT]},
                    "amount": {"max": 100},
                }
            }
        },
        lambda: tx_request(to=TOKEN, data=call(TRANSFER_FROM, OTHER, RECIPIENT, 100)),
        lambda: tx_request(to=TOKEN, data=call(TRANSFER_FROM, RECIPIENT, OTHER, 100)),
    ),
    (
        "erc20: function list",
        {"transaction": {"erc20": {"tokens": [TOKEN], "functions": ["transfer"]}}},
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 1)),
        lambda: tx_request(to=TOKEN, data=call(APPROVE, RECIPIENT, 1)),
    ),
    (
        "erc20: token list",
        {"transaction": {"erc20": {"tokens": [TOKEN], "functions": ["transfer"]}}},
        lambda: tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 1)),
        lambda: tx_request(to=OTHER, data=call(TRANSFER, RECIPIENT, 1)),
    ),
    (
        "delegation targets",
        {"transaction": {"delegation": {"targets": {"in": [RECIPIENT]}}}},
        lambda: set_code(signed_authorization(address=RECIPIENT)),
        lambda: set_code(signed_authorization(address=OTHER)),
    ),
    (
        "delegation chain ids",
        {"transaction": {"delegation": {"chain_id": [1]}}},
        lambda: set_code(signed_authorization(chain_id=1)),
        lambda: set_code(signed_authorization(chain_id=5)),
    ),
    (
        "delegation needs a type 4 transaction",
        {"transaction": {"delegation": {"chain_id": [1]}}},
        lambda: set_code(signed_authorization(chain_id=1)),
        tx_request,
    ),
    ("message section", {"message": {}}, message_request, typed_request),
    (
        "typed_data primary_type",
        {"typed_data": {"primary_type": ["Permit"]}},
        typed_request,
        lambda: typed_request(_retyped("Approval")),
    ),
    (
        "typed_data domain name",
        {"typed_data": {"domain": {"name": ["USD Coin"]}}},
        typed_request,
        lambda: typed_request(_domain(name="Tether")),
    ),
    (
        "typed_data domain version",
        {"typed_data": {"domain": {"version": ["2"]}}},
        typed_request,
        lambda: typed_request(_domain(version="1")),
    ),
    (
        "typed_data domain chain_id",
        {"typed_data": {"domain": {"chain_id": [1]}}},
        typed_request,
        lambda: typed_request(_domain(chainId="0x5")),
    ),
    (
        "typed_data domain verifying_contract",
        {"typed_data": {"domain": {"verifying_contract": [TOKEN]}}},
        typed_request,
        lambda: typed_request(_domain(verifyingContract=OTHER)),
    ),
    (
        "typed_data domain field missing from the request",
        {"typed_data": {"domain": {"version": ["2"]}}},
        typed_request,
        lambda: typed_request(_domain(version=None)),
    ),
    (
        "authorization targets",
        {"authorization": {"targets": {"in": [RECIPIENT]}}},
        authorization_request,
        lambda: authorization_request(address=OTHER),
    ),
    (
        "authorization chain ids",
        {"authorization": {"chain_id": [1]}},
        authorization_request,
        lambda: authorization_request(chain_id=5),
    ),
    (
        "a section applies only to its operation",
        {"transaction": {}},
        tx_request,
        message_request,
    ),
]


def _retyped(primary: str) -> dict[str, Any]:
    types = dict(TYPED["types"])
    types[primary] = types.pop("Permit")
    return {**TYPED, "types": types, "primaryType": primary}


def _domain(**changes: Any) -> dict[str, Any]:
    domain = {k: v for k, v in {**TYPED["domain"], **changes}.items() if v is not None}
    order = ("name", "version", "chainId", "verifyingContract")
    kinds = {"name": "string", "version": "string", "chainId": "uint256"}
    fields = [{"name": k, "type": kinds.get(k, "address")} for k in order if k in domain]
    return {**TYPED, "domain": domain, "types": {**TYPED["types"], "EIP712Domain": fields}}


ALLOW_EVERYTHING = rule(
    "allow-everything",
    {"transaction": {}, "message": {}, "typed_data": {}, "authorization": {}},
)


def assert_denied(decision: Decision, rule_name: str, code: ErrorCode) -> None:
    assert not decision.allowed
    assert decision.rule == rule_name
    assert decision.code is code
    assert decision.message.startswith(f"policy rule '{rule_name}': ")


@pytest.mark.parametrize(
    ("case", "condition", "matching", "other"), CASES, ids=[c[0] for c in CASES]
)
def test_an_allow_rule_allows_what_its_condition_describes_and_nothing_else(
    case: str,
    condition: dict[str, Any],
    matching: Callable[[], Request],
    other: Callable[[], Request],
) -> None:
    rules = policy(rule("the-rule", condition))
    allowed = evaluate(rules, matching())
    assert allowed.allowed, allowed.message
    assert allowed.rule == "the-rule"
    assert allowed.code is None
    assert_denied(evaluate(rules, other()), DEFAULT_DENY, ErrorCode.POLICY_DENIED)


@pytest.mark.parametrize(
    ("case", "condition", "matching", "other"), CASES, ids=[c[0] for c in CASES]
)
def test_a_deny_rule_refuses_what_its_condition_describes_and_names_itself(
    case: str,
    condition: dict[str, Any],
    matching: Callable[[], Request],
    other: Callable[[], Request],
) -> None:
    rules = policy(ALLOW_EVERYTHING, rule("the-deny-rule", condition, effect="deny"))
    assert_denied(evaluate(rules, matching()), "the-deny-rule", ErrorCode.POLICY_DENIED)
    decision = evaluate(rules, other())
    assert decision.allowed, decision.message
    assert decision.rule == "allow-everything"


def test_deny_wins_over_an_allow_rule_listed_before_it() -> None:
    rules = policy(
        rule("allow-bot", {"transaction": {}}),
        rule("no-other", {"transaction": {"to": {"in": [OTHER]}}}, effect="deny"),
    )
    assert evaluate(rules, tx_request()).rule == "allow-bot"
    assert_denied(evaluate(rules, tx_request(to=OTHER)), "no-other", ErrorCode.POLICY_DENIED)


def test_no_matching_rule_means_default_deny() -> None:
    assert_denied(evaluate(policy(), tx_request()), DEFAULT_DENY, ErrorCode.POLICY_DENIED)
    rules = policy(rule("messages-only", {"message": {}}))
    decision = evaluate(rules, tx_request())
    assert_denied(decision, DEFAULT_DENY, ErrorCode.POLICY_DENIED)
    assert "no rule allows this sign_transaction request" in decision.message


def test_the_first_matching_allow_rule_decides() -> None:
    rules = policy(
        rule("narrow", {"transaction": {"value": {"max": 1}}}),
        rule("broad", {"transaction": {}}),
        rule("broad-too", {"transaction": {}}),
    )
    assert evaluate(rules, tx_request(value=1)).rule == "narrow"
    assert evaluate(rules, tx_request(value=2)).rule == "broad"


def test_several_sections_in_one_rule_each_apply_to_their_operation() -> None:
    rules = policy(rule("both", {"transaction": {"chain_id": [1]}, "message": {}}))
    assert evaluate(rules, tx_request()).allowed
    assert evaluate(rules, message_request()).allowed
    assert not evaluate(rules, tx_request(chainId=5)).allowed
    assert not evaluate(rules, typed_request()).allowed


def test_all_checks_of_a_section_must_hold() -> None:
    rules = policy(
        rule(
            "small-to-recipient", {"transaction": {"to": {"in": [RECIPIENT]}, "value": {"max": 5}}}
        )
    )
    assert evaluate(rules, tx_request(value=5)).allowed
    assert not evaluate(rules, tx_request(value=6)).allowed
    assert not evaluate(rules, tx_request(to=OTHER, value=5)).allowed


def test_a_pre_eip155_transaction_matches_no_chain_id_list() -> None:
    rules = policy(rule("mainnet", {"transaction": {"chain_id": [1]}}))
    assert not evaluate(rules, legacy(chainId=None)).allowed
    assert evaluate(rules, legacy()).allowed


# -- EIP-7702 chainId 0 -------------------------------------------------------------------
def test_an_authorization_for_every_chain_needs_a_rule_that_names_chain_id_0() -> None:
    open_rule = policy(rule("any-target", {"authorization": {}}))
    decision = evaluate(open_rule, authorization_request(chain_id=0))
    assert_denied(decision, DEFAULT_DENY, ErrorCode.POLICY_DENIED)
    assert "chainId 0" in decision.message
    assert evaluate(open_rule, authorization_request(chain_id=1)).allowed
    by_name = policy(rule("every-chain", {"authorization": {"chain_id": [0]}}))
    assert evaluate(by_name, authorization_request(chain_id=0)).rule == "every-chain"
    assert not evaluate(by_name, authorization_request(chain_id=1)).allowed


def test_a_type_4_transaction_carrying_a_chain_id_0_authorization_needs_it_named() -> None:
    everything = policy(rule("any-tx", {"transaction": {}}))
    request = set_code(signed_authorization(chain_id=1), signed_authorization(chain_id=0))
    decision = evaluate(everything, request)
    assert_denied(decision, DEFAULT_DENY, ErrorCode.POLICY_DENIED)
    assert "chainId 0" in decision.message
    assert evaluate(everything, set_code(signed_authorization(chain_id=1))).allowed
    named = policy(rule("any-chain", {"transaction": {"delegation": {"chain_id": [0, 1]}}}))
    assert evaluate(named, request).rule == "any-chain"


def test_a_deny_rule_without_a_chain_id_list_catches_chain_id_0_too() -> None:
    rules = policy(
        rule("allow-all", {"authorization": {"chain_id": [0, 1]}}),
        rule(
            "no-delegation-to-other", {"authorization": {"targets": {"in": [OTHER]}}}, effect="deny"
        ),
    )
    request = authorization_request(chain_id=0, address=OTHER)
    assert_denied(evaluate(rules, request), "no-delegation-to-other", ErrorCode.POLICY_DENIED)


def test_an_allow_rule_needs_every_authorization_and_a_deny_rule_catches_any() -> None:
    request = set_code(signed_authorization(address=RECIPIENT), signed_authorization(address=OTHER))
    allow = policy(
        rule("to-recipient", {"transaction": {"delegation": {"targets": {"in": [RECIPIENT]}}}})
    )
    assert_denied(evaluate(allow, request), DEFAULT_DENY, ErrorCode.POLICY_DENIED)
    deny = policy(
        ALLOW_EVERYTHING,
        rule(
            "never-to-other",
            {"transaction": {"delegation": {"targets": {"in": [OTHER]}}}},
            effect="deny",
        ),
    )
    assert_denied(evaluate(deny, request), "never-to-other", ErrorCode.POLICY_DENIED)


# -- ERC-20 calldata the policy cannot read ---------------------------------------------------
MALFORMED = {
    "trailing byte": call(TRANSFER, RECIPIENT, 5) + "00",
    "trailing word": call(TRANSFER, RECIPIENT, 5) + word(OTHER),
    "short": call(TRANSFER, RECIPIENT, 5)[:-2],
    "dirty address word": TRANSFER + "ff" + "00" * 11 + RECIPIENT[2:] + word(5),
    "selector only": TRANSFER,
}
ERC20 = {"erc20": {"tokens": [TOKEN], "functions": ["transfer"], "recipients": {"in": [RECIPIENT]}}}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_erc20_calldata_is_never_allowed_by_an_erc20_rule(data: str) -> None:
    rules = policy(rule("usdc-to-recipient", {"transaction": ERC20}))
    assert_denied(
        evaluate(rules, tx_request(to=TOKEN, data=data)), DEFAULT_DENY, ErrorCode.POLICY_DENIED
    )


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_erc20_calldata_is_always_caught_by_an_erc20_deny_rule(data: str) -> None:
    """A deny rule aimed at OTHER catches a call it cannot read, even one whose
    readable part names RECIPIENT: the token may read it otherwise."""
    deny = {"erc20": {"tokens": [TOKEN], "functions": ["transfer"], "recipients": {"in": [OTHER]}}}
    rules = policy(ALLOW_EVERYTHING, rule("never-pay-other", {"transaction": deny}, effect="deny"))
    assert_denied(
        evaluate(rules, tx_request(to=TOKEN, data=data)), "never-pay-other", ErrorCode.POLICY_DENIED
    )
    assert evaluate(rules, tx_request(to=TOKEN, data=call(TRANSFER, RECIPIENT, 5))).allowed
