"""ethers, viem, Foundry (cast) and web3.py, unchanged, against the simulated appliance.

One stack (real enclave, KMS and IMDS simulators, relay) and one real anvil serve the
whole module; the relay's upstream node is that anvil. Each client signs messages,
typed data (Mail, Permit2, nested arrays) and every transaction type it can send
through eth_signTransaction, sends a transaction through eth_sendTransaction (mined,
``from`` = the account), and shows the relay's refusals. Each check is verified by
the client's own recovery function, then again here by eth-account. The terminal
summary prints one row per check; any failed row fails its client's test.

Every client authenticates as a user would: the stack's bearer token (every scope,
``.dev-state/api-token`` under ``make dev``) through the client's own header option
(ethers ``FetchRequest.setHeader``, viem ``fetchOptions.headers``, cast
``--rpc-headers``, web3.py ``request_kwargs``); each also shows the relay's 401 when it
sends none.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3RPCError
from web3.types import Wei

from nitro_sim.stack import LocalStack, http_json
from tests.clients.conftest import record
from tests.clients.toolchain import (
    CAST,
    TYPED_DATA,
    Anvil,
    Row,
    require_toolchain,
    run_node,
    verify_evidence,
)
from tests.stack_helpers import create_account

pytestmark = pytest.mark.stack

CHAIN_ID = 31337
RECIPIENT = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
NONCE_TOO_HIGH = 2**64 - 1
FUNDING = hex(100 * 10**18)


@pytest.fixture
def account(stack: LocalStack, anvil: Anvil | None) -> dict[str, Any]:
    """A fresh relay account (one per client), funded on anvil."""
    created = create_account(stack)
    if anvil is not None:
        anvil.rpc("anvil_setBalance", [created["address"], FUNDING])
    return created


def signed_authorization(stack: LocalStack, account: dict[str, Any]) -> dict[str, str]:
    """An EIP-7702 authorization the relay signed (REST), for type 4 transactions."""
    status, body = http_json(
        "POST",
        f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/authorization",
        {"authorization": {"chainId": CHAIN_ID, "address": RECIPIENT, "nonce": 0}},
    )
    assert status == 200, body
    authorization: dict[str, str] = body["authorization"]
    return authorization


def js_config(stack: LocalStack, account: dict[str, Any]) -> dict[str, Any]:
    return {
        "relay": stack.relay_url,
        "address": account["address"],
        "chainId": CHAIN_ID,
        "recipient": RECIPIENT,
        "authorization": signed_authorization(stack, account),
        "upstream": True,
        "token": stack.api_token,
    }


def check_rows(rows: list[Row], address: str, anvil: Anvil | None) -> None:
    for row in rows:
        verify_evidence(row, address, anvil)
    record(rows)
    if anvil is not None:
        assert any("upstream" in row.operation for row in rows), "the upstream check did not run"
    failed = [f"{row.operation}: {row.detail}" for row in rows if not row.ok]
    assert not failed, "\n".join(failed)


def run_check(rows: list[Row], client: str, operation: str, run: Callable[[], Any]) -> None:
    """One table row from a Python-driven check: ok with its evidence, or the failure."""
    started = time.monotonic()
    try:
        result = run() or {}
        row = Row(client, operation, True, 0, result.get("detail", ""), result.get("evidence"))
    except Exception as exc:
        row = Row(client, operation, False, 0, f"{type(exc).__name__}: {exc}"[:600])
    row.ms = round((time.monotonic() - started) * 1000)
    rows.append(row)


# -- ethers and viem (their own scripts) -------------------------------------------------


@pytest.mark.parametrize("client", ["ethers", "viem"])
def test_javascript_client(
    client: str, stack: LocalStack, anvil: Anvil | None, account: dict[str, Any]
) -> None:
    require_toolchain()
    rows = run_node(f"{client}.mjs", js_config(stack, account))
    check_rows(rows, account["address"], anvil)


# -- Foundry cast -----------------------------------------------------------------------


def cast(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAST), *args], capture_output=True, text=True, timeout=60, check=False
    )


def cast_ok(*args: str) -> str:
    completed = cast(*args)
    if completed.returncode != 0:
        raise AssertionError(f"cast {args[0]} failed: {completed.stderr.strip()[-500:]}")
    return completed.stdout.strip()


def cast_refused(phrase: str, *args: str) -> dict[str, str]:
    completed = cast(*args)
    if completed.returncode == 0:
        raise AssertionError(f"cast {args[0]} succeeded: {completed.stdout.strip()[:200]}")
    shown = " ".join(completed.stderr.split())
    if phrase not in shown:
        raise AssertionError(f'"{phrase}" is not in what cast shows: {shown[:400]}')
    return {"detail": shown[:300]}


def authorization_rlp(authorization: dict[str, str]) -> str:
    """cast --auth takes a signed authorization as RLP hex."""
    numbers = {name: int(authorization[name], 16) for name in ("chainId", "nonce", "yParity")}
    r, s = (int(authorization[name], 16) for name in ("r", "s"))
    address = bytes.fromhex(authorization["address"][2:])
    fields = [numbers["chainId"], address, numbers["nonce"], numbers["yParity"], r, s]
    encoded: bytes = rlp.encode(fields)
    return "0x" + encoded.hex()


def test_foundry_cast(stack: LocalStack, anvil: Anvil | None, account: dict[str, Any]) -> None:
    require_toolchain()
    relay, address = stack.relay_url, account["address"]
    rpc = ["--rpc-url", relay, "--rpc-headers", f"Authorization: Bearer {stack.api_token}"]
    rows: list[Row] = []

    def message() -> dict[str, Any]:
        text = "hello from cast"
        signature = json.loads(
            cast_ok("rpc", *rpc, "personal_sign", "0x" + text.encode().hex(), address)
        )
        cast_ok("wallet", "verify", "--address", address, text, signature)
        return {"evidence": {"kind": "message", "text": text, "signature": signature}}

    run_check(rows, "cast", "personal_sign (cast rpc) + cast wallet verify", message)

    for name, typed in TYPED_DATA.items():

        def typed_data(name: str = name, typed: dict[str, Any] = typed) -> dict[str, Any]:
            document = json.dumps(typed)
            signature = json.loads(cast_ok("rpc", *rpc, "eth_signTypedData_v4", address, document))
            cast_ok("wallet", "verify", "--address", address, "--data", document, signature)
            return {"evidence": {"kind": "typed", "name": name, "signature": signature}}

        run_check(rows, "cast", f"eth_signTypedData_v4 {name} + cast wallet verify", typed_data)

    access_list = json.dumps([{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 31 + "01"]}])
    auth = authorization_rlp(signed_authorization(stack, account))
    variants = {
        "legacy (type 0)": (0, ["--legacy", RECIPIENT, "--value", "1"]),
        "EIP-2930 (type 1)": (1, ["--legacy", "--access-list", access_list, RECIPIENT]),
        "EIP-1559 (type 2)": (2, [RECIPIENT, "--value", "1", "--access-list", access_list]),
        "EIP-7702 (type 4)": (4, ["--auth", auth, RECIPIENT]),
        "contract creation": (2, ["--create", "0x600a600c600039600a6000f3"]),
    }
    for name, (tx_type, extra) in variants.items():

        def mktx(tx_type: int = tx_type, extra: list[str] = extra) -> dict[str, Any]:
            raw = cast_ok("mktx", "--ethsign", "--from", address, *rpc, *extra)
            decoded = json.loads(cast_ok("decode-transaction", raw))
            if isinstance(decoded, str):  # cast prints the JSON as a JSON string
                decoded = json.loads(decoded)
            assert decoded["signer"].lower() == address.lower(), decoded["signer"]
            assert int(decoded["type"], 16) == tx_type, decoded["type"]
            return {"evidence": {"kind": "transaction", "raw": raw}}

        run_check(rows, "cast", f"mktx --ethsign {name} + decode-transaction", mktx)

    def send() -> dict[str, Any]:
        receipt = json.loads(
            cast_ok(
                "send", "--unlocked", "--from", address, *rpc, RECIPIENT, "--value", "7", "--json"
            )
        )
        assert receipt["from"].lower() == address.lower(), receipt["from"]
        assert receipt["status"] == "0x1", receipt["status"]
        return {"evidence": {"kind": "sent", "hash": receipt["transactionHash"]}}

    run_check(rows, "cast", "send --unlocked via upstream (eth_sendTransaction), mined", send)

    run_check(
        rows,
        "cast",
        "error: no token, 401 unauthenticated",
        lambda: cast_refused("401", "rpc", "--rpc-url", relay, "eth_accounts"),
    )
    stranger = Account.create().address
    run_check(
        rows,
        "cast",
        "error: unknown account shows the relay's message",
        lambda: cast_refused("unknown account", "rpc", *rpc, "personal_sign", "0x00", stranger),
    )
    run_check(
        rows,
        "cast",
        "error: nonce 2^64-1 refused (EIP-2681)",
        lambda: cast_refused(
            "EIP-2681",
            "mktx",
            "--ethsign",
            "--from",
            address,
            *rpc,
            "--nonce",
            str(NONCE_TOO_HIGH),
            RECIPIENT,
        ),
    )
    check_rows(rows, address, anvil)


# -- web3.py ------------------------------------------------------------------------------


def web3_transactions(address: str, authorization: dict[str, str]) -> dict[str, dict[str, Any]]:
    base: dict[str, Any] = {"from": address, "chainId": CHAIN_ID, "to": RECIPIENT, "gas": 100_000}
    fees = {"maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9}
    access = [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 31 + "01"]}]
    return {
        "legacy (type 0)": {**base, "nonce": 0, "gasPrice": 2 * 10**9, "value": 1},
        "EIP-2930 (type 1)": {**base, "nonce": 1, "gasPrice": 2 * 10**9, "accessList": access},
        "EIP-1559 (type 2)": {**base, "nonce": 2, "data": "0xdeadbeef", **fees},
        "EIP-4844 (type 3)": {
            **base,
            "nonce": 3,
            **fees,
            "maxFeePerBlobGas": 7,
            "blobVersionedHashes": ["0x01" + "ab" * 31],
        },
        "EIP-7702 (type 4)": {**base, "nonce": 4, **fees, "authorizationList": [authorization]},
        "contract creation": {
            **{k: v for k, v in base.items() if k != "to"},
            "nonce": 5,
            "data": "0x600a600c600039600a6000f3",
            **fees,
        },
    }


def test_web3py(stack: LocalStack, anvil: Anvil | None, account: dict[str, Any]) -> None:
    # web3.py reads geth's {raw, tx} from eth_signTransaction: its URL is /geth. Its own
    # recovery functions are eth-account's, as w3.eth.account exposes them.
    # request_kwargs headers replace web3.py's own: give the Content-Type too.
    bearer = {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_token}"}
    w3 = Web3(
        Web3.HTTPProvider(
            f"{stack.relay_url}/geth", request_kwargs={"timeout": 60, "headers": bearer}
        )
    )
    address = account["address"]
    rows: list[Row] = []

    def accounts_and_chain() -> None:
        assert address in w3.eth.accounts
        assert w3.eth.chain_id == CHAIN_ID

    run_check(rows, "web3.py", "eth.accounts, eth.chain_id", accounts_and_chain)

    def sign() -> dict[str, Any]:
        text = "hello from web3.py"
        signature = HexBytes(w3.eth.sign(address, text=text)).to_0x_hex()
        recovered = w3.eth.account.recover_message(encode_defunct(text=text), signature=signature)
        assert recovered == address, recovered
        return {"evidence": {"kind": "message", "text": text, "signature": signature}}

    run_check(rows, "web3.py", "eth.sign (eth_sign)", sign)

    def personal_sign() -> dict[str, Any]:
        data = "0x00ff10e2"
        response = w3.provider.make_request("personal_sign", [data, address])  # type: ignore[arg-type]
        signature = response["result"]
        recovered = w3.eth.account.recover_message(encode_defunct(hexstr=data), signature=signature)
        assert recovered == address, recovered
        return {"evidence": {"kind": "message", "hex": data, "signature": signature}}

    run_check(rows, "web3.py", "personal_sign (provider.make_request)", personal_sign)

    def batch() -> dict[str, str]:
        provider = w3.provider
        assert isinstance(provider, HTTPProvider)
        answers = provider.make_batch_request(
            [
                ("personal_sign", ["0x" + b"one".hex(), address]),  # type: ignore[list-item]
                ("eth_sign", [address, "0x" + b"two".hex()]),  # type: ignore[list-item]
                ("eth_accounts", []),  # type: ignore[list-item]
            ]
        )
        assert isinstance(answers, list)
        one, two, accounts = (answer["result"] for answer in answers)
        assert w3.eth.account.recover_message(encode_defunct(text="one"), signature=one) == address
        assert w3.eth.account.recover_message(encode_defunct(text="two"), signature=two) == address
        assert address in accounts
        return {"detail": "personal_sign, eth_sign, eth_accounts in one batch"}

    run_check(rows, "web3.py", "provider.make_batch_request of signatures", batch)

    for name, typed in TYPED_DATA.items():

        def typed_data(name: str = name, typed: dict[str, Any] = typed) -> dict[str, Any]:
            signature = HexBytes(w3.eth.sign_typed_data(address, typed)).to_0x_hex()
            signable = encode_typed_data(full_message=typed)
            assert w3.eth.account.recover_message(signable, signature=signature) == address
            return {"evidence": {"kind": "typed", "name": name, "signature": signature}}

        run_check(rows, "web3.py", f"eth.sign_typed_data {name} (eth_signTypedData)", typed_data)

    authorization = signed_authorization(stack, account)
    for name, tx in web3_transactions(address, authorization).items():

        def sign_transaction(tx: dict[str, Any] = tx) -> dict[str, Any]:
            signed = w3.eth.sign_transaction(tx)  # type: ignore[arg-type]
            raw = bytes(signed["raw"])
            assert w3.eth.account.recover_transaction(raw) == address
            decoded = dict(signed["tx"])
            assert decoded["nonce"] == tx["nonce"]
            assert decoded["chainId"] == CHAIN_ID
            return {"evidence": {"kind": "transaction", "raw": "0x" + raw.hex()}}

        run_check(rows, "web3.py", f"eth.sign_transaction {name}", sign_transaction)

    def send() -> dict[str, Any]:
        tx_hash = w3.eth.send_transaction({"from": address, "to": RECIPIENT, "value": Wei(99)})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.1)
        assert receipt["from"] == address
        assert receipt["status"] == 1
        return {"evidence": {"kind": "sent", "hash": tx_hash.to_0x_hex()}}

    if anvil is not None:
        run_check(rows, "web3.py", "eth.send_transaction via upstream, mined", send)
        run_check(
            rows,
            "web3.py",
            "8 concurrent eth_sendTransaction via upstream: distinct nonces, all mined",
            lambda: concurrent_sends(stack.relay_url, w3, address, 8),
        )

    def unknown_account() -> dict[str, str]:
        with pytest.raises(Web3RPCError, match="unknown account") as caught:
            w3.eth.sign(Account.create().address, text="hi")
        return {"detail": str(caught.value)[:200]}

    run_check(rows, "web3.py", "error: unknown account shows the relay's message", unknown_account)

    def nonce_too_high() -> dict[str, str]:
        tx = {**web3_transactions(address, authorization)["EIP-1559 (type 2)"]}
        tx["nonce"] = NONCE_TOO_HIGH
        with pytest.raises(Web3RPCError, match="EIP-2681") as caught:
            w3.eth.sign_transaction(tx)  # type: ignore[arg-type]
        return {"detail": str(caught.value)[:200]}

    run_check(rows, "web3.py", "error: nonce 2^64-1 refused (EIP-2681)", nonce_too_high)

    def no_token() -> dict[str, str]:
        anonymous = Web3(Web3.HTTPProvider(f"{stack.relay_url}/geth"))
        with pytest.raises(requests.HTTPError, match="401") as caught:
            anonymous.eth.accounts  # noqa: B018 - the call is the check
        return {"detail": str(caught.value)[:200]}

    run_check(rows, "web3.py", "error: no token, 401 unauthenticated", no_token)
    check_rows(rows, address, anvil)
    if anvil is None:
        require_toolchain()  # the upstream rows need anvil: skip them (fail in CI)


def concurrent_sends(relay_url: str, w3: Web3, address: str, count: int) -> dict[str, str]:
    """eth_sendTransaction without a nonce, ``count`` at once (gas and fees given, so the
    relay's own work is mostly the nonce): the per-account lock must give each its own
    nonce; without it several read the same pending count and the node refuses them."""
    hashes: list[str] = []
    errors: list[str] = []
    start = threading.Barrier(count)

    def one(value: int) -> None:
        tx = {
            "from": address,
            "to": RECIPIENT,
            "value": hex(value),
            "gas": hex(21000),
            "maxFeePerGas": hex(5 * 10**9),
            "maxPriorityFeePerGas": hex(10**9),
        }
        request = {"jsonrpc": "2.0", "id": value, "method": "eth_sendTransaction", "params": [tx]}
        start.wait(timeout=30)
        status, body = http_json("POST", relay_url, request)
        if status == 200 and "result" in body:
            hashes.append(body["result"])
        else:
            errors.append(f"{status} {body}")

    threads = [threading.Thread(target=one, args=(i + 1,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(hashes) == count, hashes
    receipts = [
        w3.eth.wait_for_transaction_receipt(HexBytes(h), timeout=30, poll_latency=0.1)
        for h in hashes
    ]
    assert all(r["status"] == 1 and r["from"] == address for r in receipts)
    nonces = sorted(w3.eth.get_transaction(HexBytes(h))["nonce"] for h in hashes)
    assert nonces == list(range(nonces[0], nonces[0] + count)), nonces
    return {"detail": f"nonces {nonces[0]}..{nonces[-1]}"}
