"""The enclave's framed server over real unix sockets (the simulated vsock transport):
idle connections, capacity, slow peers, framing errors and ordering."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from enclave_app import wire
from enclave_app.server import ServerLimits
from tests.enclave_rig import EnclaveRig, read_answer, request_frame
from tests.stack_helpers import eip1559

TX = eip1559()


@pytest.fixture
def root() -> Iterator[Path]:
    """A short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nwe-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def rig_with(root: Path, **limits: Any) -> EnclaveRig:
    return EnclaveRig(root, limits=ServerLimits(**limits))


def sign(rig: EnclaveRig, account: dict[str, Any], conn: socket.socket | None = None) -> str:
    """Sign TX as ``account`` and return the address the signature recovers to."""
    result = rig.call(
        "sign_transaction",
        {"account": account, "credentials": rig.credentials, "transaction": TX},
        conn,
    )
    return str(Account.recover_transaction(result["raw_transaction"]))


def wait_for(condition: Callable[[], bool], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the enclave closes ``sock`` (after any answer it sends) in time."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_health_reports_the_capacity_a_client_sizes_itself_by(root: Path) -> None:
    with rig_with(root, workers=3, queue_depth=5, max_connections=50) as rig:
        capacity = rig.call("health")["capacity"]
        assert capacity == {
            "workers": 3,
            "queue_depth": 5,
            "max_connections": 50,
            "max_frame_bytes": 4 * 1024 * 1024,
        }


def test_1000_idle_connections_do_not_stop_signing(root: Path) -> None:
    with rig_with(root) as rig:
        account = rig.create_account()
        idle = [rig.connect() for _ in range(1000)]
        try:
            # Some of them even started a frame, and stalled.
            for conn in idle[::10]:
                conn.sendall(b"\x00\x00")
            # A stuck signer would time out (the rig's sockets wait 10 s at most).
            assert sign(rig, account) == account["address"]
            assert rig.server.connection_count() >= 1000
        finally:
            for conn in idle:
                conn.close()


def test_at_the_connection_limit_the_longest_idle_connection_makes_room(root: Path) -> None:
    with rig_with(root, max_connections=20) as rig:
        account = rig.create_account()
        idle = [rig.connect() for _ in range(60)]
        try:
            assert sign(rig, account) == account["address"]
            assert rig.server.connection_count() <= 20
            assert closed_by_peer(idle[0], within=5)  # the oldest went first
        finally:
            for conn in idle:
                conn.close()


def test_one_connection_carries_many_frames_and_pipelined_answers_keep_their_order(
    root: Path,
) -> None:
    with rig_with(root) as rig:
        account = rig.create_account()
        conn = rig.connect()
        for _ in range(3):
            assert sign(rig, account, conn) == account["address"]
        params = {"account": account, "credentials": rig.credentials, "transaction": TX}
        conn.sendall(
            b"".join(
                wire.HEADER.pack(len(frame)) + frame
                for frame in (
                    request_frame("sign_transaction", params, "first"),
                    request_frame("health", {}, "second"),
                    request_frame("no_such_op", {}, "third"),
                )
            )
        )
        answers = [read_answer(conn) for _ in range(3)]
        assert [a["id"] for a in answers] == ["first", "second", "third"]
        assert [a["ok"] for a in answers] == [True, True, False]
        assert answers[2]["error"]["code"] == "unknown_op"
        conn.close()


def test_beyond_capacity_a_frame_is_answered_server_busy_at_once(root: Path) -> None:
    with rig_with(root, workers=1, queue_depth=1) as rig:
        account = rig.create_account()
        rig.forget_keys()
        rig.gate.open.clear()  # every KMS call now waits: cold signers hold their worker
        params = {"account": account, "credentials": rig.credentials, "transaction": TX}
        holders = [rig.connect() for _ in range(2)]
        for i, conn in enumerate(holders):  # one executes, one waits in the queue
            wire.write_frame(conn, request_frame("sign_transaction", params, f"held-{i}"))
        time.sleep(0.5)
        late = rig.connect()
        wire.write_frame(late, request_frame("health", {}, "late"))
        busy = read_answer(late)  # at once: the held workers wait for the gate
        assert busy["ok"] is False
        assert busy["error"]["code"] == "server_busy"
        rig.gate.open.set()
        for i, conn in enumerate(holders):
            answer = read_answer(conn)
            assert (answer["id"], answer["ok"]) == (f"held-{i}", True)
        # The refused connection was not dropped: it still works.
        assert rig.call("health", conn=late)["status"] == "ok"
        assert rig.gate.calls["Decrypt"] == 1  # one unlock served both waiting signers


def test_a_warm_signature_does_not_wait_behind_a_worker_held_by_kms(root: Path) -> None:
    with rig_with(root, workers=1, queue_depth=4) as rig:
        warm, cold = rig.create_account(), rig.create_account()
        rig.forget_keys()
        assert sign(rig, warm) == warm["address"]  # unlocked again: warm
        rig.gate.open.clear()  # every KMS call now waits
        held = rig.connect()
        params = {"account": cold, "credentials": rig.credentials, "transaction": TX}
        wire.write_frame(held, request_frame("sign_transaction", params, "cold"))
        assert wait_for(lambda: rig.gate.in_flight == 1)  # the only worker waits on KMS
        conn = rig.connect(timeout=5)  # a queued signature would wait for the gate (30 s)
        for _ in range(3):
            assert sign(rig, warm, conn) == warm["address"]
        assert rig.gate.in_flight == 1
        rig.gate.open.set()
        answer = read_answer(held)
        assert (answer["id"], answer["ok"]) == ("cold", True)
        assert rig.gate.calls["Decrypt"] == 2  # the warm account's unlock, then the cold one


def test_requests_that_may_wait_on_kms_leave_the_io_thread_free(root: Path) -> None:
    with rig_with(root, workers=2, queue_depth=4) as rig:
        warm, cold = rig.create_account(), rig.create_account()
        rig.forget_keys()
        assert sign(rig, warm) == warm["address"]
        rig.gate.open.clear()
        held = rig.connect()
        params = {"account": cold, "credentials": rig.credentials, "transaction": TX}
        wire.write_frame(held, request_frame("sign_transaction", params, "cold"))
        # A batch with one cold account waits on KMS too: a worker, not the I/O thread.
        batch = rig.connect()
        items = [{"op": "sign_transaction", "account": i, "transaction": TX} for i in (0, 1)]
        batch_params = {"credentials": rig.credentials, "accounts": [warm, cold], "items": items}
        wire.write_frame(batch, request_frame("sign_batch", batch_params, "batch"))
        assert wait_for(lambda: rig.gate.in_flight == 1)  # single flight: one Decrypt
        conn = rig.connect(timeout=5)
        assert rig.call("health", conn=conn)["status"] == "ok"
        assert sign(rig, warm, conn) == warm["address"]
        assert rig.call("stats", conn=conn)["server"]["admitted"] >= 4
        rig.gate.open.set()
        assert read_answer(held)["ok"] is True
        results = read_answer(batch)["result"]["results"]
        assert [result["ok"] for result in results] == [True, True]


def test_a_key_gone_between_the_inline_check_and_its_use_is_unlocked_inline(
    root: Path,
) -> None:
    with rig_with(root) as rig:
        account = rig.create_account()
        rig.forget_keys()
        # Every request judged inline: the cold key is unlocked on the I/O thread.
        rig.operations.runs_inline = lambda op, params: True  # type: ignore[method-assign]
        assert sign(rig, account) == account["address"]
        assert rig.gate.calls["Decrypt"] == 1
        assert rig.call("attest")["attestation_document"]


def test_runs_inline_names_what_cannot_wait_on_kms_and_changes_nothing(root: Path) -> None:
    with rig_with(root) as rig:
        ops = rig.operations
        account, other = rig.create_account(), rig.create_account()  # both warm
        lookups = (rig.stats.key_cache_lookups.get("hit"), rig.stats.key_cache_lookups.get("miss"))
        receipts = rig.enclave_gate.receipts.pull(None)["next"]
        for op in ("health", "stats", "audit_receipts", "audit_head"):
            assert ops.runs_inline(op, {})
        for op in ("attest", "generate_account", "kms_probe", "no_such_op"):
            assert not ops.runs_inline(op, {"account": account, "accounts": [account]})
        one = {"account": account, "credentials": rig.credentials, "transaction": TX}
        for op in ("sign_transaction", "sign_message", "sign_typed_data", "sign_authorization"):
            assert ops.runs_inline(op, one)
        assert ops.runs_inline("sign_batch", {"accounts": [account, other]})
        for params in (
            {},
            {"account": "x"},
            {"account": {**account, "address": "0x12"}},
            {"account": {**account, "encrypted_data_key": "AAAA"}},  # another record: cold
        ):
            assert not ops.runs_inline("sign_transaction", params)
        for accounts in ([], "x", [account, "x"], [account] * 101):
            assert not ops.runs_inline("sign_batch", {"accounts": accounts})
        rig.forget_keys()
        assert sign(rig, account) == account["address"]  # warm again; other stays cold
        assert ops.runs_inline("sign_message", {"account": account})
        assert not ops.runs_inline("sign_message", {"account": other})
        assert not ops.runs_inline("sign_batch", {"accounts": [account, other]})
        hits, misses = lookups
        # Only the signature above looked a key up (a miss) and left a receipt.
        assert rig.stats.key_cache_lookups.get("hit") == hits
        assert rig.stats.key_cache_lookups.get("miss") == misses + 1
        assert rig.enclave_gate.receipts.pull(None)["next"] == receipts + 1


def test_a_stalled_partial_frame_holds_no_worker_and_times_out(root: Path) -> None:
    with rig_with(root, workers=1, queue_depth=0, frame_timeout_seconds=2) as rig:
        account = rig.create_account()
        stalled = rig.connect()
        frame = request_frame("health", {}, "stalled")
        stalled.sendall(wire.HEADER.pack(len(frame)) + frame[:5])
        time.sleep(0.2)
        assert sign(rig, account) == account["address"]  # the only worker is free
        answer = read_answer(stalled)
        assert answer["error"]["code"] == "bad_frame"
        assert "not received within" in answer["error"]["message"]
        assert closed_by_peer(stalled, within=5)


def test_the_frame_cap_is_checked_on_the_length_prefix(root: Path) -> None:
    with rig_with(root, max_frame_bytes=4096, max_buffered_bytes=4096) as rig:
        conn = rig.connect()
        conn.sendall(struct.pack(">I", 4097) + b"x" * 100)
        answer = read_answer(conn)
        assert answer["error"]["code"] == "frame_too_large"
        assert closed_by_peer(conn, within=5)
        empty = rig.connect()
        empty.sendall(struct.pack(">I", 0))
        assert read_answer(empty)["error"]["code"] == "bad_frame"


def test_frames_beyond_the_memory_bound_are_refused_and_skipped(root: Path) -> None:
    with rig_with(root, max_frame_bytes=64 * 1024, max_buffered_bytes=64 * 1024) as rig:
        hog = rig.connect()
        hog.sendall(struct.pack(">I", 60 * 1024) + b"{")  # reserves 60 KiB, then stalls
        time.sleep(0.2)
        conn = rig.connect()
        big = request_frame("health", {"pad": "x" * 8000}, "big")
        conn.sendall(wire.HEADER.pack(len(big)) + big)
        refused = read_answer(conn)
        assert refused["error"]["code"] == "server_busy"
        # The refused body was skipped, not read as frames: the connection goes on.
        assert rig.call("health", conn=conn)["status"] == "ok"
        hog.close()


def test_idle_connections_are_closed_after_the_idle_timeout(root: Path) -> None:
    with rig_with(root, idle_timeout_seconds=1) as rig:
        conn = rig.connect()
        assert rig.call("health", conn=conn)["status"] == "ok"
        assert closed_by_peer(conn, within=5)


def test_a_half_closed_peer_still_gets_its_answer(root: Path) -> None:
    with rig_with(root) as rig:
        conn = rig.connect()
        wire.write_frame(conn, request_frame("health", {}, "h"))
        conn.shutdown(socket.SHUT_WR)
        assert read_answer(conn)["result"]["status"] == "ok"
        assert closed_by_peer(conn, within=5)
        cut = rig.connect()
        cut.sendall(struct.pack(">I", 100) + b"{}")
        cut.shutdown(socket.SHUT_WR)
        answer = read_answer(cut)
        assert answer["error"]["code"] == "bad_frame"
        assert "mid-frame" in answer["error"]["message"]


def test_unexpected_exceptions_leave_no_details(root: Path) -> None:
    with rig_with(root) as rig:

        def explode(params: object) -> dict[str, Any]:
            raise ValueError("secret detail 0xdeadbeef")

        rig.operations.handlers["health"] = explode
        conn = rig.connect()
        wire.write_frame(conn, request_frame("health", {}, "boom"))
        answer = read_answer(conn)
        assert answer["id"] == "boom"
        assert answer["error"] == {
            "code": "internal_error",
            "message": "internal error in the enclave",
        }
        assert "deadbeef" not in str(answer)
        assert rig.call("attest", conn=conn)["attestation_document"]


def test_many_concurrent_clients_all_get_correct_signatures(root: Path) -> None:
    with rig_with(root, workers=4, queue_depth=64) as rig:
        accounts = [rig.create_account() for _ in range(4)]
        failures: list[str] = []

        def client(n: int) -> None:
            conn = rig.connect()
            for i in range(20):
                account = accounts[(n + i) % len(accounts)]
                recovered = sign(rig, account, conn)
                if recovered != account["address"]:
                    failures.append(recovered)
            conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
