"""What ``/health`` says of a stage (``clew.stages.health``): a concurrent write another
worker won is counted as a conflict, logged at DEBUG and is no failure; a stage with records
waiting and no commit for ``stalled_after_s`` is ``stalled``; failures are given for the last
five minutes beside the totals."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import wait_for
from clew.collector.metrics import render
from clew.log.base import Consumer, Log, Message, Record, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.server_metrics import stage_counter_families
from clew.stages._counters import CounterStore
from clew.stages.base import Stage
from clew.stages.health import RATE_WINDOW_S, StageWatch, overall
from clew.stages.runner import STAGE_CONFLICTS, STAGE_FAILURES, StageRunner
from clew.stages.setaside import StageLedger
from clew.store.base import StoreConflictError
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC


class _Contested(Stage):
    """Loses a race to another writer on its first ``conflicts`` batches, then commits."""

    group = "profiles"
    topics = (EVENTS_TOPIC,)

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.done: list[bytes] = []

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise StoreConflictError("another writer changed profile p1; nothing was written")
        consumer.commit({(r.topic, r.partition): r.offset + 1 for r in records})
        self.done.extend(r.value for r in records)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (EVENTS_TOPIC, CHANGES_TOPIC):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[CounterStore, StageLedger]]:
    counters = CounterStore(tmp_path / "state.db")
    ledger = StageLedger(tmp_path / "state.db")
    yield counters, ledger
    counters.close()
    ledger.close()


def test_a_conflict_is_counted_apart_logged_at_debug_and_is_no_failure(
    log: Log, stores: tuple[CounterStore, StageLedger], caplog: pytest.LogCaptureFixture
) -> None:
    counters, ledger = stores
    log.append_sync(EVENTS_TOPIC, [Message(b"e%d" % i, key=b"k%d" % i) for i in range(4)])
    stage = _Contested(conflicts=2)
    runner = StageRunner(log, stage, 50, counters, ledger)
    caplog.set_level(logging.DEBUG, logger="clew.stages.runner")
    runner.start()
    try:
        wait_for(lambda: len(stage.done) == 4)
    finally:
        runner.stop()
    counts = counters.read("profiles")
    assert counts[STAGE_CONFLICTS] == 2
    assert counts[STAGE_FAILURES] == 0
    conflict_logs = [r for r in caplog.records if "concurrent write" in r.getMessage()]
    assert [r.levelno for r in conflict_logs] == [logging.DEBUG, logging.DEBUG]
    assert all(r.exc_info is None for r in conflict_logs)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = render(stage_counter_families(counters, ["profiles"]))
    assert 'clew_stage_conflicts_total{stage="profiles"} 2' in metrics
    assert 'clew_stage_failures_total{stage="profiles"} 0' in metrics
    watch = StageWatch(log, counters, ledger, ["profiles"], stalled_after_s=60)
    watch.sample("profiles")
    health = watch.stages({"profiles": True})["profiles"]
    assert health["status"] == "ok"
    assert (health["errors"], health["conflicts_5m"]) == (0, 0)


def test_a_stage_with_records_waiting_and_no_commit_is_stalled_until_it_commits(
    log: Log, stores: tuple[CounterStore, StageLedger]
) -> None:
    counters, ledger = stores
    watch = StageWatch(log, counters, ledger, ["profiles-lake"], stalled_after_s=30)
    watch.sample("profiles-lake", now=1000.0)
    assert watch.stages({"profiles-lake": True})["profiles-lake"]["lag"] == 0

    log.append_sync(CHANGES_TOPIC, [Message(b"c1", key=b"p1"), Message(b"c2", key=b"p2")])
    watch.sample("profiles-lake", now=1010.0)
    waiting = watch.stages({"profiles-lake": True})["profiles-lake"]
    assert (waiting["status"], waiting["lag"]) == ("ok", 2)  # not yet 30 s without a commit

    watch.sample("profiles-lake", now=1045.0)
    stalled = watch.stages({"profiles-lake": True})["profiles-lake"]
    assert stalled["status"] == "stalled"
    assert "2 record(s) waiting and no commit for 45 s" in stalled["reason"]
    ok, status = overall({"profiles-lake": stalled}, {})
    assert (ok, status) == (True, "degraded")

    consumer = log.consumer("profiles-lake", [CHANGES_TOPIC])
    try:
        records = consumer.poll(10, 1.0)
        consumer.commit({(r.topic, r.partition): r.offset + 1 for r in records})
    finally:
        consumer.close()
    watch.sample("profiles-lake", now=1050.0)
    caught_up = watch.stages({"profiles-lake": True})["profiles-lake"]
    assert (caught_up["status"], caught_up["lag"], caught_up["reason"]) == ("ok", 0, None)


def test_failures_are_given_for_the_last_five_minutes_beside_the_total(
    log: Log, stores: tuple[CounterStore, StageLedger]
) -> None:
    counters, ledger = stores
    watch = StageWatch(log, counters, ledger, ["profiles"], stalled_after_s=60)
    counters.add("profiles", Counter({STAGE_FAILURES: 5}))
    watch.sample("profiles", now=0.0)
    counters.add("profiles", Counter({STAGE_FAILURES: 2}))
    watch.sample("profiles", now=RATE_WINDOW_S + 10)
    entry = watch.stages({"profiles": True})["profiles"]
    assert (entry["errors"], entry["failures_5m"]) == (7, 2)


def test_an_unreachable_dependency_makes_the_status_degraded_and_a_dead_stage_down() -> None:
    up = {"alive": True, "status": "ok"}
    kafka_down = {"kafka": {"ok": False, "reason": "Connection refused"}}
    assert overall({"validate": up}, {"kafka": {"ok": True}}) == (True, "ok")
    assert overall({"validate": up}, kafka_down) == (True, "degraded")
    assert overall({"validate": {"alive": False, "status": "down"}}, kafka_down) == (False, "down")
