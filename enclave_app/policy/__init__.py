"""The signing policy, evaluated inside the enclave.

The policy is canonical JSON built into the image (``/app/policy.json``, measured by
PCR0). It names the principals (stamp keys verified in the enclave, identities the
relay asserts, approvers), rules (deny wins, then allow, otherwise deny) and velocity
limits. docs/policy.md is the operator's guide; docs/policy.schema.json the schema.
"""

from enclave_app.policy.conditions import TypedDataFacts, Verdict
from enclave_app.policy.document import (
    PolicyDocumentError,
    canonical_bytes,
    load_policy,
    parse_policy,
    parse_policy_bytes,
)
from enclave_app.policy.engine import Permit, PolicyEngine
from enclave_app.policy.evaluate import (
    AccountFacts,
    Decision,
    PolicyDeniedError,
    Request,
    authorize_create,
    evaluate,
    typed_data_facts,
)
from enclave_app.policy.keys import KeyFormatError, parse_public_key
from enclave_app.policy.model import (
    ACCOUNT_CREATION,
    DEFAULT_DENY,
    PRINCIPAL_SCOPES,
    ApproverKey,
    Op,
    Policy,
    Principal,
    PrincipalKind,
    Scope,
    StampKey,
)

__all__ = [
    "ACCOUNT_CREATION",
    "DEFAULT_DENY",
    "PRINCIPAL_SCOPES",
    "AccountFacts",
    "ApproverKey",
    "Decision",
    "KeyFormatError",
    "Op",
    "Permit",
    "Policy",
    "PolicyDeniedError",
    "PolicyDocumentError",
    "PolicyEngine",
    "Principal",
    "PrincipalKind",
    "Request",
    "Scope",
    "StampKey",
    "TypedDataFacts",
    "Verdict",
    "authorize_create",
    "canonical_bytes",
    "evaluate",
    "load_policy",
    "parse_policy",
    "parse_policy_bytes",
    "parse_public_key",
    "typed_data_facts",
]
