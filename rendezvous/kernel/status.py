"""The status endpoint of a synchronous service (model runner, decoy).

``GET /healthz`` answers 200 while the process runs, ``GET /ready`` 200 once it
has joined its consumer group (503 before), ``GET /metrics`` the Prometheus
metrics, ``GET /info`` a JSON description of the service. It runs on a daemon
thread, bound to loopback unless told otherwise.

Port 0 binds a free port; :func:`announce_port` tells it to whoever started the
process (the supervisor of ``rendezvous up`` and the tests): choosing a free port
and binding it in one step leaves no moment in which another process can take it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["StatusServer", "announce_port", "PORT_FILE_ENV"]

#: Set by a supervisor that started this process with port 0: where to write the port it bound.
PORT_FILE_ENV = "RENDEZVOUS_PORT_FILE"


def announce_port(port: int) -> None:
    """Write ``port`` to the file named by ``$RENDEZVOUS_PORT_FILE``, if set (whole, by a rename)."""
    path = os.environ.get(PORT_FILE_ENV)
    if not path:
        return
    partial = f"{path}.partial"
    with open(partial, "w") as out:
        out.write(str(port))
    os.replace(partial, path)


class StatusServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        info: Callable[[], dict[str, Any]] = dict,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry, self.ready, self.info = registry, ready, info
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> StatusServer:
        self._thread.start()
        announce_port(self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        status = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(status.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/ready":
                    ok = status.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                elif path == "/info":
                    self._send(200, json.dumps(status.info()).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /healthz, /ready, /metrics, /info\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes every few seconds are not news
                pass

        return Handler
