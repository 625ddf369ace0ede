"""The relay with an upstream node ([relay] upstream_rpc_url), against the framed fake
enclave and a scriptable node over real loopback HTTP: forwarding, eth_sendTransaction
(what is filled from the node, what is refused, typed failures) and nonce serialization.
The client suite (tests/clients) runs the same against a real anvil."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak
from prometheus_client.parser import text_string_to_metric_families

from parent_app.errors import RelayError
from parent_app.nonces import NonceTracker
from tests.fake_enclave import FakeStack, fake_signature
from tests.fake_node import FakeNode
from tests.test_jsonrpc_relay import error_of, post, rpc

CHAIN_ID = 31337
TO = "0x" + "22" * 20


@pytest.fixture
def node() -> Iterator[FakeNode]:
    started = FakeNode(chain_id=CHAIN_ID)
    yield started
    started.stop()


@pytest.fixture
def relay(tmp_path: Path, node: FakeNode) -> Iterator[FakeStack]:
    started = FakeStack.start(
        tmp_path, chain_id=CHAIN_ID, upstream_rpc_url=node.url, upstream_timeout_seconds=1
    )
    yield started
    started.stop()


def signed_transaction(fake: FakeStack) -> dict[str, Any]:
    """What the enclave was asked to sign last."""
    requests = [r for r in fake.enclave.requests if r.op == "sign_transaction"]
    assert requests, "nothing was signed"
    transaction: dict[str, Any] = requests[-1].params["transaction"]
    return transaction


def send(fake: FakeStack, **fields: Any) -> dict[str, Any]:
    return rpc(fake, "eth_sendTransaction", [fields])


# -- forwarding ----------------------------------------------------------------------


def test_other_methods_are_forwarded_and_answered_unchanged(
    relay: FakeStack, node: FakeNode
) -> None:
    node.results["eth_blockNumber"] = "0x10"
    node.results["eth_getBlockByNumber"] = {"number": "0x10", "gasUsed": 0.5, "nested": [[]]}
    assert rpc(relay, "eth_blockNumber", [])["result"] == "0x10"
    block = rpc(relay, "eth_getBlockByNumber", ["latest", False])["result"]
    assert block == {"number": "0x10", "gasUsed": 0.5, "nested": [[]]}
    # cast sends fee-history percentiles as floats: they reach the node as they were
    rpc(relay, "eth_feeHistory", ["0xa", "latest", [20.0, 50.5]])
    assert node.bodies[-1]["params"] == ["0xa", "latest", [20.0, 50.5]]


def test_node_errors_are_passed_on_unchanged(relay: FakeStack, node: FakeNode) -> None:
    revert = {"code": 3, "message": "execution reverted: no", "data": "0x08c379a0"}
    node.errors["eth_call"] = revert
    assert error_of(rpc(relay, "eth_call", [{"to": TO}, "latest"])) == revert


def test_a_batch_sends_its_forwarded_calls_in_one_node_request(
    relay: FakeStack, node: FakeNode
) -> None:
    address = relay.create()["address"]
    node.results["eth_blockNumber"] = "0x10"
    node.results["eth_getBalance"] = "0x5"
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": "b", "method": "personal_sign", "params": ["0x01", address]},
        {"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance", "params": [TO, "latest"]},
        {"jsonrpc": "2.0", "id": 8, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "method": "eth_getBalance", "params": [TO, "latest"]},
    ]
    answers = post(relay, batch).json()
    assert [a["id"] for a in answers] == ["a", "b", 7, 8]
    assert [answers[0]["result"], answers[2]["result"], answers[3]["result"]] == [
        "0x10",
        "0x5",
        hex(CHAIN_ID),  # the relay's own answer
    ]
    assert answers[1]["result"].startswith("0x")
    assert len(node.bodies) == 1  # one HTTP request carried the three forwarded calls
    assert [item["method"] for item in node.bodies[0]] == [
        "eth_blockNumber",
        "eth_getBalance",
        "eth_getBalance",
    ]


@pytest.mark.parametrize(
    "method",
    [
        "personal_unlockAccount",
        "personal_sendTransaction",
        "eth_signTypedData_v1",
        "wallet_sendTransaction",
        "account_signTransaction",
        "clef_listAccounts",
    ],
)
def test_signing_methods_are_never_forwarded(relay: FakeStack, node: FakeNode, method: str) -> None:
    error = error_of(rpc(relay, method, []))
    assert error["code"] == -32601
    assert "the relay never forwards signing methods" in error["message"]
    assert node.bodies == []


def test_without_a_default_chain_id_the_node_answers_it(tmp_path: Path, node: FakeNode) -> None:
    node.chain_id = 17000
    fake = FakeStack.start(tmp_path, upstream_rpc_url=node.url)
    try:
        assert rpc(fake, "eth_chainId", [])["result"] == hex(17000)
        assert rpc(fake, "net_version", [])["error"]["code"] == -32601  # the node's answer
        address = fake.create()["address"]
        assert "result" in send(fake, **{"from": address, "to": TO})
        assert signed_transaction(fake)["chainId"] == hex(17000)
    finally:
        fake.stop()


@pytest.mark.parametrize(
    ("fault", "code", "phrase"),
    [
        ("hang", "upstream_unavailable", "did not answer within 1 s"),
        ("drop", "upstream_unavailable", "upstream node failed"),
        ("not-json", "upstream_bad_response", "not JSON"),
        ("huge", None, None),
        ("http-503", "upstream_unavailable", "HTTP 503"),
    ],
)
def test_forwarding_failures_are_typed(
    relay: FakeStack, node: FakeNode, fault: str, code: str | None, phrase: str | None
) -> None:
    node.faults["eth_blockNumber"] = fault
    node.results["eth_blockNumber"] = "0x1"
    if fault == "huge":  # 1 MiB is within the 16 MiB bound: passed on
        assert len(rpc(relay, "eth_blockNumber", [])["result"]) == 1 << 20
        return
    error = error_of(rpc(relay, "eth_blockNumber", []))
    assert error["data"]["code"] == code
    assert phrase in error["message"]
    assert node.url not in error["message"]
    assert error["code"] == (-32002 if code == "upstream_unavailable" else -32010)


def test_an_unreachable_node_is_unavailable_and_nothing_is_signed(tmp_path: Path) -> None:
    gone = FakeNode()
    url = gone.url
    gone.stop()
    fake = FakeStack.start(tmp_path, chain_id=CHAIN_ID, upstream_rpc_url=url)
    try:
        error = error_of(rpc(fake, "eth_blockNumber", []))
        assert error["code"] == -32002
        assert "upstream node unreachable" in error["message"]
        assert url not in error["message"]
        address = fake.create()["address"]
        sent = error_of(send(fake, **{"from": address, "to": TO}))
        assert sent["data"]["code"] == "upstream_unavailable"
        assert "sign_transaction" not in fake.enclave.ops()
    finally:
        fake.stop()


# -- eth_sendTransaction -------------------------------------------------------------


def test_send_fills_from_the_node_signs_and_answers_the_hash(
    relay: FakeStack, node: FakeNode
) -> None:
    address = relay.create()["address"]
    node.pending_count = 7
    node.gas_estimate = 30000
    result = send(relay, **{"from": address, "to": TO, "value": "0x1"})["result"]
    tx = signed_transaction(relay)
    assert tx == {
        "from": address,
        "to": TO,
        "value": "0x1",
        "chainId": hex(CHAIN_ID),
        "nonce": "0x7",
        "gas": hex(30000),
        "maxPriorityFeePerGas": hex(2 * 10**9),
        "maxFeePerGas": hex(2 * 10**9 + 2 * 10**9),  # 2 x base fee + priority fee
    }
    assert node.sent, "nothing was sent"
    assert result == "0x" + keccak(bytes.fromhex(node.sent[0][2:])).hex()
    assert node.methods()[-1] == "eth_sendRawTransaction"
    count = next(b for b in node.bodies if b["method"] == "eth_getTransactionCount")
    assert count["params"] == [address, "pending"]
    estimate = next(b for b in node.bodies if b["method"] == "eth_estimateGas")
    assert estimate["params"][0]["from"] == address


def test_what_the_client_gave_is_kept(relay: FakeStack, node: FakeNode) -> None:
    address = relay.create()["address"]
    given = {
        "from": address,
        "to": TO,
        "nonce": "0x3",
        "gas": "0x5208",
        "maxFeePerGas": "0x9",
        "maxPriorityFeePerGas": "0x1",
        "chainId": hex(CHAIN_ID),
    }
    assert "result" in send(relay, **given)
    assert signed_transaction(relay) == given
    assert node.methods() == ["eth_chainId", "eth_sendRawTransaction"]


def test_legacy_and_2930_get_a_gas_price(relay: FakeStack, node: FakeNode) -> None:
    address = relay.create()["address"]
    send(relay, **{"from": address, "to": TO, "type": "0x0"})
    assert signed_transaction(relay)["gasPrice"] == hex(5 * 10**9)
    send(relay, **{"from": address, "to": TO, "type": "0x1", "accessList": []})
    assert signed_transaction(relay)["gasPrice"] == hex(5 * 10**9)
    assert "eth_feeHistory" not in node.methods()


def test_a_node_without_base_fee_gets_a_legacy_transaction(
    relay: FakeStack, node: FakeNode
) -> None:
    node.base_fee = None
    address = relay.create()["address"]
    assert "result" in send(relay, **{"from": address, "to": TO})
    tx = signed_transaction(relay)
    assert tx["gasPrice"] == hex(5 * 10**9)
    assert "maxFeePerGas" not in tx
    error = error_of(send(relay, **{"from": address, "to": TO, "type": "0x2"}))
    assert "reports no base fee" in error["message"]


def test_priority_fee_falls_back_to_gas_price_minus_base_fee(
    relay: FakeStack, node: FakeNode
) -> None:
    node.priority_fee = None  # eth_maxPriorityFeePerGas unsupported
    address = relay.create()["address"]
    send(relay, **{"from": address, "to": TO, "maxFeePerGas": hex(10**10)})
    tx = signed_transaction(relay)
    assert tx["maxPriorityFeePerGas"] == hex(5 * 10**9 - 10**9)
    assert tx["maxFeePerGas"] == hex(10**10)


def test_a_refused_send_is_never_reported_as_sent(relay: FakeStack, node: FakeNode) -> None:
    address = relay.create()["address"]
    refusal = {"code": -32000, "message": "insufficient funds for gas * price + value"}
    node.errors["eth_sendRawTransaction"] = refusal
    error = error_of(send(relay, **{"from": address, "to": TO}))
    assert error["code"] == -32003
    assert error["data"] == {"code": "upstream_rejected", "upstream": refusal}
    assert "upstream node refused the transaction 0x" in error["message"]
    assert "insufficient funds" in error["message"]  # ethers maps it to INSUFFICIENT_FUNDS
    del node.errors["eth_sendRawTransaction"]
    send(relay, **{"from": address, "to": TO})
    assert signed_transaction(relay)["nonce"] == "0x0"  # the refused nonce is used again


def test_already_known_means_sent(relay: FakeStack, node: FakeNode) -> None:
    address = relay.create()["address"]
    node.errors["eth_sendRawTransaction"] = {"code": -32000, "message": "already known"}
    result = send(relay, **{"from": address, "to": TO})["result"]
    assert result == fake_signature(address, signed_transaction(relay))["hash"]


@pytest.mark.parametrize(("fault", "phrase"), [("hang", "did not answer"), ("drop", "failed")])
def test_a_send_without_an_answer_may_have_been_sent(
    relay: FakeStack, node: FakeNode, fault: str, phrase: str
) -> None:
    address = relay.create()["address"]
    node.faults["eth_sendRawTransaction"] = fault
    error = error_of(send(relay, **{"from": address, "to": TO}))
    assert error["data"]["code"] == "upstream_unavailable"
    assert phrase in error["message"]
    assert "may have reached the node: look it up before sending again" in error["message"]


def test_a_wrong_hash_from_the_node_is_a_bad_response(relay: FakeStack, node: FakeNode) -> None:
    address = relay.create()["address"]
    node.faults["eth_sendRawTransaction"] = "wrong-hash"
    error = error_of(send(relay, **{"from": address, "to": TO}))
    assert error["data"]["code"] == "upstream_bad_response"
    assert "for the transaction 0x" in error["message"]


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"chainId": "0x5"}, "chain id 5 is not the upstream node's chain id 31337"),
        ({"chainId": "0x0"}, "pre-EIP-155"),
        ({"nonce": hex(2**64 - 1)}, "EIP-2681"),
        ({"blobVersionedHashes": ["0x01" + "00" * 31]}, "blob transactions are not sent"),
        ({"type": "0x3"}, "blob transactions are not sent"),
        ({"nonce": "12"}, "nonce must be an integer or a 0x-hex quantity"),
        ({"value": 1.5}, "floating-point numbers are not accepted"),
    ],
)
def test_send_refusals_sign_nothing(
    relay: FakeStack, node: FakeNode, fields: dict[str, Any], phrase: str
) -> None:
    address = relay.create()["address"]
    error = error_of(send(relay, **{"from": address, "to": TO, **fields}))
    assert phrase in error["message"]
    assert "sign_transaction" not in relay.enclave.ops()
    assert "eth_sendRawTransaction" not in node.methods()


def test_a_pending_count_of_two_to_the_64_minus_1_is_refused(
    relay: FakeStack, node: FakeNode
) -> None:
    node.pending_count = 2**64 - 1
    address = relay.create()["address"]
    error = error_of(send(relay, **{"from": address, "to": TO}))
    assert "EIP-2681" in error["message"]
    assert "sign_transaction" not in relay.enclave.ops()


def test_a_default_chain_other_than_the_nodes_is_refused(tmp_path: Path, node: FakeNode) -> None:
    fake = FakeStack.start(tmp_path, chain_id=1, upstream_rpc_url=node.url)
    try:
        address = fake.create()["address"]
        error = error_of(send(fake, **{"from": address, "to": TO}))
        assert "chain id 1 is not the upstream node's chain id 31337" in error["message"]
    finally:
        fake.stop()


def test_a_reverting_estimate_is_the_nodes_error(relay: FakeStack, node: FakeNode) -> None:
    revert = {"code": 3, "message": "execution reverted: paused", "data": "0x08c379a0"}
    node.errors["eth_estimateGas"] = revert
    address = relay.create()["address"]
    error = error_of(send(relay, **{"from": address, "to": TO, "data": "0x01"}))
    assert error["code"] == -32000
    assert error["data"] == {"code": "upstream_error", "upstream": revert}
    assert error["message"] == "upstream node refused eth_estimateGas: execution reverted: paused"
    assert "sign_transaction" not in relay.enclave.ops()


def test_unknown_sender_is_refused_before_the_node_is_asked(
    relay: FakeStack, node: FakeNode
) -> None:
    error = error_of(send(relay, **{"from": "0x" + "ab" * 20, "to": TO}))
    assert error["data"] == {"code": "account_not_found"}
    assert node.bodies == []


def test_a_lagging_node_does_not_make_the_relay_reuse_a_nonce(
    relay: FakeStack, node: FakeNode
) -> None:
    node.pending_count = 5
    node.count_pending = False  # a load-balanced provider that has not seen our sends
    address = relay.create()["address"]
    for _ in range(3):
        assert "result" in send(relay, **{"from": address, "to": TO})
    signed = [
        r.params["transaction"]["nonce"]
        for r in relay.enclave.requests
        if r.op == "sign_transaction"
    ]
    assert signed == ["0x5", "0x6", "0x7"]
    node.pending_count = 20  # someone else sent from the account: the node wins
    send(relay, **{"from": address, "to": TO})
    assert signed_transaction(relay)["nonce"] == hex(20)


def test_concurrent_sends_get_distinct_nonces(relay: FakeStack, node: FakeNode) -> None:
    node.count_pending = False  # only the relay's lock and memory keep them apart
    address = relay.create()["address"]
    results: list[dict[str, Any]] = []
    start = threading.Barrier(6)

    def one() -> None:
        start.wait(timeout=10)
        results.append(send(relay, **{"from": address, "to": TO, "gas": "0x5208"}))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all("result" in r for r in results), results
    signed = sorted(
        int(r.params["transaction"]["nonce"], 16)
        for r in relay.enclave.requests
        if r.op == "sign_transaction"
    )
    assert signed == list(range(6))


# -- the nonce tracker on its own ---------------------------------------------------


def test_the_nonce_memory_expires_so_a_lost_send_leaves_no_lasting_gap() -> None:
    tracker = NonceTracker(memory_seconds=0.05)
    tracker.sent("0xAa", 4)
    assert tracker.next_nonce("0xaa", 2) == 5
    threading.Event().wait(0.1)
    assert tracker.next_nonce("0xaa", 2) == 2


def test_the_nonce_memory_is_bounded() -> None:
    tracker = NonceTracker(max_accounts=2)
    for i, address in enumerate(("0x1", "0x2", "0x3")):
        tracker.sent(address, i)
    assert tracker.next_nonce("0x1", 0) == 0  # forgotten, oldest first
    assert tracker.next_nonce("0x3", 0) == 3


def test_a_held_account_is_busy_after_the_lock_timeout() -> None:
    tracker = NonceTracker(lock_seconds=0.05)
    with tracker.hold("0xAB"):
        outcome: list[BaseException] = []

        def second() -> None:
            try:
                with tracker.hold("0xab"):
                    pass
            except RelayError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(5)
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, RelayError)
    assert (error.status, error.code) == (503, "server_busy")
    assert "still in progress" in error.message
    with tracker.hold("0xab"):  # free again, and nothing left behind
        pass
    assert tracker._locks == {}


def test_forwarded_calls_are_counted_as_proxied(relay: FakeStack, node: FakeNode) -> None:
    node.results["eth_blockNumber"] = "0x1"
    node.errors["eth_call"] = {"code": 3, "message": "execution reverted"}
    rpc(relay, "eth_blockNumber", [])
    rpc(relay, "eth_call", [{"to": TO}, "latest"])
    rpc(relay, "personal_unlockAccount", [])
    families = {f.name: f for f in text_string_to_metric_families(relay.metrics())}
    counts = {
        (s.labels["method"], s.labels["outcome"]): s.value
        for s in families["nitro_wallet_relay_jsonrpc_requests"].samples
    }
    assert counts[("proxied", "ok")] == 1
    assert counts[("proxied", "3")] == 1
    assert counts[("unknown", "-32601")] == 1
