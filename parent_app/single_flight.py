"""One call at a time to a slow dependency, with callers that wait a bounded time.

The readiness checks and the metrics scrape ask the enclave for its health, its KMS
probe and its counters. Those calls are cheap when the enclave is well, but a stuck
enclave holds a call for the whole enclave timeout (``[enclave] timeout_seconds``),
and a load balancer's health check must be answered in seconds. ``SingleFlight`` runs
the call in its own daemon thread; every caller that arrives while it runs joins it
instead of starting another (so polling /readyz faster never multiplies the calls),
and each caller waits at most its own bound. A call that outlives its callers keeps
running to its own timeout; the next caller after it ends starts a fresh one.

Daemon threads, not an executor: the interpreter never waits at exit for a call to a
stuck enclave.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["SingleFlight"]


class SingleFlight(Generic[T]):
    def __init__(self, call: Callable[[], T], name: str) -> None:
        self._call = call
        self._name = name
        self._lock = threading.Lock()
        self._future: Future[T] | None = None

    def future(self) -> Future[T]:
        """The call in flight, or a new one when none is."""
        with self._lock:
            future = self._future
            if future is None or future.done():
                future = self._future = Future()
                threading.Thread(
                    target=self._run, args=(future,), name=self._name, daemon=True
                ).start()
            return future

    def result(self, wait: float) -> T:
        """The call's result, waiting at most ``wait`` seconds (``TimeoutError`` after);
        the call's own exception is raised as is."""
        return self.future().result(timeout=max(0.0, wait))

    def _run(self, future: Future[T]) -> None:
        try:
            future.set_result(self._call())
        except BaseException as exc:  # handed to every waiter; never lost in the thread
            future.set_exception(exc)
