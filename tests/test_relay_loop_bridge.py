"""parent_app.loop_bridge: blocking-style handler code on the event loop's thread,
suspended wherever it waits; and the relay parts that wait through it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop

from enclave_app.transport import Transport
from parent_app import loop_bridge
from parent_app.credentials import ImdsCredentialSource
from parent_app.enclave_client import EnclaveClient
from parent_app.http_server import _LingeringTransport
from tests.fake_enclave import FakeEnclave, FakeImds, remove_tree, short_tempdir


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-pool")
    yield executor
    executor.shutdown(wait=True)


def test_run_returns_the_result_and_raises_the_exception(pool: ThreadPoolExecutor) -> None:
    assert uvloop.run(loop_bridge.run(pool, lambda a, b: a + b, 2, 3)) == 5

    def fails() -> None:
        raise KeyError("the handler's own")

    with pytest.raises(KeyError, match="the handler's own"):
        uvloop.run(loop_bridge.run(pool, fails))


def test_handlers_waiting_hold_up_neither_each_other_nor_the_loop(
    pool: ThreadPoolExecutor,
) -> None:
    """Handler A waits for an event only handler B sets: had A blocked the thread, B
    would never run and the test would hang (the timeout fails it)."""

    async def main() -> list[str]:
        ready = asyncio.Event()
        order: list[str] = []

        def first() -> str:
            assert loop_bridge.on_loop()
            order.append("a waits")
            loop_bridge.wait(ready.wait(), timeout=5)
            order.append("a resumed")
            return "a"

        def second() -> str:
            order.append("b sets")
            ready.set()
            return "b"

        results = await asyncio.gather(loop_bridge.run(pool, first), loop_bridge.run(pool, second))
        assert list(results) == ["a", "b"]
        return order

    assert uvloop.run(main()) == ["a waits", "b sets", "a resumed"]


def test_a_wait_past_its_timeout_raises_timeout_error_in_the_handler(
    pool: ThreadPoolExecutor,
) -> None:
    async def main() -> str:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def handler() -> str:
            try:
                loop_bridge.wait(never, timeout=0.05)
            except TimeoutError:
                return "timed out"
            return "answered"

        outcome = await loop_bridge.run(pool, handler)
        assert never.cancelled()  # nobody is left waiting on it
        return outcome

    assert uvloop.run(main()) == "timed out"


def test_cancelling_the_request_unwinds_the_suspended_handler(
    pool: ThreadPoolExecutor,
) -> None:
    """A cancelled request (client gone, server stopping) runs the handler's cleanup
    (the enclave client closes its connection there) and ends cancelled."""
    cleaned: list[str] = []

    async def main() -> None:
        def handler() -> None:
            try:
                loop_bridge.wait(asyncio.sleep(30))
            finally:
                cleaned.append("closed")

        task = asyncio.ensure_future(loop_bridge.run(pool, handler))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    uvloop.run(main())
    assert cleaned == ["closed"]


def test_off_loop_runs_on_the_pool_inside_run_and_here_elsewhere(
    pool: ThreadPoolExecutor,
) -> None:
    here = threading.get_ident()
    assert loop_bridge.off_loop(threading.get_ident) == here
    assert not loop_bridge.on_loop()

    def handler() -> tuple[int, int]:
        return threading.get_ident(), loop_bridge.off_loop(threading.get_ident)

    loop_thread, pool_thread = uvloop.run(loop_bridge.run(pool, handler))
    assert loop_thread == here  # the handler itself ran on the loop's thread
    assert pool_thread != here


def test_wait_outside_run_is_a_programming_error() -> None:
    async def main() -> None:
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(RuntimeError, match="outside"):
            loop_bridge.wait(pending)

    uvloop.run(main())


def test_a_credential_refresh_from_the_loop_waits_on_the_pool(
    pool: ThreadPoolExecutor,
) -> None:
    """IMDS is asked from a pool thread, never from the loop's; a fresh cached value
    is then served without leaving the loop."""
    imds = FakeImds().start()
    try:
        source = ImdsCredentialSource(imds.endpoint, 2)
        asked_from: list[int] = []
        fetch = source._fetch

        def recording_fetch() -> Any:
            asked_from.append(threading.get_ident())
            return fetch()

        source._fetch = recording_fetch  # type: ignore[method-assign]
        first = uvloop.run(loop_bridge.run(pool, source.get))
        again = uvloop.run(loop_bridge.run(pool, source.get))
        assert first == again
        assert first.secret_access_key == imds.state.secret_access_key
        assert len(asked_from) == 1
        assert asked_from[0] != threading.get_ident()
    finally:
        imds.stop()


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed


class _Protocol:
    def __init__(self, loop: asyncio.AbstractEventLoop, raw: _RecordingTransport) -> None:
        self.loop = loop
        self.raw = raw
        self.lingering = False

    def close_connection(self) -> None:
        self.raw.closed = True


def test_an_answers_head_and_body_leave_in_one_send() -> None:
    async def main() -> list[bytes]:
        raw = _RecordingTransport()
        wrapper = _LingeringTransport(raw, _Protocol(asyncio.get_running_loop(), raw))  # type: ignore[arg-type]
        wrapper.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapper.write(b"{}")
        assert raw.writes == []  # not yet: the turn is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        wrapper.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        wrapper.close()  # a close sends what is pending first
        return raw.writes

    writes = uvloop.run(main())
    assert writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]


def test_a_call_on_the_loop_waiting_for_a_pooled_connection_sleeps_until_one_is_free(
    pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only connection is held (0.6 s) by a call on a pool thread: a call on the
    loop waits for it without waking over and over to look, then gets it."""
    vsock = short_tempdir()
    enclave = FakeEnclave(vsock, delay_seconds=0.6).start()
    client = EnclaveClient(Transport.unix(vsock), 16, 5000, 5, pool_size=1, pool_wait_seconds=3)
    waits = [0]
    real_wait = loop_bridge.wait

    def counted_wait(awaitable: Any, timeout: float | None = None) -> Any:
        waits[0] += 1
        return real_wait(awaitable, timeout)

    monkeypatch.setattr(loop_bridge, "wait", counted_wait)
    order: list[str] = []
    try:
        holder = threading.Thread(
            target=lambda: order.append(client.call("health", {})["status"] + " holder")
        )
        holder.start()
        while not enclave.ops():  # the holder's frame reached the enclave
            threading.Event().wait(0.01)

        def on_loop() -> str:
            return str(client.call("health", {})["status"]) + " waiter"

        order.append(uvloop.run(loop_bridge.run(pool, on_loop)))
        holder.join(5)
    finally:
        client.close()
        enclave.stop()
        remove_tree(vsock)
    assert order == ["ok holder", "ok waiter"]
    assert waits[0] <= 30  # woken when freed, rechecked every 50 ms (a 2 ms poll: ~270)
