"""schemathesis against the live relay's ``/openapi.json`` (issue 9: at least 5,000
cases, 0 undocumented 5xx, every response valid against the document).

The document is fetched from the running relay of the simulated appliance, so the test
checks what the relay serves, not what the module would build. Every operation gets its
share of generated cases; those with an ``{account_id}`` draw half of them against real
accounts, so the signing paths reach the enclave (and sign) rather than stopping at 404.
Each response must have a status the operation documents, a documented content type
and a body valid against the documented schema; a 5xx must be documented for the
operation and never be 500 (internal_error: a bug, on a healthy stack).

Headers (the bearer token every call but the open ones needs) come from one fixture,
:func:`relay_headers`.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as builtin

from nitro_sim.stack import LocalStack
from tests.stack_helpers import create_account

pytestmark = [pytest.mark.stack, pytest.mark.slow]

#: Generated cases per operation (operationId); their sum is the run's size.
CASES = {
    "signTransaction": 900,  # the costliest to generate: five object schemas in an anyOf
    "signTransactions": 120,  # 1 to 100 of them per case
    "signMessage": 900,
    "signTypedData": 700,
    "signAuthorization": 800,
    "getAccount": 400,
    "listAccounts": 400,
    "createAccount": 100,
    "attestation": 150,
    "auditHead": 150,
    "jsonRpc": 800,
    "jsonRpcGeth": 400,
    "healthz": 10,  # no inputs: hypothesis stops once it has seen them all
    "readyz": 10,
    "metrics": 10,
}  # /openapi.json itself: schemathesis leaves the document's own path out
MINIMUM_CASES = 5000
ACCOUNTS = 4


@pytest.fixture(scope="module")
def relay_headers(stack: LocalStack) -> dict[str, str]:
    """Headers every generated request carries: the one place for authentication. The
    relay refuses every call but the four open ones without credentials: the stack's
    bearer token (every scope, ``LocalStack.api_token``) goes with each."""
    return {"Authorization": f"Bearer {stack.api_token}"}


@pytest.fixture(scope="module")
def schema(stack: LocalStack, relay_headers: dict[str, str]) -> Any:
    return schemathesis.openapi.from_url(
        f"{stack.relay_url}/openapi.json", headers=relay_headers, timeout=10
    )


@pytest.fixture(scope="module")
def account_ids(stack: LocalStack) -> list[str]:
    return [create_account(stack)["account_id"] for _ in range(ACCOUNTS)]


@pytest.fixture(scope="module")
def session(relay_headers: dict[str, str]) -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.headers.update(relay_headers)
        yield http


def _undocumented_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in documented, (
        f"undocumented {response.status_code} from {case.operation.label}: {response.text[:300]}"
    )
    assert response.status_code != 500, f"500 from {case.operation.label}: {response.text[:300]}"
    return True


CHECKS = [
    builtin.status_code_conformance,
    builtin.content_type_conformance,
    builtin.response_headers_conformance,
    builtin.response_schema_conformance,
    _undocumented_server_error,
]


def _exercise(strategy: Any, examples: int, call: Callable[[Any], None]) -> None:
    """Run ``call`` on up to ``examples`` cases drawn from ``strategy`` (reproducibly)."""

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.mark.timeout(1200)
def test_live_openapi_document_holds_for_5000_generated_requests(
    stack: LocalStack,
    schema: Any,
    account_ids: list[str],
    session: requests.Session,
) -> None:
    assert sum(CASES.values()) >= MINIMUM_CASES
    operations = {
        op.ok().definition.raw["operationId"]: op.ok() for op in schema.get_all_operations()
    }
    assert operations.keys() == CASES.keys(), "every documented operation gets cases"
    statuses: Counter[str] = Counter()

    def call(operation_id: str, case: Any) -> None:
        response = case.call(base_url=stack.relay_url, session=session, timeout=30)
        statuses[f"{operation_id} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS)

    for operation_id, examples in CASES.items():
        operation = operations[operation_id]
        strategy = operation.as_strategy()
        if "account_id" in operation.path:
            real = st.one_of(
                *(operation.as_strategy(path_parameters={"account_id": a}) for a in account_ids)
            )
            strategy = st.one_of(real, strategy)  # real accounts first: they sign
        began = time.monotonic()
        _exercise(strategy, examples, functools.partial(call, operation_id))
        print(f"{operation_id}: {time.monotonic() - began:.1f}s", flush=True)

    total = sum(statuses.values())
    print(
        f"\nschemathesis: {total} cases; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    assert total >= MINIMUM_CASES
    signed = sum(v for k, v in statuses.items() if k.startswith("sign") and k.endswith(" 200"))
    assert signed > 0, "no generated request reached the enclave and signed"
