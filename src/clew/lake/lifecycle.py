"""The lifecycle scheduler of `clew serve`: runs :func:`clew.lake.tiers.run_lifecycle` every
``lifecycle.run_every_minutes`` in a background thread, keeps counters for /metrics and says
whether the last run failed, for /health."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from clew._errors import describe
from clew.clock import Clock, clock_for
from clew.config import Settings

if TYPE_CHECKING:
    from clew.log.base import Log

logger = logging.getLogger(__name__)

MetricFamily = tuple[str, str, str, list[tuple[str, float]]]


class LifecycleScheduler:
    """``start`` launches the thread (nothing when ``run_every_minutes`` is 0); the first run
    comes one interval after the start, so a restart loop never piles up runs. ``stop`` waits
    up to ``timeout_s`` for a run in progress; a run cut short by the process exiting, or one
    that fails, is finished by the next (runs are crash-safe). Failures are logged and
    counted, and never stop the thread: the next run comes on time. A run fails when it
    raises or when one of its tables fails (the other tables still ran); :attr:`failing`
    holds why until a run succeeds."""

    def __init__(self, settings: Settings, log: Log, clock: Clock | None = None) -> None:
        self._settings = settings
        self._log = log
        self._clock = clock or clock_for(settings.clock, settings.data_dir)
        self._interval_s = settings.lifecycle.run_every_minutes * 60
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clew-lifecycle", daemon=True)
        self._lock = threading.Lock()
        self.runs = {"ok": 0, "failed": 0, "busy": 0}
        self.rows_moved = 0
        self.rows_purged = 0
        self.last_run_seconds = 0.0
        self.last_run_at = 0.0
        self.table_failures: dict[str, int] = {}
        # Why the last run failed (None: it did not, or no run yet), and since when (wall
        # clock) runs have been failing.
        self.failing: str | None = None
        self.failing_since: float | None = None

    @property
    def enabled(self) -> bool:
        return self._interval_s > 0

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def run_once(self) -> None:
        """One lifecycle run now, on the calling thread; the outcome goes to the counters."""
        from clew.lake.tiers import LifecycleBusyError, run_lifecycle

        try:
            report = run_lifecycle(self._settings, self._clock.now_ms(), log=self._log)
        except LifecycleBusyError as e:
            logger.info("lifecycle run skipped: %s", e)
            with self._lock:
                self.runs["busy"] += 1
            return
        except Exception as exc:
            logger.exception("lifecycle run failed; the next run resumes its work")
            self._count("failed", describe(exc))
            return
        failures = report.failures
        with self._lock:
            self.rows_moved += report.rows_moved
            self.rows_purged += report.rows_purged
            for table in failures:
                self.table_failures[table] = self.table_failures.get(table, 0) + 1
        if failures:
            logger.error("%s; the next run resumes the failed tables", report.summary())
            self._count("failed", "; ".join(f"{t}: {e}" for t, e in sorted(failures.items())))
            return
        logger.info("%s", report.summary())
        with self._lock:
            self.runs["ok"] += 1
            self.last_run_seconds = report.seconds
            self.last_run_at = time.time()
            self.failing = self.failing_since = None

    def _count(self, outcome: str, error: str) -> None:
        with self._lock:
            self.runs[outcome] += 1
            if self.failing_since is None:
                self.failing_since = time.time()
            self.failing = error

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.run_once()

    def metric_families(self) -> list[MetricFamily]:
        """(name, type, help, [(labels, value)]) per lifecycle metric, since this start."""
        with self._lock:
            runs = dict(self.runs)
            table_failures = dict(self.table_failures)
            moved, purged = self.rows_moved, self.rows_purged
            last_s, last_at = self.last_run_seconds, self.last_run_at
        return [
            (
                "clew_lifecycle_runs_total",
                "counter",
                "Lifecycle runs by outcome (busy: another run held the lock)",
                [(f'{{outcome="{k}"}}', v) for k, v in runs.items()],
            ),
            (
                "clew_lifecycle_table_failures_total",
                "counter",
                "Tables a lifecycle run could not tier (the run went on with the others)",
                [(f'{{table="{t}"}}', n) for t, n in sorted(table_failures.items())],
            ),
            (
                "clew_lifecycle_rows_moved_total",
                "counter",
                "Lake rows moved from the warm to the cold tier",
                [("", moved)],
            ),
            (
                "clew_lifecycle_rows_purged_total",
                "counter",
                "Cold rows purged after lifecycle.purge_after_days",
                [("", purged)],
            ),
            (
                "clew_lifecycle_last_run_seconds",
                "gauge",
                "Duration of the last successful lifecycle run",
                [("", last_s)],
            ),
            (
                "clew_lifecycle_last_run_timestamp_seconds",
                "gauge",
                "When the last successful lifecycle run finished (0: none yet)",
                [("", last_at)],
            ),
        ]
