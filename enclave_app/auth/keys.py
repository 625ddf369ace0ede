"""The registered keys that stamps and approvals are checked against.

The registry itself (which keys exist, their scopes) comes from the measured policy
(``enclave_app.policy``) or from the account's sealed metadata; this module only states
what the verifiers need from an entry, so they work on either source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from enclave_app.auth.signatures import PublicKey

__all__ = ["ApproverKeyEntry", "StampKeyEntry", "lookup_stamp_key"]


class StampKeyEntry(Protocol):
    """A registered stamp (API) key: its public key and the scopes it holds."""

    @property
    def public_key(self) -> PublicKey: ...

    @property
    def scopes(self) -> frozenset[str]: ...


class ApproverKeyEntry(Protocol):
    """A registered approver key."""

    @property
    def public_key(self) -> PublicKey: ...


class AmbiguousKeyError(LookupError):
    """A key id is registered both in the policy and with the account."""


def lookup_stamp_key(
    key_id: str,
    policy_keys: Mapping[str, StampKeyEntry],
    account_keys: Mapping[str, StampKeyEntry],
) -> tuple[StampKeyEntry, bool] | None:
    """(entry, account_bound) for ``key_id``, None when unknown.

    An id registered in both places is refused (fail closed): which key signs must never
    depend on lookup order.
    """
    in_policy = policy_keys.get(key_id)
    in_account = account_keys.get(key_id)
    if in_policy is not None and in_account is not None:
        raise AmbiguousKeyError(key_id)
    if in_policy is not None:
        return in_policy, False
    if in_account is not None:
        return in_account, True
    return None
