"""Caller authentication through the relay and the real enclave (issue 11, relay side).

One stack (the dev policy: the stack's token ``dev-token`` and stamp key ``dev-api-key``
may do everything). What the relay decides (401 without credentials, 403 for a token
lacking the scope) and what the enclave decides (a token name the policy does not
declare, a replayed stamp) are both checked here, and so is what reaches the enclave:
a JSON-RPC batch of signatures is ONE ``sign_batch`` op, every decision lands in the
audit log, which verifies against the simulator's root and the head the enclave signs,
and no token appears in the audit log or the relay's log.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from nitro_sim.stack import LocalStack, http_json
from nitro_wallet.stamping import load_key_file, make_stamp
from parent_app.tokens import add_token
from tests.stack_helpers import create_account, nitro_wallet

pytestmark = pytest.mark.stack


def enclave_calls(stack: LocalStack, op: str) -> float:
    with urllib.request.urlopen(f"{stack.relay_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(
        rf'^nitro_wallet_relay_enclave_calls_total\{{op="{op}"\}} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rpc(method: str, params: list[Any], ident: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}


def new_token(stack: LocalStack, name: str, scopes: set[str]) -> str:
    """A token added as an operator adds one; the relay reads the file within a second."""
    _, token = add_token(stack.root / "relay" / "tokens.json", name, frozenset(scopes))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, _ = http_json("GET", f"{stack.relay_url}/v1/accounts?limit=1", None, bearer(token))
        if status != 401:
            return token
        time.sleep(0.2)
    raise AssertionError("the relay did not take the new token")


def test_without_credentials_every_route_but_the_probes_is_401(stack: LocalStack) -> None:
    for method, path, body in [
        ("POST", "/v1/accounts", {}),
        ("GET", "/v1/accounts", None),
        ("POST", "/", rpc("eth_chainId", [], 1)),
        ("GET", f"/v1/audit/head?nonce={secrets.token_hex(16)}", None),
    ]:
        status, answer = http_json(method, stack.relay_url + path, body, credentials=False)
        assert (status, answer["error"]["code"]) == (401, "unauthenticated"), path
    assert http_json("GET", f"{stack.relay_url}/healthz", credentials=False)[0] == 200


def test_a_json_rpc_batch_of_signatures_is_one_enclave_op(stack: LocalStack) -> None:
    account = create_account(stack)
    address = account["address"]
    texts = [f"batched {i}" for i in range(3)]
    batch = [
        rpc("personal_sign", ["0x" + t.encode().hex(), address], i) for i, t in enumerate(texts)
    ]
    batches, singles = enclave_calls(stack, "sign_batch"), enclave_calls(stack, "sign_message")
    status, answered = http_json("POST", f"{stack.relay_url}/", json.dumps(batch).encode())
    assert status == 200
    answers: list[dict[str, Any]] = answered  # type: ignore[assignment]  # a batch's answer
    for text, answer in zip(texts, sorted(answers, key=lambda a: a["id"]), strict=True):
        signer = Account.recover_message(encode_defunct(text=text), signature=answer["result"])
        assert signer == address
    assert enclave_calls(stack, "sign_batch") == batches + 1
    assert enclave_calls(stack, "sign_message") == singles


def test_a_token_lacking_the_scope_is_403_at_the_relay(stack: LocalStack) -> None:
    account = create_account(stack)
    reader = new_token(stack, "dev-token", {"read"})
    path = f"/v1/accounts/{account['account_id']}/sign/message"
    status, answer = http_json("POST", stack.relay_url + path, {"message": "hi"}, bearer(reader))
    assert (status, answer["error"]["code"]) == (403, "scope_denied")
    status, answers = http_json(
        "POST",
        f"{stack.relay_url}/",
        rpc("personal_sign", ["0x00", account["address"]], 1),
        bearer(reader),
    )
    assert status == 200
    assert answers["error"]["code"] == -32003
    assert answers["error"]["data"]["code"] == "scope_denied"


def test_a_token_name_the_policy_does_not_declare_gets_nothing(stack: LocalStack) -> None:
    account = create_account(stack)
    stranger = new_token(stack, "stranger", {"create", "sign", "read"})
    path = f"/v1/accounts/{account['account_id']}/sign/message"
    status, answer = http_json("POST", stack.relay_url + path, {"message": "hi"}, bearer(stranger))
    assert (status, answer["error"]["code"]) == (403, "principal_unknown")
    status, answer = http_json("POST", f"{stack.relay_url}/v1/accounts", {}, bearer(stranger))
    assert (status, answer["error"]["code"]) == (403, "principal_unknown")


def test_a_stamp_is_good_for_one_request(stack: LocalStack) -> None:
    account = create_account(stack)
    path = f"/v1/accounts/{account['account_id']}/sign/message"
    body = b'{"message": "once"}'
    stamp = {"X-Stamp": make_stamp(load_key_file(stack.api_key_path), "POST", path, body)}
    status, signed = http_json("POST", stack.relay_url + path, body, stamp)
    assert status == 200, signed
    signer = Account.recover_message(encode_defunct(text="once"), signature=signed["signature"])
    assert signer == account["address"]
    status, again = http_json("POST", stack.relay_url + path, body, stamp)
    assert (status, again["error"]["code"]) == (401, "stamp_replayed")
    other = f"/v1/accounts/{account['account_id']}/sign/message"
    status, altered = http_json(
        "POST",
        stack.relay_url + other,
        b'{"message": "twice"}',
        {"X-Stamp": make_stamp(load_key_file(stack.api_key_path), "POST", path, body)},
    )
    assert (status, altered["error"]["code"]) == (401, "stamp_signature_invalid")


def test_the_audit_log_verifies_up_to_the_signed_head_and_holds_no_token(
    stack: LocalStack, tmp_path: Path
) -> None:
    account = create_account(stack)
    path = f"/v1/accounts/{account['account_id']}/sign/message"
    assert http_json("POST", stack.relay_url + path, {"message": "audited"})[0] == 200
    nonce = secrets.token_hex(16)
    status, head = http_json("GET", f"{stack.relay_url}/v1/audit/head?nonce={nonce}")
    assert status == 200, head
    assert head["nonce"].removeprefix("0x") == nonce
    (tmp_path / "head.json").write_text(json.dumps(head))
    verified = nitro_wallet(
        stack,
        *("audit", "verify", str(stack.audit_log)),
        *("--root", str(stack.sim_root), "--head", str(tmp_path / "head.json")),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = stack.audit_log.read_text().splitlines()
    assert any(account["address"].lower() in line.lower() for line in lines)
    for where in [stack.audit_log, *sorted(stack.log_dir.glob("*"))]:
        if where.is_file():
            assert stack.api_token not in where.read_text(errors="replace"), where
