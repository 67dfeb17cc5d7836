"""Clew serving in a background thread of the calling process, on a free loopback port: the
demo runs it, and so do the tests that talk to a whole server over HTTP."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from clew.config import Settings
from clew.server import Clew, uvicorn_config


def free_port() -> int:
    """A TCP port of the loopback interface nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """Clew serving on a free loopback port in a background thread (demo, tests)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"port": settings.port or free_port()})
        self.clew = Clew(self.settings)
        self._server = uvicorn.Server(
            uvicorn_config(self.clew, self.settings.host, self.settings.port)
        )
        self._thread = threading.Thread(target=self._server.run, name="clew-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def __enter__(self) -> BackgroundServer:
        self.clew.start()
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"Clew did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.clew.stopping.set()
        self._server.should_exit = True
        self._thread.join(15)
        self.clew.stop()
