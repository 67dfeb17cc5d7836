"""The read-your-writes rule (clew.stages.applied) on an embedded log and a memory store moved
by hand: a position counts as applied only once validate has committed past it and the
profiles stage has applied everything ``events`` held by then, by its store or its group."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.raw_records import RawPosition
from clew.stages.applied import ProgressReader, Targets, UnknownPositionError, read_progress
from clew.store import MemoryProfileStore
from clew.topics import EVENTS_TOPIC, RAW_TOPIC

PARTITIONS = 2


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (RAW_TOPIC, EVENTS_TOPIC):
        log.create_topic(TopicSpec(topic, PARTITIONS))
    yield log
    log.close()


def stored(log: EmbeddedLog) -> RawPosition:
    """Append one request to ``raw``, as the collector does; its position."""
    [at] = log.append_sync(RAW_TOPIC, [Message(b"{}")])
    return RawPosition(at.partition, at.offset)


def validate(log: EmbeddedLog, events: int, key: bytes = b"ada") -> None:
    """What the validate stage does: consume ``raw`` and append its events with the commit."""
    consumer = log.consumer("validate", [RAW_TOPIC])
    try:
        while consumer.poll(500, timeout_s=0.2):
            out = [Message(b"{}", key=key) for _ in range(events)]
            consumer.commit(produce={EVENTS_TOPIC: out})
    finally:
        consumer.close()


def commit_profiles(log: EmbeddedLog, offsets: dict[int, int]) -> None:
    consumer = log.consumer("profiles", [EVENTS_TOPIC])
    try:
        consumer.commit({(EVENTS_TOPIC, p): o for p, o in offsets.items()})
    finally:
        consumer.close()


def applied(log: EmbeddedLog, store: MemoryProfileStore, position: RawPosition) -> bool:
    _, done = ProgressReader(log, store).advance(position, None, time.monotonic())
    return done


def reached(log: EmbeddedLog, store: MemoryProfileStore, targets: Targets) -> bool:
    _, done = ProgressReader(log, store).advance(RawPosition(0, 0), targets, time.monotonic())
    return done


def test_not_applied_before_validate_commits(log: EmbeddedLog) -> None:
    store = MemoryProfileStore()
    position = stored(log)
    assert not read_progress(log, store).validated_past(position)


def test_validated_then_applied_by_the_store_offsets(log: EmbeddedLog) -> None:
    store = MemoryProfileStore()
    position = stored(log)
    validate(log, events=3)
    look = read_progress(log, store)
    assert look.validated_past(position)
    targets = look.events_end
    assert sum(targets.values()) == 3
    assert not reached(log, store, targets), "the profiles stage has not run"
    [(p, end)] = [(p, e) for p, e in targets.items() if e]
    store.save_offsets("profiles", {(EVENTS_TOPIC, p): end - 2})
    assert not reached(log, store, targets)
    store.save_offsets("profiles", {(EVENTS_TOPIC, p): end - 1})
    assert reached(log, store, targets)


def test_the_group_commit_counts_too(log: EmbeddedLog) -> None:
    """A record set aside, or a Kafka transaction marker after the last record, moves the
    group's commit past what the store recorded as applied."""
    store = MemoryProfileStore()
    position = stored(log)
    validate(log, events=1)
    targets = read_progress(log, store).events_end
    [(p, end)] = [(p, e) for p, e in targets.items() if e]
    store.save_offsets("profiles", {(EVENTS_TOPIC, p): end - 2})
    commit_profiles(log, {p: end})
    assert applied(log, store, position)


def test_a_request_that_became_no_event_needs_only_validate(log: EmbeddedLog) -> None:
    """Rejected or duplicate: validate wrote nothing to ``events``."""
    store = MemoryProfileStore()
    position = stored(log)
    validate(log, events=0)
    assert applied(log, store, position)


def test_later_events_keep_a_reader_waiting_only_for_what_was_there(log: EmbeddedLog) -> None:
    """The targets are the ends read when validate was seen past the position: events
    validated later do not move them."""
    store = MemoryProfileStore()
    position = stored(log)
    validate(log, events=1)
    targets = read_progress(log, store).events_end
    stored(log)
    validate(log, events=1, key=b"bob")
    commit_profiles(log, dict(targets))
    assert reached(log, store, targets)
    assert not reached(log, store, read_progress(log, store).events_end)
    assert applied(log, store, position) is False, "its targets, read now, hold Bob's event"


def test_a_gap_without_a_record_is_nothing_to_wait_for(log: EmbeddedLog) -> None:
    """Below the end there may be offsets no consumer is given (a Kafka commit marker, a
    record erased since): the gap is read, not waited for."""
    store = MemoryProfileStore()
    position = stored(log)
    validate(log, events=2)
    targets = read_progress(log, store).events_end
    [(p, end)] = [(p, e) for p, e in targets.items() if e]
    store.save_offsets("profiles", {(EVENTS_TOPIC, p): end - 2})
    assert not applied(log, store, position)
    log.delete_where(EVENTS_TOPIC, lambda r: r.offset == end - 1)
    assert applied(log, store, position)


def test_a_position_nobody_was_given_is_refused(log: EmbeddedLog) -> None:
    reader = ProgressReader(log, MemoryProfileStore())
    position = stored(log)
    reader.check(position)
    for wrong in (RawPosition(PARTITIONS, 0), RawPosition(position.partition, position.offset + 1)):
        with pytest.raises(UnknownPositionError, match="Clew-Position"):
            reader.check(wrong)


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        self.loads += 1
        time.sleep(0.02)  # a look that takes a while, so callers pile up behind it
        return super().load_offsets(group)


def test_readers_waiting_at_once_share_one_look(log: EmbeddedLog) -> None:
    store = CountingStore()
    reader = ProgressReader(log, store)
    begun = time.monotonic()
    threads = [threading.Thread(target=reader.look, args=(begun,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.loads == 1
    reader.look(time.monotonic())
    assert store.loads == 2, "a look begun before the asked time is not reused"


class StuckStore(MemoryProfileStore):
    """A store whose reads hang until released: a look that does not end."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        self.release.wait(10)
        return super().load_offsets(group)


def test_a_look_that_hangs_holds_one_reader_not_all(log: EmbeddedLog) -> None:
    store = StuckStore()
    reader = ProgressReader(log, store)
    position = stored(log)
    stuck = threading.Thread(target=reader.look, args=(time.monotonic(),))
    stuck.start()
    time.sleep(0.05)
    began = time.monotonic()
    assert reader.advance(position, None, time.monotonic(), patience_s=0.05) == (None, False)
    assert time.monotonic() - began < 1.0
    store.release.set()
    stuck.join()
