"""The collector role (`clew collector`): the Tracking API alone, with ``/health`` and
``/metrics`` of its own, and nothing else of Clew in the process.

It holds no lock on the data directory and no state of its own beyond what it reads (the
source catalog's write keys and the suppression list), so any number can run behind a load
balancer. Every acknowledged request is durable in the log's ``raw`` topic; the stages run
elsewhere (`clew worker`, or `clew serve`). On the embedded log, several collectors of one
machine append to the same SQLite file; collectors on other machines need the Kafka log.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request

from clew.api._auth import check_token, holds_scope
from clew.api.app import public_health
from clew.backends import dependencies, open_log
from clew.collector.app import Collector, Receive, Scope, Send
from clew.collector.metrics import (
    SUPPRESSED,
    collector_families,
    dependency_family,
    render,
    suppressed_family,
)
from clew.config import Settings
from clew.dependencies import DependencyWatch, check_reachable
from clew.http_limits import exit_on_signal, serve_until_signal, uvicorn_config
from clew.log.base import Log
from clew.privacy.suppression import Suppression
from clew.sources import DEFAULT_SOURCE, METRICS, Catalog, CatalogError, Source

logger = logging.getLogger(__name__)

_NOT_FOUND = msgspec.json.encode(
    {"code": "not_found", "message": "a collector serves /v1/* (Tracking API), /health, /metrics"}
)


class CollectorProcess:
    """What `clew collector` runs: ``app`` is the ASGI entry point; ``close`` stops taking
    events and releases the log (flushing appends in flight), the catalog and the list."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log: Log = open_log(settings)
        self._closers: list[Callable[[], None]] = [self.log.close]
        try:
            self.catalog = Catalog.open(settings)
            self._closers.append(self.catalog.close)
            self.default_source = _ensure_default_source(self.catalog)
            self.suppression = Suppression.open(settings, keep_on_outage=True)
            self._closers.append(self.suppression.close)
        except BaseException:
            self.close()
            raise
        self.collector = Collector(self.log, self.catalog, settings.limits, self.suppression)
        # Probed in the background, so that /health answers at once.
        self.dependencies = DependencyWatch(dependencies(settings, lake=False))
        self.dependencies.start()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if Collector.handles(path):
            await self.collector(scope, receive, send)
        elif path == "/health":
            health = self.health()
            if self.settings.metrics.require_token and not holds_scope(
                Request(scope), self.catalog, METRICS
            ):
                health = public_health(health)
            body = msgspec.json.encode(health)
            await _respond(send, 200 if self.collector.accepting else 503, body, "application/json")
        elif path == "/metrics":
            if self.settings.metrics.require_token:
                refused = check_token(Request(scope), self.catalog, METRICS)
                if refused is not None:
                    await refused(scope, receive, send)
                    return
            body = self.metrics_text().encode()
            await _respond(send, 200, body, "text/plain; version=0.0.4")
        else:
            await _respond(send, 404, _NOT_FOUND, "application/json")

    def health(self) -> dict[str, Any]:
        """``ok`` while the collector accepts events (false once it is shutting down);
        ``status`` ``degraded`` while a service in ``dependencies`` (the log's Kafka, the
        suppression list's Redis) does not answer. With ``metrics.require_token``, only ``ok``
        and ``status`` are shown without a ``metrics`` token (the rest names hosts)."""
        deps = self.dependencies.state()
        ok = self.collector.accepting
        degraded = any(not d["ok"] for d in deps.values())
        return {
            "ok": ok,
            "status": "down" if not ok else "degraded" if degraded else "ok",
            "role": "collector",
            "log": self.settings.log.backend,
            "dependencies": deps,
        }

    def metrics_text(self) -> str:
        """The collector's own counters in the Prometheus text format; every collector counts
        only its own requests, so sum them across instances."""
        c = self.collector.counters
        return render(
            [
                *collector_families(c),
                suppressed_family([('{stage="collector"}', c["events_suppressed"])]),
                (
                    "clew_collector_suppressed_events_total",
                    "counter",
                    f"The collector's sample of {SUPPRESSED}, under its earlier name",
                    [("", c["events_suppressed"])],
                ),
                dependency_family(self.dependencies.state()),
            ]
        )

    def close(self) -> None:
        """Refuse new events, then close what was opened (the log last but one: it waits for
        appends in flight). Safe to call twice."""
        if hasattr(self, "collector"):
            self.collector.accepting = False
        if hasattr(self, "dependencies"):
            self.dependencies.stop()
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()


def _ensure_default_source(catalog: Catalog) -> Source:
    # Collectors started together on a fresh data directory race to create it.
    try:
        return catalog.ensure_source(DEFAULT_SOURCE)
    except CatalogError:
        return catalog.ensure_source(DEFAULT_SOURCE)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_collector(
    settings: Settings, on_ready: Callable[[CollectorProcess], None] | None = None
) -> None:
    """Serve the Tracking API on ``settings.host:port`` until SIGINT or SIGTERM, then return
    (the caller exits 0); requests in flight are answered (their appends made durable)
    before the log closes. A signal before the server runs or during the close is a
    SystemExit with 128 + the signal's number. Raises
    :class:`~clew.dependencies.UnreachableError` within seconds when the log's Kafka or the
    suppression list's Redis does not answer at startup."""
    check_reachable(dependencies(settings, lake=False))
    process = CollectorProcess(settings)
    signal.signal(signal.SIGTERM, exit_on_signal)
    config = uvicorn_config(process.app, settings.host, settings.port, settings.http)
    try:
        serve_until_signal(config, None if on_ready is None else lambda: on_ready(process))
    finally:
        process.close()
