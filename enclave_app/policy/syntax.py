"""Spelling rules shared by the policy document and the sealed account metadata:
identifiers (key ids, relay identities, approvers, rule and limit names) and account
labels. docs/policy.schema.json carries the same patterns."""

from __future__ import annotations

import re
from typing import TypeGuard

#: Ids of stamp keys, relay identities and approvers; names of rules and limits. The
#: same spelling as enclave_app.auth's stamp and approval headers (no dots: they
#: separate the header's fields), so every id a policy declares can be stamped.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
#: Account labels (lowercase, so "Hot" and "hot" cannot be two labels).
LABEL_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
#: Labels per account.
MAX_ACCOUNT_LABELS = 16

_ID_RE = re.compile(ID_PATTERN)
_LABEL_RE = re.compile(LABEL_PATTERN)


def is_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_label(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _LABEL_RE.fullmatch(value) is not None
