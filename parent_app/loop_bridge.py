"""Blocking-style handler code run on the event loop's thread, suspended (not blocked)
wherever it waits.

The service layer is written as plain calls that wait: for the enclave's answer, a
storage read, an IMDS refresh. Run on a pool thread, every request costs two thread
hand-offs (loop -> pool thread -> loop) and, since the relay's Python runs under one
GIL, every hand-off is dead time on its serial path: at 8 concurrent signatures the
relay spent about 17 context switches per request and left a quarter of the machine
idle (docs/performance.md has the profile).

``run(fn, ...)`` runs ``fn`` in a greenlet on the loop's thread instead. Where ``fn``
would wait, the code below it calls ``wait(awaitable)``: the greenlet switches back to
the coroutine in ``run``, which awaits the awaitable as any coroutine does (the loop
serves other connections meanwhile) and switches back in with its result or
exception. Called anywhere else (a pool thread, a tool, a test), ``wait`` is never
reached: ``on_loop()`` is False there and callers take their blocking branch.

What may run this way is decided by the caller (``asgi_app``): code whose only waits
go through ``wait`` or ``off_loop``. A wait that does not (a lock held by a pool
thread, a blocking read) would stall the loop for its duration, never give a wrong
answer. ``off_loop(fn, ...)`` is for the waits that stay blocking: on the loop it runs
``fn`` on the pool and waits for it; elsewhere it just calls ``fn``.

One rule for such code: never hold a ``threading`` lock across ``wait`` or
``off_loop``. Every handler on the loop shares one thread, so a second handler taking
that lock would block the thread the first one needs to resume: a deadlock. (The
enclave client's pool slots are taken without blocking on the loop for this reason.)

greenlet (maintained by the Python-greenlet project, the base of gevent and of
SQLAlchemy's asyncio bridge) is the relay's, never the enclave's, dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, cast

import greenlet

T = TypeVar("T")


class _Handler(greenlet.greenlet):
    """A handler running on the loop's thread; ``executor`` serves its ``off_loop``."""

    executor: Executor


class _Wait:
    """What a suspended handler hands to ``run``: an awaitable and its time limit."""

    __slots__ = ("awaitable", "timeout")

    def __init__(self, awaitable: Awaitable[Any], timeout: float | None) -> None:
        self.awaitable = awaitable
        self.timeout = timeout


async def run(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on this thread, its ``wait`` calls awaited here; its result, or
    its exception raised."""
    handler = _Handler(fn)
    handler.executor = executor
    request = handler.switch(*args)
    while not handler.dead:
        wanted = cast(_Wait, request)
        try:
            if wanted.timeout is None:
                value = await wanted.awaitable
            else:
                async with asyncio.timeout(wanted.timeout):
                    value = await wanted.awaitable
        except BaseException as exc:  # cancellation included: the handler unwinds
            request = handler.throw(exc)
        else:
            request = handler.switch(value)
    return cast(T, request)


def on_loop() -> bool:
    """True inside ``run``: waits must go through ``wait``."""
    return isinstance(greenlet.getcurrent(), _Handler)


def wait(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """The awaitable's result, from a handler inside ``run``; ``TimeoutError`` after
    ``timeout`` seconds (the awaitable is cancelled)."""
    current = greenlet.getcurrent()
    parent = current.parent
    if not isinstance(current, _Handler) or parent is None:
        raise RuntimeError("loop_bridge.wait outside loop_bridge.run")
    return cast(T, parent.switch(_Wait(awaitable, timeout)))


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: on the pool when called inside ``run``, else here."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Handler):
        return fn(*args)
    loop = asyncio.get_running_loop()
    return wait(loop.run_in_executor(current.executor, fn, *args))
