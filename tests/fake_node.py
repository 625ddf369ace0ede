"""A scriptable Ethereum JSON-RPC node over real HTTP, for the relay's upstream tests.

``FakeNode`` answers the calls the relay makes to fill and send a transaction
(``eth_chainId``, ``eth_feeHistory``, ``eth_maxPriorityFeePerGas``, ``eth_gasPrice``,
``eth_estimateGas``, ``eth_getTransactionCount``, ``eth_sendRawTransaction``) and
any other method from ``results``; single requests and batches; and records every
HTTP body it got. Each behaviour can be changed per test: an error for a method, a
hang, a dropped connection, a non-JSON or oversized body, an HTTP status. The
full-stack client suite runs against a real anvil instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_utils.crypto import keccak


@dataclass
class FakeNode:
    chain_id: int = 31337
    pending_count: int = 0
    #: next block's base fee; None: a node before London (no base fee)
    base_fee: int | None = 10**9
    priority_fee: int | None = 2 * 10**9
    gas_price: int = 5 * 10**9
    gas_estimate: int = 21000
    #: method -> JSON-RPC error object answered instead of a result
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: method -> result, for any other method
    results: dict[str, Any] = field(default_factory=dict)
    #: method -> "hang" | "drop" | "not-json" | "huge" | "http-503" | "wrong-hash"
    faults: dict[str, str] = field(default_factory=dict)
    bodies: list[Any] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    count_pending: bool = True

    def __post_init__(self) -> None:
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.bodies.append(body)
                items = body if isinstance(body, list) else [body]
                fault = next(
                    (node.faults[i["method"]] for i in items if i["method"] in node.faults), None
                )
                if fault == "hang":
                    time.sleep(3)
                if fault == "drop":
                    self.close_connection = True
                    return
                status, payload = 200, b""
                if fault == "not-json":
                    payload = b"<html>gateway</html>"
                elif fault == "huge":
                    payload = json.dumps(
                        {"jsonrpc": "2.0", "id": items[0]["id"], "result": "x" * (1 << 20)}
                    ).encode()
                elif fault == "http-503":
                    status, payload = 503, b"Service Unavailable"
                else:
                    answers = [node.answer(item, fault) for item in items]
                    payload = json.dumps(answers if isinstance(body, list) else answers[0]).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def methods(self) -> list[str]:
        """Every method the node was asked, in order."""
        return [i["method"] for b in self.bodies for i in (b if isinstance(b, list) else [b])]

    def answer(self, item: dict[str, Any], fault: str | None) -> dict[str, Any]:
        method, params = item["method"], item.get("params", [])
        if method in self.errors:
            return {"jsonrpc": "2.0", "id": item["id"], "error": self.errors[method]}
        result = self._result(method, params, fault)
        if isinstance(result, dict) and "error" in result and len(result) == 1:
            return {"jsonrpc": "2.0", "id": item["id"], **result}
        return {"jsonrpc": "2.0", "id": item["id"], "result": result}

    def _result(self, method: str, params: list[Any], fault: str | None) -> Any:
        if method == "eth_sendRawTransaction":
            return self._send_raw(params[0], fault)
        answers: dict[str, Callable[[], Any]] = {
            "eth_chainId": lambda: hex(self.chain_id),
            "eth_feeHistory": self._fee_history,
            "eth_maxPriorityFeePerGas": lambda: (
                _not_found(method) if self.priority_fee is None else hex(self.priority_fee)
            ),
            "eth_gasPrice": lambda: hex(self.gas_price),
            "eth_estimateGas": lambda: hex(self.gas_estimate),
            "eth_getTransactionCount": lambda: hex(self.pending_count),
        }
        if method in answers:
            return answers[method]()
        return self.results[method] if method in self.results else _not_found(method)

    def _fee_history(self) -> dict[str, Any]:
        base_fees = [] if self.base_fee is None else ["0x1", hex(self.base_fee)]
        return {"oldestBlock": "0x1", "baseFeePerGas": base_fees, "gasUsedRatio": [0.5]}

    def _send_raw(self, raw: str, fault: str | None) -> str:
        with self._lock:
            self.sent.append(raw)
            if self.count_pending:
                self.pending_count += 1
        if fault == "wrong-hash":
            return "0x" + "00" * 32
        return "0x" + keccak(bytes.fromhex(raw[2:])).hex()


def _not_found(method: str) -> dict[str, Any]:
    return {"error": {"code": -32601, "message": f"the method {method} does not exist"}}
