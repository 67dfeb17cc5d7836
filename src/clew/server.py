"""Assembles the embedded deployment: the log, the catalog, every stage and the HTTP apps, in
one process (``clew serve``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
import uvloop
from starlette.applications import Starlette

from clew._datadir import DATA_DIR_MODE, lock_data_dir
from clew.api.app import build_api
from clew.audiences.repository import open_repository
from clew.backends import open_log, open_store
from clew.collector.app import Collector, Receive, Scope, Send
from clew.collector.metrics import collector_families, suppressed_family
from clew.config import Settings
from clew.destinations import metric_families as destination_metric_families
from clew.http_limits import StoppedBySignal, exit_on_signal
from clew.http_limits import uvicorn_config as limited_uvicorn_config
from clew.lake.lifecycle import LifecycleScheduler
from clew.lake.query import Lake, QueryLimits
from clew.monitor import read_status
from clew.privacy.requests import STATUSES
from clew.privacy.runner import PrivacyRunner
from clew.privacy.suppression import Suppression
from clew.sources import DEFAULT_SOURCE, Catalog, Source
from clew.stages._counters import CounterStore
from clew.stages.runner import RECORDS_SET_ASIDE, STAGE_FAILURES, StageRunner
from clew.stages.setaside import RECENT_S, StageLedger
from clew.stages.workers import SERVE_WORKERS, WorkerProcess, build_stage
from clew.topics import STAGE_NAMES, STAGE_TOPICS

logger = logging.getLogger(__name__)

_RETENTION_EVERY_S = 600
_SUPERVISE_EVERY_S = 0.5


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
        self.catalog = Catalog(settings.meta_path)
        self.default_source: Source = self.catalog.ensure_source(DEFAULT_SOURCE)
        self.lake = Lake(
            settings.lake_location,
            settings.cold_location,
            QueryLimits.from_settings(settings, settings.sql.max_concurrent),
        )
        self.lifecycle = LifecycleScheduler(settings, self.log)
        self._counters = CounterStore(settings.state_path)
        self._ledger = StageLedger(settings.state_path)
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
        self.suppression = Suppression.open(settings)
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
        self._api = build_api(
            self.catalog,
            self.lake,
            self.metrics_text,
            self.health,
            settings.registry_path,
            self.profiles,
            open_repository(settings),
            self.privacy.requests,
            self.privacy.wake,
            offload_profiles=self.profiles.reads_over_network,
            sql=settings.sql,
            metrics_token=settings.metrics.require_token,
        )
        self._stop = threading.Event()
        self._stopping = False
        self._scheduler = threading.Thread(
            target=self._schedule, name="clew-scheduler", daemon=True
        )
        self.started_at = time.time()

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

    def drained(self) -> bool:
        """True when every stage has committed everything in its topics."""
        return all(
            self.log.lag(group, topic).total == 0
            for group, topics in STAGE_TOPICS.items()
            for topic in topics
        )

    def stop(self, drain_timeout_s: float = 20.0) -> None:
        """Refuse new events, let the stages catch up (up to ``drain_timeout_s``, so the lake
        holds everything acknowledged), then stop them and close the stores. Whatever is not
        drained in time stays in the log and is processed on the next start."""
        self.collector.accepting = False
        self._stopping = True
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and all(self.stage_alive().values()):
            # A failing stage will not catch up; what it holds is processed after the restart.
            if self.drained() or any(t.failing for t in self._ledger.trouble().values()):
                break
            time.sleep(0.05)
        self._stop.set()
        self.privacy.stop()
        for r in self.runners:
            r.stop()
        for w in self.workers:
            w.stop()
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
        ``degraded`` (running, but a stage is failing now or set records aside within the
        last ``RECENT_S`` seconds; each such stage has a ``reason``) or ``down``. Per stage,
        ``errors`` counts its failures and ``set_aside`` the records it set aside, since the
        data dir was created. ``lifecycle`` is ``failing`` (which makes ``status``
        ``degraded``) from a lifecycle run that failed until one succeeds."""
        trouble = self._ledger.trouble()
        stages: dict[str, dict[str, Any]] = {}
        for name, alive in self.stage_alive().items():
            counts = self._counters.read(name)
            t = trouble.get(name)
            state, reason = "ok", None
            if not alive:
                state, reason = "down", "its process or thread is not running"
            elif t is not None and t.failing is not None:
                state, reason = "failing", t.failing
            elif t is not None and t.set_aside_recent:
                state = "set_aside"
                reason = (
                    f"set aside {t.set_aside_recent} record(s) in the last "
                    f"{RECENT_S / 60:g} minutes (`clew dlq list --reason stage_failure`); "
                    f"last: {t.last_set_aside}"
                )
            stages[name] = {
                "alive": alive,
                "status": state,
                "reason": reason,
                "errors": counts[STAGE_FAILURES],
                "set_aside": counts[RECORDS_SET_ASIDE],
            }
        lc = self.lifecycle
        lifecycle = {
            "enabled": lc.enabled,
            "status": "ok" if lc.failing is None else "failing",
            "reason": lc.failing,
            "failed_runs": lc.runs["failed"],
        }
        ok = all(s["alive"] for s in stages.values())
        degraded = lc.failing is not None or any(s["status"] != "ok" for s in stages.values())
        status = "down" if not ok else "degraded" if degraded else "ok"
        return {"ok": ok, "status": status, "stages": stages, "lifecycle": lifecycle}

    def metrics_text(self) -> str:
        lines: list[str] = []

        def metric(
            name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]
        ) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            # A sample's "labels" may also be a suffix such as "_sum" (summaries).
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        c = self.collector.counters
        v = self._counters.read("validate")
        for family in (
            *collector_families(c),
            suppressed_family(
                [
                    ('{stage="collector"}', c["events_suppressed"]),
                    ('{stage="validate"}', v["suppressed"]),
                ]
            ),
        ):
            metric(*family)
        requests = self.privacy.requests.counts()
        metric(
            "clew_privacy_requests",
            "gauge",
            "Data-subject requests, by status",
            [(f'{{status="{s}"}}', requests[s]) for s in STATUSES],
        )
        suppressed = self.privacy.suppressions.counts()
        metric(
            "clew_suppressed_identifiers",
            "gauge",
            "Identifiers on the suppression list (temporary: held by a running deletion)",
            [(f'{{kind="{k}"}}', suppressed[k]) for k in ("permanent", "temporary")],
        )
        outcomes = ("events", "duplicates", "violations", "omitted_properties")
        metric(
            "clew_validate_events_total",
            "counter",
            "Events routed by the validate stage, by outcome",
            [(f'{{outcome="{k}"}}', v[k]) for k in outcomes if k in v]
            + [(f'{{outcome="{k}"}}', n) for k, n in sorted(v.items()) if k.startswith("dlq_")],
        )
        metric(
            "clew_rejected_events_total",
            "counter",
            "Events sent to the dead-letter queue, by reason",
            [
                (f'{{reason="{k.removeprefix("dlq_")}"}}', n)
                for k, n in sorted(v.items())
                if k.startswith("dlq_")
            ],
        )
        metric(
            "clew_validate_batch_seconds",
            "summary",
            "Time the validate stage spends per polled batch",
            [("_sum", v["validate_us"] / 1e6), ("_count", v["validate_batches"])],
        )
        pr = self._counters.read("profiles")
        outcomes = ("applied", "already_applied", "unresolved", "undecodable")
        metric(
            "clew_profiles_events_total",
            "counter",
            "Events read by the profiles stage, by outcome",
            [(f'{{outcome="{k}"}}', pr[k]) for k in outcomes],
        )
        metric(
            "clew_profiles_merges_total",
            "counter",
            "Profiles merged into another by identity resolution",
            [("", pr["merges"])],
        )
        metric(
            "clew_profiles_dropped_identifiers_total",
            "counter",
            "Identifiers an event carried that a rule kept out of its profile",
            [("", pr["dropped_identifiers"])],
        )
        metric(
            "clew_profiles_repairs_total",
            "counter",
            "Contested components re-derived in event-time order after an event arrived late",
            [("", pr["repairs"])],
        )
        metric(
            "clew_profiles_repairs_skipped_total",
            "counter",
            "Contested components left in arrival order (a history at its cap, or too large)",
            [("", pr["repairs_skipped"])],
        )
        metric(
            "clew_audience_changes_total",
            "counter",
            "Audience and computed-trait change records the profiles stage announced",
            [("", pr["audience_changes"])],
        )
        metric(
            "clew_audience_timers_fired_total",
            "counter",
            "Per-profile timers that fired (a window moved, a funnel matured)",
            [("", pr["audience_timers_fired"])],
        )
        metric(
            "clew_audience_backfilled_events_total",
            "counter",
            "History events read to backfill new definitions",
            [("", pr["audience_backfilled_events"])],
        )
        metric(
            "clew_profiles_batch_seconds",
            "summary",
            "Time the profiles stage spends per polled batch",
            [("_sum", pr["batch_us"] / 1e6), ("_count", pr["batches"])],
        )
        dlq_end = self.log.end_offsets("dlq")
        dlq_start = self.log.start_offsets("dlq")
        metric(
            "clew_dlq_records",
            "gauge",
            "Records in the dead-letter topic (within log retention)",
            [("", sum(dlq_end[p] - dlq_start[p] for p in dlq_end))],
        )
        metric(
            "clew_shredded_records_total",
            "counter",
            "Kafka records a stage skipped because their person's data key was destroyed",
            [(f'{{stage="{g}"}}', self._counters.read(g)["shredded_records"]) for g in STAGE_NAMES],
        )
        failures = [
            (f'{{stage="{g}"}}', self._counters.read(g)[STAGE_FAILURES]) for g in STAGE_NAMES
        ]
        metric(
            "clew_stage_failures_total",
            "counter",
            "Attempts of a stage that failed (it resumes at its last commit)",
            failures,
        )
        metric(
            "clew_stage_errors_total",
            "counter",
            "The same count as clew_stage_failures_total, under its earlier name",
            failures,
        )
        metric(
            "clew_records_set_aside_total",
            "counter",
            "Records a stage could not process and set aside to the dlq",
            [(f'{{stage="{g}"}}', self._counters.read(g)[RECORDS_SET_ASIDE]) for g in STAGE_NAMES],
        )
        lag: list[tuple[str, float]] = []
        for group, topics in STAGE_TOPICS.items():
            for topic in topics:
                info = self.log.lag(group, topic)
                for p, end in sorted(info.end.items()):
                    behind = max(0, end - info.committed.get(p, 0))
                    lag.append((f'{{group="{group}",topic="{topic}",partition="{p}"}}', behind))
        metric("clew_consumer_lag", "gauge", "Records not yet committed by a stage", lag)
        families = read_status(self.settings.monitor_path).metric_families()
        for name, kind, help_text, samples in families:
            metric(name, kind, help_text, samples)
        for name, kind, help_text, samples in destination_metric_families(self.settings.data_dir):
            metric(name, kind, help_text, samples)
        for name, kind, help_text, samples in self.lifecycle.metric_families():
            metric(name, kind, help_text, samples)
        return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_config(clew: Clew, host: str, port: int) -> uvicorn.Config:
    return limited_uvicorn_config(clew.app, host, port, clew.settings.http)


