"""Assembles the embedded deployment: the log, the catalog, every stage and the HTTP apps, in
one process (``clew serve``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette

from clew import server_metrics
from clew._datadir import DATA_DIR_MODE, lock_data_dir
from clew.api.app import build_api
from clew.audiences.repository import open_repository
from clew.backends import dependencies, open_log, open_store
from clew.collector.app import Collector, Receive, Scope, Send
from clew.config import Settings
from clew.console import ConsoleContext, console_routes
from clew.dependencies import DependencyWatch, check_reachable
from clew.destinations import Destinations
from clew.edge import edge_routes
from clew.http_limits import exit_on_signal, serve_until_signal
from clew.http_limits import uvicorn_config as limited_uvicorn_config
from clew.lake.lifecycle import LifecycleScheduler
from clew.lake.query import Lake, QueryLimits
from clew.privacy.runner import PrivacyRunner
from clew.privacy.suppression import Suppression
from clew.server_metrics import MetricSources
from clew.sources import DEFAULT_SOURCE, Catalog, Source
from clew.stages._counters import CounterStore
from clew.stages.health import StageWatch, overall
from clew.stages.memory import lean_server_process
from clew.stages.runner import StageRunner
from clew.stages.setaside import StageLedger
from clew.stages.workers import (
    SERVE_WORKERS,
    STOP_TIMEOUT_S,
    WorkerProcess,
    build_stage,
    stop_runners,
)
from clew.topics import STAGE_NAMES, STAGE_TOPICS

logger = logging.getLogger(__name__)

_RETENTION_EVERY_S = 600
_SUPERVISE_EVERY_S = 0.5
# How long `clew serve` lets the stages catch up on SIGTERM before stopping them.
_SERVE_DRAIN_S = 2.0


class Clew:
    """The whole embedded CDP. ``start`` runs the stages; ``app`` is the ASGI entry point;
    ``stop`` drains the stages (flushing the lake) and closes the log.

    ``stage_mode="process"`` (what `clew serve` uses) runs each stage in a supervised worker
    process; ``"thread"`` runs them in threads of this process (tests, the demo)."""

    def __init__(self, settings: Settings, stage_mode: str = "thread") -> None:
        if stage_mode not in ("thread", "process"):
            raise ValueError("stage_mode must be 'thread' or 'process'")
        self.settings = settings
        self.stage_mode = stage_mode
        settings.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        self._data_dir_lock = lock_data_dir(
            settings.data_dir, f"http://{settings.host}:{settings.port}"
        )
        self.log = open_log(settings)
        self.catalog = Catalog.open(settings)
        self.default_source: Source = self.catalog.ensure_source(DEFAULT_SOURCE)
        self.lake = Lake(
            settings.lake_location,
            settings.cold_location,
            QueryLimits.from_settings(settings, settings.sql.max_concurrent),
        )
        self.lifecycle = LifecycleScheduler(settings, self.log)
        self._counters = CounterStore(settings.state_path)
        self._ledger = StageLedger(settings.state_path)
        # What /health reports, sampled in the background so that it answers at once.
        self.dependencies = DependencyWatch(dependencies(settings))
        self._stage_watch = StageWatch(
            self.log,
            self._counters,
            self._ledger,
            STAGE_NAMES,
            settings.stages.stalled_after_s,
        )
        self.runners: list[StageRunner] = []
        self.workers: list[WorkerProcess] = []
        self._closers: list[Callable[[], None]] = []
        if stage_mode == "thread":
            for name in STAGE_NAMES:
                stage, closers = build_stage(name, settings)
                self.runners.append(
                    StageRunner(
                        self.log,
                        stage,
                        settings.stages.poll_max_records,
                        self._counters,
                        self._ledger,
                    )
                )
                self._closers.extend(closers)
        else:
            self.workers = [WorkerProcess(group, settings) for group in SERVE_WORKERS]
        self.suppression = Suppression.open(settings, keep_on_outage=True)
        self.collector = Collector(self.log, self.catalog, settings.limits, self.suppression)
        # The Profile API reads through its own handle: SQLite WAL readers never wait for the
        # profiles stage's write transactions, so reads on the event loop stay fast. A Redis
        # read is a network round trip, so with Redis they run in the thread pool instead
        # (the store's reads_over_network).
        self.profiles = open_store(settings)
        # Data-subject requests run in a thread of this process, with their own serving-store
        # handle (erasure writes; the Profile API's handle stays free for reads).
        self._privacy_store = open_store(settings)
        self.privacy = PrivacyRunner(settings, log=self.log, store=self._privacy_store)
        self.destinations = Destinations.open(settings)
        # Set as the HTTP server begins to stop, before it waits for open responses.
        self.stopping = threading.Event()
        self._api = self._build_api(settings)
        self._stop = threading.Event()
        self._stopping = False
        self._scheduler = threading.Thread(
            target=self._schedule, name="clew-scheduler", daemon=True
        )
        self.started_at = time.time()

    def _build_api(self, settings: Settings) -> Starlette:
        """The HTTP APIs, with the browser edge and the console mounted beside them."""
        audiences = open_repository(settings)
        console = ConsoleContext(
            settings=settings,
            catalog=self.catalog,
            lake=self.lake,
            log=self.log,
            profiles=self.profiles,
            audiences=audiences,
            destinations=self.destinations,
            privacy=self.privacy.requests,
            privacy_wake=self.privacy.wake,
            health=self.health,
            stopping=self.stopping,
        )
        return build_api(
            self.catalog,
            self.lake,
            self.metrics_text,
            self.health,
            settings,
            self.profiles,
            audiences,
            self.privacy.requests,
            self.privacy.wake,
            offload_profiles=self.profiles.reads_over_network,
            sql=settings.sql,
            metrics_token=settings.metrics.require_token,
            extra_routes=[*edge_routes(self.catalog, settings), *console_routes(console)],
            log=self.log,
        )

    @property
    def api(self) -> Starlette:
        """The HTTP APIs other than the Tracking API; its ``routes`` list every endpoint."""
        return self._api

    def stage_alive(self) -> dict[str, bool]:
        if self.stage_mode == "thread":
            return {r.stage.group: r.alive for r in self.runners}
        return {name: w.alive for w in self.workers for name in w.stages}

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and Collector.handles(scope["path"]):
            await self.collector(scope, receive, send)
        else:
            await self._api(scope, receive, send)

    def start(self) -> None:
        for r in self.runners:
            r.start()
        for w in self.workers:
            w.start()
        self._scheduler.start()
        self.lifecycle.start()
        self.privacy.start()
        self.dependencies.start()
        self._stage_watch.start()

    def drained(self) -> bool:
        """True when every stage has committed everything in its topics."""
        return all(
            self.log.lag(group, topic).total == 0
            for group, topics in STAGE_TOPICS.items()
            for topic in topics
        )

    def stop(self, drain_timeout_s: float = 20.0) -> None:
        """Refuse new events, let the stages catch up (up to ``drain_timeout_s``, so the lake
        holds everything acknowledged), then stop them (each finishes its batch, within
        :data:`~clew.stages.workers.STOP_TIMEOUT_S`) and close the stores. Whatever is not
        drained in time stays in the log and is processed on the next start."""
        self.collector.accepting = False
        self._stopping = True
        self.dependencies.stop()
        self._stage_watch.stop()
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and all(self.stage_alive().values()):
            # A failing stage will not catch up, nor any stage while a service it needs is
            # out of reach; what they hold is processed after the restart.
            if (
                self.drained()
                or self.dependencies.unreachable
                or any(t.failing for t in self._ledger.trouble().values())
            ):
                break
            time.sleep(0.05)
        self._stop.set()
        self.privacy.stop()
        for w in self.workers:
            w.request_stop()
        stop_runners(self.runners, STOP_TIMEOUT_S)
        stop_by = time.monotonic() + STOP_TIMEOUT_S + 1
        for w in self.workers:
            w.stop(max(0.5, stop_by - time.monotonic()))
        for close in self._closers:
            close()
        self.lifecycle.stop()
        self.log.close()
        self._counters.close()
        self._ledger.close()
        self.profiles.close()
        self._privacy_store.close()
        self.suppression.close()
        self.catalog.close()
        self.destinations.close()
        self._data_dir_lock.close()

    def _schedule(self) -> None:
        last_retention = time.monotonic()
        while not self._stop.wait(_SUPERVISE_EVERY_S):
            for w in self.workers:
                if not self._stopping:
                    w.restart_if_dead()
            if time.monotonic() - last_retention < _RETENTION_EVERY_S:
                continue
            last_retention = time.monotonic()
            try:
                removed = self.log.enforce_retention(time.time_ns() // 1_000_000)
                if removed:
                    logger.info("log retention removed %d records", removed)
                forgotten = self._ledger.forget_retired(self.log)
                if forgotten:
                    logger.info("forgot %d set-aside records the log no longer holds", forgotten)
            except Exception:
                logger.exception("log retention failed; will retry")

    def health(self) -> dict[str, Any]:
        """``ok`` when every stage is running (HTTP 503 otherwise). ``status`` is ``ok``,
        ``degraded`` (running, but a stage is failing, stalled or set records aside lately,
        a service in ``dependencies`` does not answer, or the lifecycle run fails) or
        ``down``. ``stages`` is :meth:`~clew.stages.health.StageWatch.stages`;
        ``dependencies`` the last probe of each service (:mod:`clew.dependencies`);
        ``lifecycle`` is ``failing`` from a lifecycle run that failed until one succeeds.
        Answers from what background threads sampled: it never waits for a service."""
        stages = self._stage_watch.stages(self.stage_alive())
        deps = self.dependencies.state()
        lc = self.lifecycle
        lifecycle = {
            "enabled": lc.enabled,
            "status": "ok" if lc.failing is None else "failing",
            "reason": lc.failing,
            "failed_runs": lc.runs["failed"],
        }
        ok, status = overall(stages, deps, degraded=lc.failing is not None)
        return {
            "ok": ok,
            "status": status,
            "role": "serve",
            "stages": stages,
            "dependencies": deps,
            "lifecycle": lifecycle,
        }

    def metrics_text(self) -> str:
        """``/metrics``: every family of this process in the Prometheus text format."""
        return server_metrics.metrics_text(
            MetricSources(
                collector=self.collector.counters,
                counters=self._counters,
                privacy=self.privacy,
                log=self.log,
                lifecycle=self.lifecycle,
                monitor_path=self.settings.monitor_path,
                outbox_path=self.settings.outbox_path,
                destinations=self.destinations,
                dependencies=self.dependencies.state(),
                # Live, unless a service is known to be away: then as last sampled, so that
                # the series stay and /metrics does not wait on Kafka (they vanished while a
                # broker was down).
                lag=(
                    self._stage_watch.lag_by_partition() if self.dependencies.unreachable else None
                ),
            )
        )


def uvicorn_config(clew: Clew, host: str, port: int) -> uvicorn.Config:
    return limited_uvicorn_config(clew.app, host, port, clew.settings.http)


def _log_access(config: uvicorn.Config) -> None:
    """Log every request uvicorn answers: ``uvicorn.access`` at INFO, through the root
    logger's handlers (so in the format the command line set up)."""
    config.access_log = True
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)
    access.handlers = list(logging.getLogger().handlers)


