"""Runs stages, each in its own thread with its own consumer of the stage's group."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from clew.log.base import Consumer, Log
from clew.stages._counters import CounterStore
from clew.stages.base import Stage

logger = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 0.05
_RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 5.0)


class StageRunner:
    """Drives one stage: poll, handle, tick; on an error, logs it, rebuilds the consumer and
    resumes from the last commit (at-least-once; stages are idempotent)."""

    def __init__(
        self,
        log: Log,
        stage: Stage,
        max_records: int = 500,
        counters: CounterStore | None = None,
    ) -> None:
        self._log = log
        self._counters = counters
        self.stage = stage
        self._max_records = stage.max_poll_records or max_records
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"clew-stage-{stage.group}", daemon=True
        )
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            consumer = self._log.consumer(self.stage.group, list(self.stage.topics))
            try:
                self._loop(consumer)
                failures = 0
            except Exception as exc:
                self.errors += 1
                self.last_error = repr(exc)
                if self._counters is not None:
                    # Counted where `clew serve` can see it (/health, /metrics), even when
                    # this stage runs in a worker process.
                    self._counters.add(self.stage.group, Counter(stage_errors=1))
                logger.exception("stage %s failed; resuming from its last commit", self.stage.group)
                delay = _RETRY_BACKOFF_S[min(failures, len(_RETRY_BACKOFF_S) - 1)]
                failures += 1
                self._stop.wait(delay)
            finally:
                consumer.close()

    def _count_shredded(self, consumer: Consumer) -> None:
        """Records of erased people the consumer skipped (crypto-shredding on Kafka), counted
        where `clew serve` reads them for /metrics."""
        skipped = getattr(consumer, "shredded", 0)
        if skipped and self._counters is not None:
            consumer.shredded = 0  # type: ignore[attr-defined]
            self._counters.add(self.stage.group, Counter(shredded_records=skipped))

    def _loop(self, consumer: Consumer) -> None:
        stage = self.stage
        assignment = consumer.assignment()
        stage.on_assign(consumer, assignment)
        try:
            while not self._stop.is_set():
                records = consumer.poll(self._max_records, _POLL_TIMEOUT_S)
                # A rebalance happens inside a poll (Kafka). The stage hears of it before it
                # handles anything more, so that it never writes for a partition another
                # member now owns, and never reads a new partition with stale progress.
                current = consumer.assignment()
                if current != assignment:
                    assignment = current
                    stage.on_assign(consumer, assignment)
                    owned = set(assignment)
                    records = [r for r in records if (r.topic, r.partition) in owned]
                if records:
                    stage.handle(records, consumer)
                stage.tick(consumer)
                self._count_shredded(consumer)
        finally:
            if self._stop.is_set():
                stage.close(consumer)
