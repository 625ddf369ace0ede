"""Issue 9's overload findings, replayed against the simulated appliance (real relay,
enclave, vsock-proxy, KMS processes) at the issue's figures:

- 200 connections drip-feeding the relay (one header line, or one body byte, every
  4 s; each reconnects when it is cut off) cause no outage: another client keeps
  getting signatures throughout, and every dripper is cut off at the request deadline;
- 256 clients at once, creating accounts and signing: every connection gets an HTTP
  answer (no reset), a signature or an account, or a 503 ``server_busy`` with
  Retry-After beyond capacity;
- 1,000 idle connections to the enclave's port from a local process do not stop
  signing through the relay.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account

from enclave_app.transport import Transport
from nitro_sim.stack import ENCLAVE_CID, ENCLAVE_PORT, LocalStack, http_json
from tests.stack_helpers import create_account, eip1559

pytestmark = pytest.mark.stack

DRIP_INTERVAL = 4.0
DRIPPERS = 200
CONCURRENT_CLIENTS = 256
IDLE_ENCLAVE_CONNECTIONS = 1000
#: No answer may take longer than this while the attack lasts: an outage, not a speed.
OUTAGE_SECONDS = 5.0


def _headers(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


def _one_request(
    stack: LocalStack, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], Any]:
    """(status, body, Retry-After) on a new connection; status 0 if no HTTP answer."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.relay_port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body), headers=_headers(stack.api_token))
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    except OSError as exc:  # a reset or a refused connection: no HTTP answer at all
        return 0, {"error": {"code": type(exc).__name__}}, None
    finally:
        conn.close()


def _sign_once(
    stack: LocalStack, account: dict[str, Any], nonce: int
) -> tuple[int, dict[str, Any]]:
    """One signature on a new connection: (status, body); status 0 if no HTTP answer."""
    path = f"/v1/accounts/{account['account_id']}/sign/transaction"
    status, body, _ = _one_request(stack, path, {"transaction": eip1559(nonce)})
    return status, body


@dataclass
class Signer:
    """Signs one transaction after another until stopped; records each answer's time."""

    stack: LocalStack
    account: dict[str, Any]
    answers: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Signer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        nonce = 0
        while not self._stop.is_set():
            began = time.monotonic()
            status, body = _sign_once(self.stack, self.account, nonce)
            self.answers.append((status, time.monotonic() - began, body))
            nonce += 1
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def check(self) -> None:
        """Every answer a correct signature, none slower than the outage bound."""
        assert len(self.answers) >= 10, self.answers
        bad = [(status, body) for status, _, body in self.answers if status != 200]
        assert bad == [], bad[:3]
        slowest = max(took for _, took, _ in self.answers)
        assert slowest < OUTAGE_SECONDS, slowest
        for _, _, body in self.answers:
            raw = body["raw_transaction"]
            assert Account.recover_transaction(raw) == self.account["address"]


# -- drip-feeding clients -------------------------------------------------------------


@dataclass
class Dripper:
    """One slow client: the head of an account creation, then one piece every interval.
    ``header`` drips header lines; otherwise the head goes at once and the body drips."""

    port: int
    header: bool
    token: str
    sock: socket.socket | None = None
    pieces: list[bytes] = field(default_factory=list)
    due: float = 0.0
    reply: bytes = b""

    def connect(self, now: float) -> None:
        body = b'{"account_id": "00000000-0000-4000-8000-000000000000"}'
        head = [
            b"POST /v1/accounts HTTP/1.1\r\n",
            b"Host: relay\r\n",
            b"Content-Type: application/json\r\n",
            b"Authorization: Bearer %s\r\n" % self.token.encode(),
            b"Content-Length: %d\r\n" % len(body),
        ]
        if self.header:  # a header line at a time, forever
            self.pieces = [*head, *(b"X-Drip-%d: x\r\n" % n for n in range(1000))]
        else:
            self.pieces = [b"".join(head) + b"\r\n", *(bytes([b]) for b in body)]
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.setblocking(False)
        self.reply = b""
        self.due = now

    def step(self, now: float) -> bytes | None:
        """Send what is due; the server's whole answer once it closed the connection."""
        assert self.sock is not None
        with contextlib.suppress(BlockingIOError):
            while chunk := self.sock.recv(65536):
                self.reply += chunk
            self.sock.close()  # EOF: the server is done with us
            return self.reply
        if now >= self.due and self.pieces:
            try:
                self.sock.send(self.pieces.pop(0))
            except OSError:
                self.sock.close()
                return self.reply
            self.due = now + DRIP_INTERVAL
        return None