def serve(
    settings: Settings,
    on_ready: Callable[[Clew], None] | None = None,
    access_log: bool = False,
) -> None:
    """Run Clew in the foreground until SIGINT or SIGTERM, then stop taking requests, let the
    stages drain and return (the caller exits 0); raises
    :class:`~clew.dependencies.UnreachableError` within seconds when a service it needs does
    not answer at startup. A second signal during the drain ends the
    process at once: SIGTERM with exit 143, SIGINT with KeyboardInterrupt; what was not
    drained stays in the log for the next start. ``access_log`` logs every HTTP request."""
    check_reachable(dependencies(settings))
    lean_server_process()
    clew = Clew(settings, stage_mode="process")
    # Before the server runs and after it stopped, SIGTERM is a SystemExit, so the stages
    # are stopped below instead of the process dying on the spot.
    signal.signal(signal.SIGTERM, exit_on_signal)
    clew.start()
    config = uvicorn_config(clew, settings.host, settings.port)
    if access_log:
        _log_access(config)
    try:
        serve_until_signal(
            config, None if on_ready is None else lambda: on_ready(clew), clew.stopping.set
        )
    finally:
        # Bounded so that the whole of a SIGTERM takes under 10 s: the stages finish their
        # batches and commit, whatever waits behind them is processed after the restart.
        clew.stop(drain_timeout_s=_SERVE_DRAIN_S)
