"""The relay's HTTP front end over real sockets: keep-alive, listen backlog, bounds
answered with 503 + Retry-After, the per-request deadline against drip-feeding clients
(headers and body), oversized bodies answered 413 to clients that keep sending, and
malformed requests answered as JSON."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.fake_enclave import AUTH_LINE, TEST_TOKEN, FakeStack

EIGHT_MIB = 8 << 20
JSON_WITH_TOKEN = {"Content-Type": "application/json", "Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path)
    yield started
    started.stop()


@contextlib.contextmanager
def fake_stack(tmp_path: Path, **relay: Any) -> Iterator[FakeStack]:
    started = FakeStack.start(tmp_path, **relay)
    try:
        yield started
    finally:
        started.stop()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status_and_body(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- keep-alive ------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(stack: FakeStack) -> None:
    account_id = stack.create()["account_id"]
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
    try:
        local_ports = set()
        for path, body in [
            ("/healthz", None),
            (f"/v1/accounts/{account_id}", None),
            (f"/v1/accounts/{account_id}/sign/transaction", {"transaction": {"nonce": 1}}),
            ("/nowhere", None),  # an error answer keeps the connection too
            ("/healthz", None),
        ]:
            method = "GET" if body is None else "POST"
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 404)
            assert response.getheader("Connection") is None  # no "close"
            assert conn.sock is not None
            local_ports.add(conn.sock.getsockname()[1])
        assert len(local_ports) == 1
    finally:
        conn.close()


def test_idle_connections_are_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    with (
        fake_stack(tmp_path, keep_alive_timeout_seconds=0.3) as stack,
        socket.create_connection(("127.0.0.1", stack.port), timeout=5) as fresh,
        socket.create_connection(("127.0.0.1", stack.port), timeout=5) as used,
    ):
        used.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert b"200 OK" in used.recv(65536)
        assert fresh.recv(1) == b""  # never sent a byte: closed all the same
        assert used.recv(1) == b""  # idle after its answer
        assert time.monotonic() - started < 3


# -- listen backlog ----------------------------------------------------------------------


def _listen_backlog(port: int) -> int:
    """The accept-queue bound the kernel holds for the listener (ss shows it as Send-Q)."""
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed to read a listener's backlog"
    out = subprocess.run(
        [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    (line,) = [line for line in out.splitlines() if line.strip()]
    return int(line.split()[2])


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.process  # reads the backlog with ss(8)
def test_listen_backlog_is_at_least_1024_and_configurable(tmp_path: Path) -> None:
    with fake_stack(tmp_path) as stack:
        assert _listen_backlog(stack.port) == min(1024, _somaxconn())
    with fake_stack(tmp_path, listen_backlog=2048) as stack:
        assert _listen_backlog(stack.port) == min(2048, _somaxconn())


# -- bounds: 503 server_busy with Retry-After ------------------------------------------


def test_connections_beyond_the_bound_get_503_json(tmp_path: Path) -> None:
    with fake_stack(tmp_path, max_connections=3, max_concurrent_requests=2) as stack:
        idle = [socket.create_connection(("127.0.0.1", stack.port), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = _read_all(extra)
            status, body = _status_and_body(reply)
            assert status == 503
            assert body["error"]["code"] == "server_busy"
            assert b"\r\nretry-after: 1\r\n" in reply.lower()
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while stack.call("GET", "/healthz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _slow_signatures(
    stack: FakeStack, count: int, while_running: Callable[[], None] = lambda: None
) -> list[Any]:
    """``count`` signing requests at once, each taking the enclave 1 s;
    ``while_running`` runs 0.3 s after they started."""
    account_id = stack.create()["account_id"]
    stack.enclave.delay_seconds = 1.0
    answers: list[Any] = []

    def sign() -> None:
        answers.append(
            stack.call(
                "POST",
                f"/v1/accounts/{account_id}/sign/transaction",
                {"transaction": {"nonce": 1}},
            )
        )

    threads = [threading.Thread(target=sign) for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    while_running()
    for thread in threads:
        thread.join()
    stack.enclave.delay_seconds = 0
    return answers


def test_enclave_pool_exhausted_gives_503_server_busy_with_retry_after(tmp_path: Path) -> None:
    with fake_stack(
        tmp_path, enclave={"pool_size": 1, "pool_wait_seconds": 0.2}, enclave_timeout=5
    ) as stack:
        answers = _slow_signatures(stack, 3)
        statuses = sorted(answer.status for answer in answers)
        assert statuses[0] == 200
        busy = [answer for answer in answers if answer.status == 503]
        assert busy
        for answer in busy:
            assert answer.error_code == "server_busy"
            assert answer.headers["Retry-After"] == "1"


# -- the deadline: drip-feeding clients lose their slot ---------------------------------


def _drip(port: int, head: bytes, body: bytes, interval: float, budget: float) -> bytes:
    """Send ``head`` then ``body`` one byte per ``interval`` on a new connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return _drip_on(sock, head + body, interval, budget)


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_drip_feeding_client_holds_no_slot_and_is_cut_off_at_the_deadline(
    tmp_path: Path, phase: str
) -> None:
    with fake_stack(tmp_path, max_concurrent_requests=1, request_deadline_seconds=1.0) as stack:
        body = json.dumps({"account_id": str(uuid.uuid4())}).encode()
        head = (
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + AUTH_LINE
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        if phase == "body":  # the headers arrive at once, the body drips
            sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
            sock.sendall(head)
            outcome: list[bytes] = []
            dripper = threading.Thread(
                target=lambda: outcome.append(_drip_on(sock, body, 0.05, 4.0)), daemon=True
            )
        else:
            outcome = []
            dripper = threading.Thread(
                target=lambda: outcome.append(_drip(stack.port, head, body, 0.05, 4.0)),
                daemon=True,
            )
        started = time.monotonic()
        dripper.start()
        time.sleep(0.3)
        assert stack.call("GET", "/healthz").status == 200  # the only slot is not its
        dripper.join(6)
        elapsed = time.monotonic() - started
        assert outcome, "the dripper never finished"
        status, answer = _status_and_body(outcome[0])
        assert status == 408
        assert answer["error"]["code"] == "request_timeout"
        assert 0.9 < elapsed < 3.5  # cut at the deadline, not when the drip ended
        assert "generate_account" not in stack.enclave.ops()


def test_requests_beyond_the_execution_slots_get_503_at_once(tmp_path: Path) -> None:
    with fake_stack(tmp_path, max_concurrent_requests=2) as stack:
        during: list[Any] = []
        answers = _slow_signatures(  # two handlers run: no slot left
            stack, 4, while_running=lambda: during.append(stack.call("GET", "/healthz"))
        )
        (busy,) = during
        assert (busy.status, busy.error_code, busy.headers["Retry-After"]) == (
            503,
            "server_busy",
            "1",
        )
        assert sorted(answer.status for answer in answers) == [200, 200, 503, 503]
        assert stack.call("GET", "/healthz").status == 200


def test_blank_lines_dripped_before_a_request_line_hit_the_deadline(tmp_path: Path) -> None:
    with fake_stack(tmp_path, request_deadline_seconds=1.0) as stack:
        started = time.monotonic()
        reply = _drip(stack.port, b"\r\n" * 200, b"", 0.05, 6.0)
        assert time.monotonic() - started < 3.5
        assert reply == b"" or reply.split()[1] == b"408"


def _drip_on(sock: socket.socket, data: bytes, interval: float, budget: float) -> bytes:
    """Send ``data`` one byte per ``interval`` (for at most ``budget`` s), then return
    what the server answered; stops early when the server closes."""
    with sock:
        stop = time.monotonic() + budget
        for byte in data:
            if time.monotonic() > stop:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(interval)
        return _read_all(sock)


# -- oversized bodies: the 413 reaches clients that keep sending --------------------------


def _big_body() -> bytes:
    return b'{"account_id": "' + b"a" * (EIGHT_MIB - 20) + b'"}'


def test_urllib_sending_8_mib_reads_the_413(stack: FakeStack) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.port}/v1/accounts",
        data=_big_body(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TEST_TOKEN}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=20)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"]["code"] == "body_too_large"
    assert caught.value.headers["Connection"] == "close"
    assert stack.enclave.ops() == []


