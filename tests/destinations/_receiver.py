"""A webhook receiver for the destination tests: a threaded HTTP server on a loopback port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from clew.background import free_port


@dataclass
class Received:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def delivery(self) -> str:
        return self.headers["x-clew-delivery"]

    @property
    def batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = json.loads(self.body)["batch"]
        return batch


@dataclass
class Receiver:
    """A webhook receiver on a loopback port. Answers each POST with the next scripted
    (status, headers), then 200; with ``hang_s`` it holds each request that long (or until
    :meth:`release`). It can be stopped and started again on the same port."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    hang_s: float = 0.0
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hang_s:
                    receiver._released.wait(receiver.hang_s)
                with receiver._lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.requests.append(
                        Received(
                            status,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        self._released.set()

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.accepted() for e in r.batch]
