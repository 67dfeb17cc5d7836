"""Runs stages, each in its own thread with its own consumer of the stage's group."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from clew._errors import describe
from clew.log.base import Consumer, Log, Record, TopicPartition
from clew.stages._counters import CounterStore
from clew.stages.base import Stage
from clew.stages.memory import release_freed_memory
from clew.stages.setaside import TRANSIENT_ERRORS, StageLedger, dead_letter
from clew.store.base import StoreConflictError
from clew.topics import DLQ_TOPIC

logger = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 0.05
_RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 5.0)
# Failures of whole batches in a row before the runner looks for the record to blame.
BATCH_ATTEMPTS = 3
# Failures of one record handed alone before it is set aside.
RECORD_ATTEMPTS = 2
# The pause between the attempts of an isolation, which only a record's own fault prolongs.
_ISOLATION_BACKOFF_S = 0.05
# An isolation that finds no record to hand over for this long ends: the failure was not a
# record's (a timer in ``tick``, say).
_ISOLATION_IDLE_S = 1.0
_FORGET_S = 10.0
# How often the runner looks whether set-aside records end a partition, and how many
# offsets after the commit it inspects.
_TAIL_CHECK_S = 0.5
_TAIL_SPAN = 10_000
# How often, at most, the runner gives what its batches freed back to the system.
_RELEASE_EVERY_S = 1.0

# Counter names in the counter store, read by /health and /metrics.
STAGE_FAILURES = "stage_errors"
RECORDS_SET_ASIDE = "set_aside"
SHREDDED_RECORDS = "shredded_records"
# Attempts that met another writer's conflicting commit (expected with several writers on
# one store): counted apart from failures, logged at DEBUG, retried as any failure.
STAGE_CONFLICTS = "conflicts"


class StageRunner:
    """Drives one stage: poll, handle, tick; on an error, logs it, rebuilds the consumer and
    resumes from the last commit (at-least-once; stages are idempotent).

    Poison isolation: after :data:`BATCH_ATTEMPTS` failures in a row (other than
    :data:`~clew.stages.setaside.TRANSIENT_ERRORS`, which are retried until they pass), the
    runner hands the records after the last commit over in parts, each followed by
    ``Stage.settle``: the whole poll first, half the last failing part after each failure, down
    to single records. A record that fails alone :data:`RECORD_ATTEMPTS` times is set aside
    (:mod:`clew.stages.setaside`) and the stage goes on with the next one. A record of the
    ``dlq`` topic is never written back to it (that could fail the same way forever): it is
    logged, counted and skipped. Each part starts where the last durable commit left off, so
    no record is applied twice; setting aside is at-least-once (a crash between the ``dlq``
    append and the ledger sets the record aside once more after the restart).
    """

    def __init__(
        self,
        log: Log,
        stage: Stage,
        max_records: int = 500,
        counters: CounterStore | None = None,
        ledger: StageLedger | None = None,
    ) -> None:
        self._log = log
        self._counters = counters
        self._ledger = ledger
        self.stage = stage
        self._max_records = stage.max_poll_records or max_records
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"clew-stage-{stage.group}", daemon=True
        )
        self.errors = 0
        self.last_error: str | None = None
        self.set_aside: list[Record] = []
        self._skip = ledger.skipped(stage.group) if ledger is not None else set()
        self._failing = False
        # Isolation: the part size to hand over (None: not isolating), the part being handled,
        # and how often each single record failed alone.
        self._probe: int | None = None
        self._part: list[Record] = []
        self._record_failures: Counter[tuple[str, int, int]] = Counter()
        # Per partition, the last set-aside record that no later record of its partition has
        # followed yet: nothing the stage handles will commit past it, so the runner does.
        self._tail_skips: dict[TopicPartition, int] = {}
        self._tail_checked = 0.0
        self._released_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the stage to stop after its current batch, without waiting (see :meth:`stop`)."""
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the stage to stop after its current batch and wait up to ``timeout_s`` for
        it; a runner still busy then (a call to an unreachable service) is left to end with
        the process (its thread is a daemon): what it did not commit is processed again."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "stage %s did not stop within %g s; leaving what it did not commit to the next "
                "start",
                self.stage.group,
                timeout_s,
            )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = blamable = 0
        last_failure = 0.0
        while not self._stop.is_set():
            consumer: Consumer | None = None
            try:
                # Inside the try: joining the group fails too while the log is away, and the
                # stage must outlive that.
                consumer = self._log.consumer(self.stage.group, list(self.stage.topics))
                self._loop(consumer)
            except Exception as exc:
                transient = isinstance(exc, TRANSIENT_ERRORS)
                self._failed(exc)
                # Failures count as "in a row" while they come closer together than this, even
                # if a batch without the bad record passed in between.
                if time.monotonic() - last_failure > _FORGET_S:
                    failures = blamable = 0
                last_failure = time.monotonic()
                failures += 1
                if not transient:
                    blamable += 1
                if self._probe is not None:
                    self._narrow(exc, transient)
                    delay = _ISOLATION_BACKOFF_S
                else:
                    delay = _RETRY_BACKOFF_S[min(failures - 1, len(_RETRY_BACKOFF_S) - 1)]
                    if blamable >= BATCH_ATTEMPTS:
                        self._probe = self._max_records
                        logger.warning(
                            "stage %s failed %d times in a row; looking for the record to "
                            "set aside",
                            self.stage.group,
                            blamable,
                        )
                self._stop.wait(delay)
            finally:
                self._part = []
                if consumer is not None:
                    self._close(consumer)

    def _close(self, consumer: Consumer) -> None:
        """Close a consumer being replaced; one that cannot leave its group cleanly (the log
        is away) is dropped all the same: the group replaces the member after its session
        timeout."""
        try:
            consumer.close()
        except Exception as exc:
            logger.warning("stage %s: closing its consumer failed: %s", self.stage.group, exc)

    def _failed(self, exc: Exception) -> None:
        group = self.stage.group
        if isinstance(exc, StoreConflictError):
            if self._counters is not None:
                self._counters.add(group, Counter({STAGE_CONFLICTS: 1}))
            logger.debug("stage %s met a concurrent write (%s); running it again", group, exc)
            return
        self.errors += 1
        self.last_error = repr(exc)
        if self._counters is not None:
            # Counted where `clew serve` can see it (/health, /metrics), even when this stage
            # runs in a worker process.
            self._counters.add(group, Counter({STAGE_FAILURES: 1}))
        if self._ledger is not None:
            self._ledger.failing(group, describe(exc))
        self._failing = True
        logger.exception("stage %s failed; resuming from its last commit", group)

    def _narrow(self, exc: Exception, transient: bool) -> None:
        """After a failure while isolating: halve the part, or blame its single record."""
        part = self._part
        if len(part) > 1:
            self._probe = max(1, len(part) // 2)
        elif len(part) == 1 and not transient:
            rec = part[0]
            key = (rec.topic, rec.partition, rec.offset)
            self._record_failures[key] += 1
            if self._record_failures[key] >= RECORD_ATTEMPTS:
                del self._record_failures[key]
                self._set_aside(rec, describe(exc))

    def _set_aside(self, rec: Record, error: str) -> None:
        group = self.stage.group
        where = f"{rec.topic}/{rec.partition}@{rec.offset}"
        if rec.topic == DLQ_TOPIC:
            logger.error(
                "stage %s cannot process dead letter %s (%s); skipping it: it is not written "
                "to the dlq again, so it stays only in the dlq topic until log retention",
                group,
                where,
                error,
            )
        else:
            self._log.append_sync(DLQ_TOPIC, [dead_letter(group, rec, error)])
            logger.error("stage %s set record %s aside to the dlq: %s", group, where, error)
        if self._ledger is not None:
            self._ledger.set_aside(group, rec, error)
        if self._counters is not None:
            self._counters.add(group, Counter({RECORDS_SET_ASIDE: 1}))
        self._skip.add((rec.topic, rec.partition, rec.offset))
        self.set_aside.append(rec)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            if self._ledger is not None:
                self._ledger.recovered(self.stage.group)

    def _count_shredded(self, consumer: Consumer) -> None:
        """Records of erased people the consumer skipped (crypto-shredding on Kafka), counted
        where `clew serve` reads them for /metrics."""
        skipped = consumer.shredded
        if skipped and self._counters is not None:
            consumer.shredded = 0
            self._counters.add(self.stage.group, Counter({SHREDDED_RECORDS: skipped}))

    def _loop(self, consumer: Consumer) -> None:
        stage = self.stage
        assignment = consumer.assignment()
        stage.on_assign(consumer, assignment)
        owned = set(assignment)
        idle_since = time.monotonic()
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
                # Filtered even when the assignment looks unchanged: a partition gained and
                # lost again since the last look (two rebalances) leaves polled records of a
                # partition another member owns.
                records = [r for r in records if (r.topic, r.partition) in owned]
                if self._skip:
                    records = self._without_skipped(records)
                if self._tail_skips:
                    self._commit_past_tail_skips(consumer, owned)
                if self._probe is not None:
                    if records:
                        self._isolate(records, consumer)
                    elif time.monotonic() - idle_since < _ISOLATION_IDLE_S:
                        continue
                    self._probe = None
                elif records:
                    stage.handle(records, consumer)
                    self._release_memory()
                stage.tick(consumer)
                if records or time.monotonic() - idle_since >= _ISOLATION_IDLE_S:
                    self._recovered()
                self._count_shredded(consumer)
        finally:
            if self._stop.is_set():
                stage.close(consumer)

    def _release_memory(self) -> None:
        """After a batch, at most every :data:`_RELEASE_EVERY_S`: a worker's resident memory
        then follows what its batches hold, not the most they ever held
        (:mod:`clew.stages.memory`)."""
        now = time.monotonic()
        if now - self._released_at >= _RELEASE_EVERY_S:
            self._released_at = now
            release_freed_memory()

    def _without_skipped(self, records: list[Record]) -> list[Record]:
        """``records`` without those set aside, noting a set-aside record that ends what was
        polled of its partition."""
        kept: list[Record] = []
        for r in records:
            tp = (r.topic, r.partition)
            if (r.topic, r.partition, r.offset) in self._skip:
                if r.offset > self._tail_skips.get(tp, -1):
                    self._tail_skips[tp] = r.offset
            else:
                kept.append(r)
                if r.offset > self._tail_skips.get(tp, r.offset):
                    # The stage commits past this record, and so past the skipped ones.
                    del self._tail_skips[tp]
        return kept

    def _commit_past_tail_skips(self, consumer: Consumer, owned: set[TopicPartition]) -> None:
        """Commit past set-aside records at the end of their partitions, once the stage has
        committed everything before them; otherwise the group would show them as lag until
        the next record of the partition arrives. Checked at most every half second."""
        now = time.monotonic()
        if now - self._tail_checked < _TAIL_CHECK_S:
            return
        self._tail_checked = now
        for topic in {tp[0] for tp in self._tail_skips}:
            committed = self._log.committed(self.stage.group, topic)
            for tp, last in list(self._tail_skips.items()):
                if tp[0] != topic:
                    continue
                done = committed.get(tp[1], 0)
                if done > last or tp not in owned:
                    del self._tail_skips[tp]
                elif done + _TAIL_SPAN > last and all(
                    (topic, tp[1], o) in self._skip for o in range(done, last + 1)
                ):
                    # Everything from the commit on is set aside: nothing is left to lose.
                    consumer.commit({tp: last + 1})
                    del self._tail_skips[tp]

    def _isolate(self, records: list[Record], consumer: Consumer) -> None:
        """Hand ``records`` over in parts of the probe size, each made durable before the
        next; raises what a part raised (``_part`` says which)."""
        size = self._probe or len(records)
        for start in range(0, len(records), size):
            if self._stop.is_set():
                return
            self._part = records[start : start + size]
            self.stage.handle(self._part, consumer)
            self.stage.settle(consumer)
        self._part = []
        self._probe = None
        logger.info("stage %s: isolation over; back to whole batches", self.stage.group)