def _post_with_requests(url: str, body: bytes) -> tuple[int, Any]:
    answer = requests.post(url, data=body, headers=JSON_WITH_TOKEN, timeout=20)
    return answer.status_code, answer.json()


def _post_with_httpx(url: str, body: bytes) -> tuple[int, Any]:
    answer = httpx.post(url, content=body, headers=JSON_WITH_TOKEN, timeout=20)
    return answer.status_code, answer.json()


@pytest.mark.parametrize("post", [_post_with_requests, _post_with_httpx])
def test_requests_and_httpx_sending_8_mib_read_the_413(
    stack: FakeStack, post: Callable[[str, bytes], tuple[int, Any]]
) -> None:
    status, body = post(f"http://127.0.0.1:{stack.port}/v1/accounts", _big_body())
    assert (status, body["error"]["code"]) == (413, "body_too_large")


def test_expect_100_continue_gets_the_413_without_sending_the_body(stack: FakeStack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + AUTH_LINE
            + b"Expect: 100-continue\r\nContent-Length: 9000000\r\n\r\n"
        )
        reply = _read_all(sock)
    assert not reply.startswith(b"HTTP/1.1 100")
    status, body = _status_and_body(reply)
    assert (status, body["error"]["code"]) == (413, "body_too_large")


def test_without_credentials_the_body_is_never_read(stack: FakeStack) -> None:
    """401 before the body: an unauthenticated client cannot make the relay take its
    body (nor wait for it), and requests and httpx, which send it first, read the 401."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 900000\r\n\r\n"
        )
        started = time.monotonic()
        reply = _read_all(sock)
    assert time.monotonic() - started < 3
    assert not reply.startswith(b"HTTP/1.1 100")
    status, body = _status_and_body(reply)
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    assert b'www-authenticate: bearer realm="nitro-wallet"' in reply.lower()
    answer = requests.post(
        f"http://127.0.0.1:{stack.port}/v1/accounts",
        data=b"{" + b" " * 2_000_000 + b"}",
        headers={"Content-Type": "application/json"},
        timeout=20,
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthenticated")
    assert stack.enclave.ops() == []


def test_a_body_within_the_cap_is_served_with_100_continue(stack: FakeStack) -> None:
    body = b"{}"
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + AUTH_LINE
            + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body + b"")
        reply = sock.recv(65536)
    assert reply.split()[1] == b"201"


# -- malformed requests get JSON ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"\x00\x01\x02 garbage\r\n\r\n", 400, "invalid_request"),
        (b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n", 400, "invalid_request"),
        (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        (
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n{}",
            400,
            "invalid_request",
        ),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, "invalid_request"),
        (
            b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
            431,
            "invalid_request",
        ),
    ],
)
def test_malformed_requests_get_json_errors(
    stack: FakeStack, raw: bytes, status: int, code: str
) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(raw)
        reply = _read_all(sock)
    got_status, body = _status_and_body(reply)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert b"\r\nx-request-id: " in reply.lower()
    assert stack.call("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    "follower",
    [
        b"GET /healthz HT",  # never finished: the deadline passes (408)
        b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (70 * 1024),  # a head too large (431)
        b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",  # malformed (400)
    ],
    ids=["deadline", "head-too-large", "malformed"],
)
def test_a_pipelined_request_refused_while_the_one_before_it_runs_never_takes_its_answer(
    tmp_path: Path, follower: bytes
) -> None:
    """The answer to a request still running leaves first: a refusal of the request a
    client pipelined behind it can never be read as that answer."""
    with fake_stack(tmp_path, request_deadline_seconds=1.0) as stack:
        account_id = stack.create()["account_id"]
        stack.enclave.hold_ops = frozenset({"sign_transaction"})
        body = json.dumps({"transaction": {"nonce": 1}}).encode()
        first = (
            (
                f"POST /v1/accounts/{account_id}/sign/transaction HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nX-Request-Id: first\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            + AUTH_LINE
            + b"\r\n"
            + body
        )
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(first)
            deadline = time.monotonic() + 5
            while "sign_transaction" not in stack.enclave.ops():
                assert time.monotonic() < deadline, "the signature never reached the enclave"
                time.sleep(0.01)
            sock.sendall(follower)
            time.sleep(1.5)  # past the follower's deadline, the signature still held
            stack.enclave.release.set()
            reply = _read_all(sock)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert reply.count(b"HTTP/1.1 ") == 1  # then the connection closed, nothing else
        assert b"\r\nx-request-id: first\r\n" in reply.split(b"\r\n\r\n", 1)[0].lower()


def test_pipelined_requests_are_answered_in_order_and_free_their_slots(tmp_path: Path) -> None:
    with fake_stack(tmp_path, max_concurrent_requests=3) as stack:
        requests_ = b"".join(
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-{n}\r\n\r\n".encode()
            for n in range(3)
        )
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(requests_)
            reply = b""
            while reply.count(b"HTTP/1.1 200") < 3:
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
        ids = [
            line.split(b": ")[1]
            for line in reply.split(b"\r\n")
            if line.startswith(b"x-request-id")
        ]
        assert ids == [b"pipe-0", b"pipe-1", b"pipe-2"]
        metrics = stack.metrics()
        (gauge,) = [
            line
            for line in metrics.splitlines()
            if line.startswith("nitro_wallet_relay_http_requests_in_flight ")
        ]
        assert float(gauge.split()[1]) == 1.0  # the /metrics request itself, nothing leaked
