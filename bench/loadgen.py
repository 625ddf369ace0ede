"""HTTP/1.1 load generator, run as its own process so the load it drives never shares
an interpreter (or a GIL) with the server it measures.

    python -m bench.loadgen < job.json > result.json

The job (JSON on stdin):
    {"port": 8080, "requests": ["<base64 raw HTTP request>", ...],
     "concurrency": 8, "duration": 5.0, "warmup": 1.0,     # timed mode, or
     "count": 10000,                                       # each request once, in order
     "keep_bodies": 20}

Each of ``concurrency`` keep-alive connections sends a request, reads the whole answer
(status line, headers, Content-Length body), then sends the next; requests are taken
round-robin from ``requests``. In timed mode only answers that start and finish inside
the window after ``warmup`` count. The result: answers, answers per second, latency
percentiles, status counts, reconnects and a few answer bodies (for the caller to
check, outside the timed window).

uvloop and asyncio protocols keep the generator's own cost near 20 us per request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import uvloop

#: In timed mode, answers still missing this long after the window are given up on.
GRACE = 15.0


@dataclass
class Job:
    port: int
    requests: list[bytes]
    concurrency: int
    duration: float = 5.0
    warmup: float = 1.0
    count: int | None = None
    keep_bodies: int = 20
    host: str = "127.0.0.1"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        return cls(
            port=int(raw["port"]),
            requests=[base64.b64decode(r) for r in raw["requests"]],
            concurrency=int(raw["concurrency"]),
            duration=float(raw.get("duration", 5.0)),
            warmup=float(raw.get("warmup", 1.0)),
            count=None if raw.get("count") is None else int(raw["count"]),
            keep_bodies=int(raw.get("keep_bodies", 20)),
        )


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[str] = field(default_factory=list)
    reconnects: int = 0
    answered: int = 0
    stalled: int = 0


class Run:
    """Hands out requests and decides what is counted."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tally = Tally()
        self.next_index = 0
        self.connections: set[Connection] = set()
        self.started = time.perf_counter()
        self.window_start = self.started + (0 if job.count is not None else job.warmup)
        self.window_end = (
            float("inf") if job.count is not None else self.window_start + job.duration
        )

    def take(self) -> bytes | None:
        now = time.perf_counter()
        if self.job.count is not None:
            if self.next_index >= self.job.count:
                return None
        elif now >= self.window_end:
            return None
        request = self.job.requests[self.next_index % len(self.job.requests)]
        self.next_index += 1
        return request

    def done(self, began: float, status: int, body: bytes) -> None:
        ended = time.perf_counter()
        self.tally.answered += 1
        if began >= self.window_start and ended <= self.window_end:
            self.tally.latencies.append(ended - began)
            self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
            if len(self.tally.bodies) < self.job.keep_bodies:
                self.tally.bodies.append(body.decode("utf-8", "replace"))

    def active(self) -> bool:
        if self.job.count is not None:
            return self.next_index < self.job.count
        return time.perf_counter() < self.window_end


class Connection(asyncio.Protocol):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.began = 0.0
        self.expected: int | None = None
        self.busy = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.run.connections.add(self)
        self.send_next()

    def send_next(self) -> None:
        assert self.transport is not None
        request = self.run.take()
        if request is None:
            self.busy = False
            self.transport.close()
            return
        self.busy = True
        self.buffer.clear()
        self.expected = None
        self.began = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                length = int(head[marker + 17 : stop if stop >= 0 else None])
            self.expected = end + 4 + length
        if len(self.buffer) < self.expected:
            return
        status = int(self.buffer[9:12])
        head_end = self.buffer.find(b"\r\n\r\n") + 4
        body = bytes(self.buffer[head_end : self.expected])
        self.busy = False
        self.run.done(self.began, status, body)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.connections.discard(self)
        if self.busy:  # closed mid-answer: counted as a failure (status 0)
            self.busy = False
            self.run.done(self.began, 0, b"")
        if not self.lost.done():
            self.lost.set_result(None)


async def _drive(run: Run) -> None:
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while run.active():
            try:
                _, protocol = await loop.create_connection(
                    lambda: Connection(run), run.job.host, run.job.port
                )
            except OSError:
                run.tally.reconnects += 1
                await asyncio.sleep(0.05)
                continue
            await protocol.lost
            if run.active():
                run.tally.reconnects += 1  # the server closed a connection mid-run

    workers = [asyncio.ensure_future(worker()) for _ in range(run.job.concurrency)]
    limit = None if run.job.count is not None else run.job.warmup + run.job.duration + GRACE
    _, stalled = await asyncio.wait(workers, timeout=limit)
    if stalled:  # answers that never came: cut those connections and report them
        run.tally.stalled = len(stalled)
        for connection in list(run.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.wait(stalled, timeout=5)


async def _main(job: Job) -> dict[str, Any]:
    run = Run(job)
    cpu_started = time.process_time()
    await _drive(run)
    cpu = time.process_time() - cpu_started
    ended = time.perf_counter()
    tally = run.tally
    window = (
        ended - run.started
        if job.count is not None
        else min(ended, run.window_end) - run.window_start
    )
    latencies = sorted(tally.latencies)
    return {
        "concurrency": job.concurrency,
        "answers": len(latencies),
        # Every answer of the run, warmup and tail included: what the CPU was spent on.
        "answered_total": tally.answered,
        "seconds": window,
        "rps": len(latencies) / window if window > 0 else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p90_ms": _percentile(latencies, 0.90) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "reconnects": tally.reconnects,
        "stalled_connections": tally.stalled,
        "cpu_us_per_request": round(cpu / max(1, tally.answered) * 1e6, 1),
        "bodies": tally.bodies,
    }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    job = Job.from_json(json.load(sys.stdin))
    result = uvloop.run(_main(job))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
