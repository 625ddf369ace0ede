"""The loaded signing policy: principals, rules and velocity limits, as immutable values.

:mod:`enclave_app.policy.document` builds these from the canonical JSON baked into the
image; :mod:`enclave_app.policy.evaluate` reads them. Conditions live in
:mod:`enclave_app.policy.conditions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from enclave_app.errors import EnclaveError, ErrorCode

if TYPE_CHECKING:
    from enclave_app.policy.conditions import Condition
    from enclave_app.policy.keys import PublicKey

#: Rule names the engine uses for decisions no written rule made.
DEFAULT_DENY = "default-deny"
PRINCIPAL_SCOPES = "principal-scopes"
ACCOUNT_CREATION = "account-creation"
RESERVED_NAMES = frozenset({DEFAULT_DENY, PRINCIPAL_SCOPES, ACCOUNT_CREATION})


class Scope(StrEnum):
    CREATE = "create"
    SIGN = "sign"
    READ = "read"


class Op(StrEnum):
    """The signing operations a rule or limit can apply to."""

    SIGN_TRANSACTION = "sign_transaction"
    SIGN_MESSAGE = "sign_message"
    SIGN_TYPED_DATA = "sign_typed_data"
    SIGN_AUTHORIZATION = "sign_authorization"


class PrincipalKind(StrEnum):
    STAMP = "stamp"
    RELAY = "relay"


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: a stamp key verified in the enclave, or an identity the relay asserts.

    ``account_bound`` marks a stamp key sealed with the account at creation (not listed
    in the policy): it matches ``stamp_keys: any`` but never a list of key ids.
    """

    kind: PrincipalKind
    id: str
    scopes: frozenset[Scope]
    account_bound: bool = False


@dataclass(frozen=True)
class StampKey:
    id: str
    public_key: PublicKey
    spki_der: bytes
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class ApproverKey:
    id: str
    public_key: PublicKey
    spki_der: bytes


@dataclass(frozen=True, slots=True)
class PrincipalSelector:
    """Which principals a rule or limit covers. ``None`` for a kind: none of that kind;
    ``ANY``: every principal of that kind; otherwise the listed ids."""

    stamp_keys: frozenset[str] | None
    relay_identities: frozenset[str] | None
    any_stamp_key: bool = False
    any_relay_identity: bool = False

    def covers(self, principal: Principal) -> bool:
        if principal.kind is PrincipalKind.STAMP:
            if self.any_stamp_key:
                return True
            return (
                not principal.account_bound
                and self.stamp_keys is not None
                and principal.id in self.stamp_keys
            )
        if self.any_relay_identity:
            return True
        return self.relay_identities is not None and principal.id in self.relay_identities


#: The selector of a limit that names no principals: it counts every request.
EVERY_PRINCIPAL = PrincipalSelector(None, None, any_stamp_key=True, any_relay_identity=True)


@dataclass(frozen=True, slots=True)
class AccountScope:
    """All accounts (both fields None), accounts with any of ``labels``, or one account."""

    labels: frozenset[str] | None = None
    account_id: str | None = None

    def covers(self, account_id: str, labels: frozenset[str]) -> bool:
        if self.account_id is not None:
            return account_id == self.account_id
        if self.labels is not None:
            return not self.labels.isdisjoint(labels)
        return True

    def describe(self) -> str:
        if self.account_id is not None:
            return f"account {self.account_id}"
        if self.labels is not None:
            return "accounts labelled " + " or ".join(sorted(self.labels))
        return "all accounts"


@dataclass(frozen=True, slots=True)
class Approvals:
    threshold: int
    approvers: tuple[str, ...]

    def count(self, verified: frozenset[str]) -> int:
        return sum(1 for approver in self.approvers if approver in verified)


@dataclass(frozen=True)
class Rule:
    name: str
    effect: Effect
    principals: PrincipalSelector
    accounts: AccountScope
    condition: Condition
    approvals: Approvals | None = None
    description: str = ""


@dataclass(frozen=True)
class Limit:
    """At most ``max_value`` wei of transaction value and ``max_count`` signatures per
    account in any window of ``window_seconds`` (either bound may be absent)."""

    name: str
    accounts: AccountScope
    principals: PrincipalSelector
    operations: frozenset[Op]
    window_seconds: int
    max_value: int | None
    max_count: int | None
    description: str = ""


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy. ``sha256`` is the hash of the canonical bytes it was
    loaded from (what ``nitro-wallet policy compile`` prints)."""

    stamp_keys: Mapping[str, StampKey]
    relay_identities: Mapping[str, frozenset[Scope]]
    approvers: Mapping[str, ApproverKey]
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...] = ()
    sha256: str = ""
    description: str = ""
    deny_rules: Mapping[Op, tuple[Rule, ...]] = field(init=False, repr=False)
    allow_rules: Mapping[Op, tuple[Rule, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        deny: dict[Op, tuple[Rule, ...]] = {}
        allow: dict[Op, tuple[Rule, ...]] = {}
        for op in Op:
            applicable = [rule for rule in self.rules if rule.condition.applies_to(op)]
            deny[op] = tuple(r for r in applicable if r.effect is Effect.DENY)
            allow[op] = tuple(r for r in applicable if r.effect is Effect.ALLOW)
        object.__setattr__(self, "deny_rules", deny)
        object.__setattr__(self, "allow_rules", allow)

    def relay_principal(self, name: str, asserted_scopes: frozenset[str]) -> Principal:
        """The principal for an identity the relay asserts (a bearer token's name).

        The identity must be declared in the policy; its scopes are the declared ones
        narrowed by what the relay asserts (the relay can restrict, never widen).
        """
        declared = self.relay_identities.get(name)
        if declared is None:
            raise EnclaveError(
                ErrorCode.PRINCIPAL_UNKNOWN,
                f"policy rule '{PRINCIPAL_SCOPES}': relay identity {name[:64]!r} "
                "is not declared in the policy",
            )
        scopes = frozenset(scope for scope in declared if scope.value in asserted_scopes)
        return Principal(PrincipalKind.RELAY, name, scopes)

    def stamp_principal(self, key_id: str) -> Principal:
        """The principal for a policy-registered stamp key whose stamp was verified."""
        key = self.stamp_keys.get(key_id)
        if key is None:
            raise EnclaveError(
                ErrorCode.PRINCIPAL_UNKNOWN,
                f"policy rule '{PRINCIPAL_SCOPES}': stamp key {key_id[:64]!r} "
                "is not registered in the policy",
            )
        return Principal(PrincipalKind.STAMP, key.id, key.scopes)
