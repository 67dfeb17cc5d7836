"""Sampling ``/health`` in the background during a chaos test (tests/test_chaos*.py)."""

from __future__ import annotations

import threading
import time

import httpx


class HealthWatch:
    """Samples ``/health`` twice a second: (monotonic time, status, the dependencies it
    reports as not answering)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, str, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(0.5):
                try:
                    body = client.get(f"{self.url}/health").json()
                except (httpx.HTTPError, ValueError):
                    continue
                deps = body.get("dependencies", {})
                down = frozenset(name for name, d in deps.items() if not d.get("ok"))
                self.samples.append((time.monotonic(), str(body.get("status")), down))

    def named(self, dependency: str) -> bool:
        """Whether a sample reported ``degraded`` (or ``down``) naming ``dependency``."""
        return any(st != "ok" and dependency in down for _, st, down in self.samples)
