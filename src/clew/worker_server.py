"""The HTTP port of `clew worker` (``--http-port``, ``stages.worker_http_port``): ``/health``
and ``/metrics`` of the stages that worker runs, served by uvicorn with Clew's HTTP limits
from a thread of the worker, so that an operator (or a load balancer, or Prometheus) sees
each worker as it sees `clew serve` and `clew collector`.

``/health`` answers from what background threads sampled (each stage's progress, each
service's last probe) and never waits for a service; ``/metrics`` likewise reads the lag
from the last sample, and the counters from ``state.db``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import uvicorn
from starlette.requests import Request

from clew.api._auth import check_token, holds_scope
from clew.api.app import public_health
from clew.backends import dependencies
from clew.collector.app import Receive, Scope, Send
from clew.collector.metrics import dependency_family, render
from clew.dependencies import DependencyWatch
from clew.http_limits import uvicorn_config
from clew.server_metrics import (
    audience_families,
    lag_family,
    profiles_families,
    stage_counter_families,
    validate_families,
)
from clew.sources import METRICS, Catalog
from clew.stages.health import StageWatch, overall
from clew.stages.workers import RunningStages

logger = logging.getLogger(__name__)

_NOT_FOUND = msgspec.json.encode(
    {"code": "not_found", "message": "a worker serves /health and /metrics"}
)


class WorkerEndpoint:
    """``/health`` and ``/metrics`` of one running worker (``app``, an ASGI app)."""

    def __init__(self, running: RunningStages) -> None:
        self.running = running
        settings = running.settings
        self.groups = [r.stage.group for r in running.runners]
        self.dependencies = DependencyWatch(dependencies(settings, lake=running.uses_lake))
        self.watch = StageWatch(
            running.log,
            running.counters,
            running.ledger,
            self.groups,
            settings.stages.stalled_after_s,
        )
        # Opened only to check tokens, when they are required.
        self._catalog = Catalog.open(settings) if settings.metrics.require_token else None

    def start(self) -> None:
        self.dependencies.start()
        self.watch.start()

    def stop(self) -> None:
        self.dependencies.stop()
        self.watch.stop()
        if self._catalog is not None:
            self._catalog.close()

    def health(self) -> dict[str, Any]:
        """``ok`` while every stage of the worker runs; ``status`` and ``stages`` as in
        `clew serve`'s ``/health``; ``dependencies``: the services these stages need."""
        alive = {r.stage.group: r.alive for r in self.running.runners}
        stages = self.watch.stages(alive)
        deps = self.dependencies.state()
        ok, status = overall(stages, deps)
        return {
            "ok": ok,
            "status": status,
            "role": "worker",
            "stages": stages,
            "dependencies": deps,
        }

    def metrics_text(self) -> str:
        """The worker's stages' families: failures, records set aside, conflicts, consumer
        lag (from the last sample), and the validate and profiles stages' own counts when
        it runs them (counted in ``state.db``: sum workers of one stage on one machine
        once)."""
        counters = self.running.counters
        families = [*stage_counter_families(counters, self.groups)]
        if "validate" in self.groups:
            families += validate_families(counters.read("validate"))
        if "profiles" in self.groups:
            profiles = counters.read("profiles")
            families += [*profiles_families(profiles), *audience_families(profiles)]
        families.append(lag_family(self.watch.lag_by_partition()))
        families.append(dependency_family(self.dependencies.state()))
        return render(families)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        catalog = self._catalog
        if path == "/health":
            health = self.health()
            code = 200 if health["ok"] else 503
            if catalog is not None and not holds_scope(Request(scope), catalog, METRICS):
                health = public_health(health)
            await _respond(send, code, msgspec.json.encode(health), "application/json")
        elif path == "/metrics":
            if catalog is not None:
                refused = check_token(Request(scope), catalog, METRICS)
                if refused is not None:
                    await refused(scope, receive, send)
                    return
            body = self.metrics_text().encode()
            await _respond(send, 200, body, "text/plain; version=0.0.4")
        else:
            await _respond(send, 404, _NOT_FOUND, "application/json")


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_worker_http(port: int) -> Callable[[RunningStages], Callable[[], None]]:
    """For :func:`clew.stages.workers.run_worker`'s ``on_running``: serve the worker's
    :class:`WorkerEndpoint` on ``settings.host:port`` in a thread; the function it returns
    stops serving (within about a second)."""

    def start(running: RunningStages) -> Callable[[], None]:
        endpoint = WorkerEndpoint(running)
        endpoint.start()
        settings = running.settings
        config = uvicorn_config(endpoint.app, settings.host, port, settings.http)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="clew-worker-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        logger.info("health and metrics on http://%s:%d/health", settings.host, port)

        def stop() -> None:
            server.should_exit = True
            thread.join(2)
            endpoint.stop()

        return stop

    return start