def _drip(drippers: list[Dripper], stop: threading.Event, cut: Counter[str]) -> None:
    now = time.monotonic()
    for dripper in drippers:
        dripper.connect(now)
    while not stop.is_set():
        now = time.monotonic()
        for dripper in drippers:
            reply = dripper.step(now)
            if reply is not None:
                status = reply.split(b" ", 2)[1].decode() if reply else "closed"
                cut[status] += 1
                dripper.connect(now)  # and at it again
        time.sleep(0.05)
    for dripper in drippers:
        if dripper.sock is not None:
            dripper.sock.close()


@pytest.fixture(scope="module")
def warm(stack: LocalStack) -> dict[str, Any]:
    account = create_account(stack)
    assert _sign_once(stack, account, 0)[0] == 200
    return account


def test_200_drip_feeding_connections_cause_no_outage(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    deadline = 10.0  # relay.toml request_deadline_seconds, the default
    drippers = [
        Dripper(stack.relay_port, header=i % 2 == 0, token=stack.api_token) for i in range(DRIPPERS)
    ]
    stop = threading.Event()
    cut: Counter[str] = Counter()
    attack = threading.Thread(target=_drip, args=(drippers, stop, cut), daemon=True)
    attack.start()
    time.sleep(1.0)  # every dripper is connected and holds a request open
    signer = Signer(stack, warm).start()
    try:
        time.sleep(deadline + 4.0)  # past the deadline: cut off, they come back
    finally:
        signer.stop()
        stop.set()
        attack.join(30)
    print(f"drippers cut off: {dict(cut)}; signer: {len(signer.answers)} answers")
    signer.check()
    assert cut["408"] >= DRIPPERS, cut  # every one was cut off at the deadline
    assert set(cut) <= {"408"}, cut


# -- 256 clients at once --------------------------------------------------------------


def test_256_concurrent_clients_all_get_an_http_answer(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    start = threading.Barrier(CONCURRENT_CLIENTS)
    results: list[tuple[str, int, dict[str, Any], Any]] = [("", 0, {}, None)] * CONCURRENT_CLIENTS

    def client(index: int) -> None:
        creating = index % 2 == 0
        path = "/v1/accounts" if creating else f"/v1/accounts/{warm['account_id']}/sign/transaction"
        body = {} if creating else {"transaction": eip1559(1000 + index)}
        start.wait()
        status, answer, retry_after = _one_request(stack, path, body)
        results[index] = ("create" if creating else "sign", status, answer, retry_after)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    outcomes = Counter(
        f"{kind} {status} {answer.get('error', {}).get('code', '')}".strip()
        for kind, status, answer, _ in results
    )
    print(f"{CONCURRENT_CLIENTS} clients at once: {dict(outcomes)}")
    assert all(status != 0 for _, status, _, _ in results), outcomes  # no reset
    for kind, status, answer, retry_after in results:
        if status == 503:
            assert answer["error"]["code"] == "server_busy", answer
            assert retry_after is not None
        elif kind == "create":
            assert status == 201, answer
            stored = http_json("GET", f"{stack.relay_url}/v1/accounts/{answer['account_id']}")
            assert stored == (200, {**stored[1], "address": answer["address"]})
        else:
            assert status == 200, answer
            assert Account.recover_transaction(answer["raw_transaction"]) == warm["address"]
    assert outcomes["sign 200"] > 0
    assert outcomes["create 201"] > 0


# -- idle connections to the enclave ---------------------------------------------------


@contextlib.contextmanager
def _open_files(at_least: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= at_least:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"this test needs {at_least} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_1000_idle_connections_to_the_enclave_do_not_stop_signing(
    stack: LocalStack, warm: dict[str, Any]
) -> None:
    transport = Transport.unix(stack.sim_dir / "vsock")
    with _open_files(IDLE_ENCLAVE_CONNECTIONS + 512):
        idle = [
            transport.connect(ENCLAVE_CID, ENCLAVE_PORT, 10)
            for _ in range(IDLE_ENCLAVE_CONNECTIONS)
        ]
        try:
            for conn in idle[::100]:  # some send half a frame and stall
                conn.sendall(b"\x00\x00")
            signer = Signer(stack, warm).start()
            time.sleep(5.0)
            signer.stop()
            signer.check()
            account = create_account(stack)  # a cold path through KMS as well
            status, body = _sign_once(stack, account, 1)
            assert status == 200, body
            assert Account.recover_transaction(body["raw_transaction"]) == account["address"]
            assert stack.relay_ready()
        finally:
            for conn in idle:
                conn.close()
