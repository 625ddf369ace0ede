"""Rule conditions over transactions, messages, typed data and EIP-7702 authorizations.

A rule's condition has one section per operation it applies to (``transaction``,
``message``, ``typed_data``, ``authorization``); a rule never applies to an operation
whose section it lacks. Inside a section every stated check must hold; an empty section
matches every request of that operation.

Each check gives one of three verdicts: the request matches, it does not, or the check
cannot judge it (calldata to a listed ERC-20 token that starts with a transfer, approve
or transferFrom selector but does not decode strictly). An allow rule matches only when
every check matches; a deny rule matches when no check says "does not match", so a
request the policy cannot read is never allowed by it and always caught by a deny rule
that looks at it.

Two more places where allow and deny read differently, both in the safe direction:
- a type 4 transaction's ``authorizationList``: an allow rule needs *every*
  authorization to satisfy its ``delegation`` check, a deny rule catches the
  transaction when *any* authorization satisfies it;
- an EIP-7702 authorization with chainId 0 is valid on every chain: an allow rule
  matches it only when its ``chain_id`` list names 0 explicitly (a rule without a
  chain_id list does not allow it), while a deny rule without a chain_id list catches
  it like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from enclave_app.policy import erc20
from enclave_app.policy.model import Op
from enclave_app.signing.transactions import BLOB, SET_CODE, Authorization, Transaction

_T = TypeVar("_T")


class Verdict(Enum):
    MATCH = "match"
    NO_MATCH = "no_match"
    UNDECIDABLE = "undecidable"


MATCH, NO_MATCH, UNDECIDABLE = Verdict.MATCH, Verdict.NO_MATCH, Verdict.UNDECIDABLE


@dataclass(frozen=True, slots=True)
class Range:
    """``minimum <= value <= maximum``; an absent bound is no bound."""

    minimum: int | None = None
    maximum: int | None = None

    def holds(self, value: int) -> bool:
        if self.maximum is not None and value > self.maximum:
            return False
        return self.minimum is None or value >= self.minimum


@dataclass(frozen=True, slots=True)
class AddressList:
    """An allow list (``in``) and/or a deny list (``not_in``) of 20-byte addresses."""

    within: frozenset[bytes] | None = None
    outside: frozenset[bytes] | None = None

    def holds(self, address: bytes) -> bool:
        if self.within is not None and address not in self.within:
            return False
        return self.outside is None or address not in self.outside


def _chain_allowed(chain_id: int, chain_ids: frozenset[int] | None, *, allow: bool) -> bool:
    """The chainId rule for EIP-7702 authorizations (see the module docstring)."""
    if chain_ids is None:
        return not (allow and chain_id == 0)
    return chain_id in chain_ids


@dataclass(frozen=True, slots=True)
class Erc20Condition:
    """A strictly decoded ERC-20 call to one of ``tokens``, of one of ``functions``,
    whose recipient (``to``, or the ``spender`` of approve) and amount pass."""

    tokens: frozenset[bytes]
    functions: frozenset[erc20.Function]
    recipients: AddressList | None = None
    amount: Range | None = None

    def check(self, to: bytes | None, data: bytes) -> Verdict:
        if to is None or to not in self.tokens:
            return NO_MATCH
        function = erc20.function_of(data)
        if function is None or function not in self.functions:
            return NO_MATCH
        call = erc20.decode(data)
        if call is None:
            return UNDECIDABLE
        if self.recipients is not None and not self.recipients.holds(call.recipient):
            return NO_MATCH
        if self.amount is not None and not self.amount.holds(call.amount):
            return NO_MATCH
        return MATCH


@dataclass(frozen=True, slots=True)
class AuthorizationCondition:
    """EIP-7702 delegation targets and chain ids: the standalone ``authorization``
    section, and ``delegation`` inside a transaction section (type 4 only)."""

    targets: AddressList | None = None
    chain_ids: frozenset[int] | None = None

    def holds(self, authorization: Authorization, *, allow: bool) -> bool:
        if not _chain_allowed(authorization.chain_id, self.chain_ids, allow=allow):
            return False
        return self.targets is None or self.targets.holds(authorization.address)


#: A transaction section with no delegation check still refuses chainId 0 when allowing.
_NO_DELEGATION_CHECK = AuthorizationCondition()


@dataclass(frozen=True, slots=True)
class TransactionCondition:
    types: frozenset[int] | None = None
    chain_ids: frozenset[int] | None = None
    to: AddressList | None = None
    contract_creation: bool | None = None
    value: Range | None = None
    gas: Range | None = None
    gas_price: Range | None = None
    max_fee_per_gas: Range | None = None
    max_priority_fee_per_gas: Range | None = None
    max_fee_per_blob_gas: Range | None = None
    blob_count: Range | None = None
    data_empty: bool | None = None
    calls: Mapping[bytes, frozenset[bytes]] | None = None
    """Contract address -> allowed 4-byte selectors."""
    erc20: Erc20Condition | None = None
    delegation: AuthorizationCondition | None = None

    def check(self, tx: Transaction, *, allow: bool) -> Verdict:  # noqa: PLR0911, PLR0912
        """Fee fields a transaction type does not have count as 0 (it pays nothing
        through them), so a ceiling holds and a floor above 0 does not."""
        if self.types is not None and tx.tx_type not in self.types:
            return NO_MATCH
        if self.chain_ids is not None and tx.chain_id not in self.chain_ids:
            return NO_MATCH
        if self.contract_creation is not None and (tx.to is None) != self.contract_creation:
            return NO_MATCH
        if self.to is not None and (tx.to is None or not self.to.holds(tx.to)):
            return NO_MATCH
        if self.value is not None and not self.value.holds(tx.value):
            return NO_MATCH
        if self.gas is not None and not self.gas.holds(tx.gas):
            return NO_MATCH
        if not _fee_holds(self.gas_price, tx.gas_price):
            return NO_MATCH
        if not _fee_holds(self.max_fee_per_gas, tx.max_fee_per_gas):
            return NO_MATCH
        if not _fee_holds(self.max_priority_fee_per_gas, tx.max_priority_fee_per_gas):
            return NO_MATCH
        if not _fee_holds(self.max_fee_per_blob_gas, tx.max_fee_per_blob_gas):
            return NO_MATCH
        if self.blob_count is not None and not self.blob_count.holds(
            len(tx.blob_versioned_hashes) if tx.tx_type == BLOB else 0
        ):
            return NO_MATCH
        if self.data_empty is not None and (not tx.data) != self.data_empty:
            return NO_MATCH
        if self.calls is not None and not _call_listed(self.calls, tx):
            return NO_MATCH
        if not self._delegations_pass(tx, allow=allow):
            return NO_MATCH
        if self.erc20 is not None:
            return self.erc20.check(tx.to, tx.data)
        return MATCH

    def _delegations_pass(self, tx: Transaction, *, allow: bool) -> bool:
        if tx.tx_type != SET_CODE:
            return self.delegation is None
        check = self.delegation or _NO_DELEGATION_CHECK
        results = (check.holds(auth.authorization, allow=allow) for auth in tx.authorization_list)
        if allow:
            return all(results)
        return self.delegation is None or any(results)


def _call_listed(calls: Mapping[bytes, frozenset[bytes]], tx: Transaction) -> bool:
    if tx.to is None or len(tx.data) < 4:
        return False
    selectors = calls.get(tx.to)
    return selectors is not None and tx.data[:4] in selectors


def _fee_holds(bound: Range | None, value: int | None) -> bool:
    return bound is None or bound.holds(0 if value is None else value)


@dataclass(frozen=True, slots=True)
class TypedDataFacts:
    """What the policy reads of an EIP-712 request (absent domain fields are None)."""

    primary_type: str
    name: str | None
    version: str | None
    chain_id: int | None
    verifying_contract: bytes | None


@dataclass(frozen=True, slots=True)
class TypedDataCondition:
    """Allowlists: every listed field must be present in the domain with a listed value."""

    primary_types: frozenset[str] | None = None
    names: frozenset[str] | None = None
    versions: frozenset[str] | None = None
    chain_ids: frozenset[int] | None = None
    verifying_contracts: frozenset[bytes] | None = None

    def check(self, facts: TypedDataFacts) -> Verdict:
        if not (
            _listed(self.primary_types, facts.primary_type)
            and _listed(self.names, facts.name)
            and _listed(self.versions, facts.version)
            and _listed(self.chain_ids, facts.chain_id)
            and _listed(self.verifying_contracts, facts.verifying_contract)
        ):
            return NO_MATCH
        return MATCH


def _listed(allowed: frozenset[_T] | None, value: _T | None) -> bool:
    return allowed is None or (value is not None and value in allowed)


@dataclass(frozen=True)
class Condition:
    """The sections of a rule's condition; a None section: the rule does not apply."""

    transaction: TransactionCondition | None = None
    message: bool = False
    typed_data: TypedDataCondition | None = None
    authorization: AuthorizationCondition | None = None

    def applies_to(self, op: Op) -> bool:
        if op is Op.SIGN_TRANSACTION:
            return self.transaction is not None
        if op is Op.SIGN_MESSAGE:
            return self.message
        if op is Op.SIGN_TYPED_DATA:
            return self.typed_data is not None
        return self.authorization is not None

    def check(self, payload: Payload, *, allow: bool) -> Verdict:
        """Judge a request's payload; a section the condition lacks never matches."""
        if isinstance(payload, Transaction):
            if self.transaction is None:
                return NO_MATCH
            return self.transaction.check(payload, allow=allow)
        if isinstance(payload, TypedDataFacts):
            return NO_MATCH if self.typed_data is None else self.typed_data.check(payload)
        if isinstance(payload, Authorization):
            if self.authorization is None:
                return NO_MATCH
            return MATCH if self.authorization.holds(payload, allow=allow) else NO_MATCH
        return MATCH if self.message else NO_MATCH


#: What a request carries for each op: the parsed transaction, the message bytes, the
#: typed data's facts, the parsed authorization.
Payload = Transaction | bytes | TypedDataFacts | Authorization
