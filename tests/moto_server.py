"""moto's server app (every AWS service it emulates) on 127.0.0.1:<free port>.

Requests run one at a time: moto's DynamoDB ``TransactWriteItems`` is not thread-safe
(it snapshots and, on cancellation, restores the whole table), as DynamoDB itself is
atomic per transaction; requests still arrive concurrently over the network.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server


class MotoServer:
    def __init__(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serialized(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, serialized, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