def _log_access(config: uvicorn.Config) -> None:
    """Log every request uvicorn answers: ``uvicorn.access`` at INFO, through the root
    logger's handlers (so in the format the command line set up)."""
    config.access_log = True
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)
    access.handlers = list(logging.getLogger().handlers)


def serve(settings: Settings, on_ready: Any = None, access_log: bool = False) -> None:
    """Run Clew in the foreground until SIGINT or SIGTERM, then stop taking requests, let the
    stages drain and return (the caller exits 0). A second signal during the drain ends the
    process at once: SIGTERM with exit 143, SIGINT with KeyboardInterrupt; what was not
    drained stays in the log for the next start. ``access_log`` logs every HTTP request."""
    clew = Clew(settings, stage_mode="process")
    # Before the server runs and after it stopped, SIGTERM is a SystemExit, so the stages
    # are stopped below instead of the process dying on the spot.
    signal.signal(signal.SIGTERM, exit_on_signal)
    clew.start()
    config = uvicorn_config(clew, settings.host, settings.port)
    if access_log:
        _log_access(config)
    server = StoppedBySignal(config)
    try:
        if on_ready is not None:

            async def run() -> None:
                task = asyncio.create_task(server.serve())
                while not server.started and not task.done():
                    await asyncio.sleep(0.02)
                if server.started:
                    on_ready(clew)
                await task

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run())
        else:
            server.run()
    finally:
        clew.stop()


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
        self._server.should_exit = True
        self._thread.join(15)
        self.clew.stop()
