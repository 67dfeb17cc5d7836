"""The log contract (``clew.log.base``), run against every backend in ``conftest.BACKENDS``.

Waits are bounded by deadlines rather than fixed sleeps, so a backend whose group
rebalances take seconds (Kafka) passes the same tests as the embedded one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future

import pytest

from clew.log.base import (
    Consumer,
    Log,
    LogClosedError,
    LogError,
    Message,
    Position,
    Record,
    TopicSpec,
    UnknownTopicError,
    partition_for,
)

OpenLog = Callable[[], Log]
NewTopic = Callable[..., str]
NewConsumer = Callable[..., Consumer]

WAIT_S = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def drain(consumer: Consumer, count: int, timeout_s: float = WAIT_S) -> list[Record]:
    """Polls until ``count`` records arrived (or the deadline passed); returns what arrived."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out.extend(consumer.poll(timeout_s=0.1))
    return out


def assert_quiet(consumer: Consumer) -> None:
    assert consumer.poll(timeout_s=0.2) == []


def settle(members: Iterable[Consumer], topic: str, partitions: int) -> None:
    """Waits until the members' assignments split ``topic`` exactly; the topic must be empty."""
    members = list(members)
    deadline = time.monotonic() + WAIT_S
    while True:
        owned = [tp for m in members for tp in m.assignment() if tp[0] == topic]
        if sorted(owned) == [(topic, p) for p in range(partitions)]:
            return
        assert time.monotonic() < deadline, f"assignments never settled: {owned}"
        for m in members:
            assert m.poll(timeout_s=0.05) == []


def read_all(log: Log, topic: str) -> list[Record]:
    out: list[Record] = []
    for partition in log.end_offsets(topic):
        offset = 0
        while batch := log.read(topic, partition, offset):
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


def positions(records: Iterable[Record]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


def key_for(partition: int, partitions: int) -> bytes:
    """A key that ``partition_for`` sends to ``partition``."""
    for i in range(10_000):
        key = b"key-%d" % i
        if partition_for(key, partitions) == partition:
            return key
    raise AssertionError("no key found")


def values(n: int, prefix: str = "v") -> list[Message]:
    return [Message(f"{prefix}{i}".encode()) for i in range(n)]


# -- topics and appends ---------------------------------------------------------------------


def test_append_returns_positions_in_order_with_contiguous_offsets(
    log: Log, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=3)
    sent: list[tuple[Position, Message]] = []
    for batch in range(4):
        messages = [Message(b"m%d-%d" % (batch, i), key=b"k%d" % i) for i in range(7)]
        result = log.append_sync(topic, messages)
        assert len(result) == len(messages)
        sent.extend(zip(result, messages, strict=True))

    by_partition: dict[int, list[int]] = defaultdict(list)
    for pos, _ in sent:
        by_partition[pos.partition].append(pos.offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    assert log.end_offsets(topic) == {p: len(by_partition[p]) for p in range(3)}
    for pos, message in sent:
        [record] = log.read(topic, pos.partition, pos.offset, max_records=1)
        assert (record.offset, record.key, record.value) == (pos.offset, message.key, message.value)


def test_records_with_the_same_key_share_a_partition_in_order(
    log: Log, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=4)
    keys = [b"user-%d" % i for i in range(6)]
    for round_ in range(5):
        log.append_sync(topic, [Message(b"%s:%d" % (k, round_), key=k) for k in keys])

    records = read_all(log, topic)
    for key in keys:
        mine = [r for r in records if r.key == key]
        assert {r.partition for r in mine} == {partition_for(key, 4)}
        assert [r.value for r in mine] == [b"%s:%d" % (key, i) for i in range(5)]


def test_keyless_records_spread_over_partitions(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=4)
    one_by_one = [log.append_sync(topic, [m])[0] for m in values(16)]
    batched = log.append_sync(topic, values(16))

    for result in (one_by_one, batched):
        assert {pos.partition for pos in result} == {0, 1, 2, 3}


def test_keys_headers_and_timestamps_round_trip(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic()
    headers = (("trace", b"\x00\xff\x01"), ("empty", b""), ("trace", b"second"))
    before = int(time.time() * 1000)
    log.append_sync(
        topic,
        [
            Message(b"stamped", key=b"k\x00", headers=headers, timestamp_ms=1_700_000_000_123),
            Message(b"", timestamp_ms=0),
            Message(b"now"),
        ],
    )
    after = int(time.time() * 1000)

    stamped, empty, now = log.read(topic, 0, 0)
    assert (stamped.key, stamped.value, stamped.headers) == (b"k\x00", b"stamped", headers)
    assert stamped.timestamp_ms == 1_700_000_000_123
    assert stamped.header("trace") == b"\x00\xff\x01"
    assert stamped.header("empty") == b""
    assert stamped.header("absent") is None
    assert (empty.key, empty.value, empty.headers, empty.timestamp_ms) == (None, b"", (), 0)
    assert before - 1 <= now.timestamp_ms <= after + 1


def test_append_to_unknown_topic_fails(log: Log) -> None:
    missing = unique("missing")
    with pytest.raises(UnknownTopicError) as raised:
        log.append_sync(missing, values(1))
    assert raised.value.topic == missing
    with pytest.raises(UnknownTopicError):
        log.append(missing, values(1)).result(timeout=WAIT_S)


def test_create_topic_is_idempotent_and_updates_retention(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=2)
    log.append_sync(topic, values(5))

    log.create_topic(TopicSpec(topic, 2))
    assert log.topics()[topic] == TopicSpec(topic, 2)
    assert sum(log.end_offsets(topic).values()) == 5

    log.create_topic(TopicSpec(topic, 2, retention_ms=60_000, retention_bytes=1 << 20))
    assert log.topics()[topic] == TopicSpec(topic, 2, 60_000, 1 << 20)
    assert sum(log.end_offsets(topic).values()) == 5


def test_create_topic_refuses_a_changed_partition_count(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=2)
    with pytest.raises(LogError, match="partitions"):
        log.create_topic(TopicSpec(topic, 3))
    assert log.topics()[topic].partitions == 2
    assert set(log.end_offsets(topic)) == {0, 1}


def test_create_topic_needs_a_partition(log: Log) -> None:
    with pytest.raises(LogError):
        log.create_topic(TopicSpec(unique("empty"), 0))


def test_closed_log_refuses_appends(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic()
    log.close()
    with pytest.raises(LogClosedError):
        log.append_sync(topic, values(1))


# -- consumer groups ------------------------------------------------------------------------


def test_consumer_reads_everything_from_the_start(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=3)
    sent = log.append_sync(topic, values(30))

    records = drain(new_consumer(group, [topic]), 30)

    assert len(records) == 30
    assert positions(records) == {(p.partition, p.offset) for p in sent}
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == sorted(offsets)


def test_new_consumer_resumes_after_the_commit(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=2)
    log.append_sync(topic, values(10, "old"))
    first = new_consumer(group, [topic])
    assert len(drain(first, 10)) == 10
    first.commit()
    first.close()

    log.append_sync(topic, values(6, "new"))
    records = drain(new_consumer(group, [topic]), 6)

    assert sorted(r.value for r in records) == sorted(m.value for m in values(6, "new"))


def test_uncommitted_records_are_redelivered(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic()
    log.append_sync(topic, values(10))
    first = new_consumer(group, [topic])
    assert len(drain(first, 10)) == 10
    first.commit({(topic, 0): 4})
    first.close()

    second = new_consumer(group, [topic])
    records = drain(second, 6)

    assert [r.offset for r in records] == [4, 5, 6, 7, 8, 9]
    assert_quiet(second)


def test_groups_are_independent(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=2)
    log.append_sync(topic, values(8))
    first = new_consumer(group, [topic])
    assert len(drain(first, 8)) == 8
    first.commit()

    other = unique("group")
    records = drain(new_consumer(other, [topic]), 8)

    assert len(records) == 8
    assert log.committed(group, topic) == log.end_offsets(topic)
    assert log.committed(other, topic) == {0: 0, 1: 0}


def test_group_members_split_partitions_and_take_over_on_close(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=4)
    leaving = new_consumer(group, [topic])
    staying = new_consumer(group, [topic])
    settle([leaving, staying], topic, 4)
    assert leaving.assignment() and staying.assignment()

    sent = log.append_sync(topic, values(20, "a"))
    got_leaving = drain(
        leaving, sum(1 for p in sent if (topic, p.partition) in leaving.assignment())
    )
    got_staying = drain(staying, 20 - len(got_leaving))
    assert {(topic, r.partition) for r in got_leaving} <= set(leaving.assignment())
    assert {(topic, r.partition) for r in got_staying} <= set(staying.assignment())
    assert positions(got_leaving) | positions(got_staying) == {
        (p.partition, p.offset) for p in sent
    }
    assert len(got_leaving) + len(got_staying) == 20
    leaving.commit()
    staying.commit()

    later = log.append_sync(topic, values(20, "b"))
    # Read but not committed: after the handover these must be delivered again.
    mine = sum(1 for p in later if (topic, p.partition) in leaving.assignment())
    assert len(drain(leaving, mine)) == mine
    leaving.close()

    records = drain(staying, 20)
    assert sorted(staying.assignment()) == [(topic, p) for p in range(4)]
    assert sorted(positions(records)) == sorted((p.partition, p.offset) for p in later)
    assert_quiet(staying)


def test_commit_with_produce_appends_and_commits_together(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    source, sink = new_topic(partitions=2), new_topic(partitions=2)
    log.append_sync(source, values(6))
    consumer = new_consumer(group, [source])
    records = drain(consumer, 6)

    derived = [Message(b"derived-" + r.value, key=r.value) for r in records]
    consumer.commit(produce={sink: derived})

    assert log.committed(group, source) == log.end_offsets(source)
    assert sorted(r.value for r in read_all(log, sink)) == sorted(m.value for m in derived)


def test_failed_commit_with_produce_changes_nothing(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    source, sink = new_topic(), new_topic()
    log.append_sync(source, values(3))
    consumer = new_consumer(group, [source])
    assert len(drain(consumer, 3)) == 3

    with pytest.raises(LogError):
        consumer.commit(produce={sink: values(2), unique("missing"): values(1)})

    assert log.committed(group, source) == {0: 0}
    assert log.end_offsets(sink) == {0: 0}


def test_seek_moves_the_next_read(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic()
    log.append_sync(topic, values(10))
    consumer = new_consumer(group, [topic])
    assert len(drain(consumer, 10)) == 10

    consumer.seek(topic, 0, 3)
    assert [r.offset for r in drain(consumer, 7)] == list(range(3, 10))
    consumer.seek(topic, 0, 8)
    assert [r.offset for r in drain(consumer, 2)] == [8, 9]
    assert_quiet(consumer)


def test_offsets_committed_and_lag(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=2)
    zeros = {0: 0, 1: 0}
    assert log.end_offsets(topic) == zeros
    assert log.start_offsets(topic) == zeros
    assert log.committed(group, topic) == zeros
    assert log.lag(group, topic).total == 0

    log.append_sync(topic, [Message(b"x", key=key_for(0, 2)) for _ in range(3)])
    log.append_sync(topic, [Message(b"y", key=key_for(1, 2)) for _ in range(2)])
    assert log.end_offsets(topic) == {0: 3, 1: 2}
    assert log.start_offsets(topic) == zeros
    assert log.lag(group, topic).total == 5

    new_consumer(group, [topic]).commit({(topic, 0): 2})
    lag = log.lag(group, topic)
    assert log.committed(group, topic) == {0: 2, 1: 0}
    assert (lag.end, lag.committed, lag.total) == ({0: 3, 1: 2}, {0: 2, 1: 0}, 3)


def test_records_and_commits_survive_reopening(
    open_log: OpenLog, log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=2)
    log.append_sync(
        topic,
        [Message(b"v%d" % i, key=b"k%d" % i, headers=(("h", b"%d" % i),)) for i in range(10)],
    )
    before = read_all(log, topic)
    ends = log.end_offsets(topic)
    first = new_consumer(group, [topic])
    assert len(drain(first, 10)) == 10
    first.commit({(topic, 0): 1, (topic, 1): 2})
    first.close()
    log.close()

    reopened = open_log()
    assert reopened.topics()[topic] == TopicSpec(topic, 2)
    assert read_all(reopened, topic) == before
    assert reopened.end_offsets(topic) == ends
    committed = {0: 1, 1: 2}
    assert reopened.committed(group, topic) == committed
    expected = {(r.partition, r.offset) for r in before if r.offset >= committed[r.partition]}
    resumed = drain(new_consumer(group, [topic], on=reopened), len(expected))
    assert positions(resumed) == expected

    [pos] = reopened.append_sync(topic, [Message(b"after", key=b"k0")])
    assert pos.offset == ends[pos.partition]


# -- retention and deletion -----------------------------------------------------------------


def test_time_retention_removes_old_records_and_keeps_offsets(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(retention_ms=60_000)
    unlimited = new_topic()
    now = int(time.time() * 1000)
    old = [Message(b"old%d" % i, timestamp_ms=now - 120_000) for i in range(3)]
    recent = [Message(b"new%d" % i, timestamp_ms=now - 1_000) for i in range(4)]
    log.append_sync(topic, old + recent)
    log.append_sync(unlimited, old)
    committer = new_consumer(group, [topic])
    committer.commit({(topic, 0): 1})
    committer.close()

    assert log.enforce_retention(now) == 3

    kept = read_all(log, topic)
    assert [(r.offset, r.value) for r in kept] == [(3 + i, m.value) for i, m in enumerate(recent)]
    assert log.start_offsets(topic) == {0: 3}
    assert log.end_offsets(topic) == {0: 7}
    assert len(read_all(log, unlimited)) == 3
    resumed = drain(new_consumer(group, [topic]), 4)
    assert [r.offset for r in resumed] == [3, 4, 5, 6]
    [pos] = log.append_sync(topic, [Message(b"next")])
    assert pos.offset == 7


def test_size_retention_keeps_the_newest_records_within_the_limit(
    log: Log, new_topic: NewTopic
) -> None:
    limit = 1_000
    topic = new_topic(retention_bytes=limit)
    log.append_sync(topic, [Message(bytes([i]) * 300) for i in range(10)])

    removed = log.enforce_retention(int(time.time() * 1000))

    kept = read_all(log, topic)
    assert removed == 10 - len(kept) > 0
    assert [r.offset for r in kept] == list(range(removed, 10))
    assert sum(len(r.value) for r in kept) <= limit < sum(len(r.value) for r in kept) + 300
    assert log.start_offsets(topic) == {0: removed}
    assert log.end_offsets(topic) == {0: 10}


def test_delete_where_removes_matching_records_only(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic(partitions=3)
    messages = [
        Message(b"%s-%d" % (who, i), key=who + b"%d" % (i % 3))
        for i in range(12)
        for who in (b"alice", b"bob")
    ]
    log.append_sync(topic, messages)
    before = read_all(log, topic)
    ends = log.end_offsets(topic)

    removed = log.delete_where(topic, lambda r: r.value.startswith(b"alice"))

    assert removed == 12
    survivors = [r for r in before if r.value.startswith(b"bob")]
    assert read_all(log, topic) == survivors
    assert log.end_offsets(topic) == ends
    assert positions(drain(new_consumer(group, [topic]), 12)) == positions(survivors)
    assert log.delete_where(topic, lambda r: r.value.startswith(b"alice")) == 0


# -- concurrency and waiting ----------------------------------------------------------------


def test_concurrent_appends_get_distinct_contiguous_offsets(log: Log, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=4)
    threads, appends = 8, 25
    start = threading.Barrier(threads)
    results: list[list[tuple[Position, bytes]]] = [[] for _ in range(threads)]

    def append(worker: int) -> None:
        start.wait()
        for i in range(appends):
            batch = [Message(b"w%d-%d-%d" % (worker, i, j), key=b"%d" % (i + j)) for j in range(2)]
            pending = log.append(topic, batch)
            results[worker].extend(zip(pending.result(), (m.value for m in batch), strict=True))

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    sent = {(pos.partition, pos.offset): value for result in results for pos, value in result}
    assert len(sent) == threads * appends * 2
    counts = Counter(p for p, _ in sent)
    assert sorted(sent) == sorted((p, o) for p, n in counts.items() for o in range(n))
    assert {(r.partition, r.offset): r.value for r in read_all(log, topic)} == sent


def test_creating_topics_does_not_disturb_appends_or_retention(
    log: Log, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=4, retention_ms=3_600_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    appended = 0

    def append() -> None:
        nonlocal appended
        log.append_sync(topic, values(1))
        appended += 1

    def keep_doing(work: Callable[[], object]) -> None:
        while not stop.is_set():
            try:
                work()
            except BaseException as exc:
                errors.append(exc)
                return

    workers = [
        threading.Thread(target=keep_doing, args=(append,)),
        threading.Thread(
            target=keep_doing, args=(lambda: log.enforce_retention(int(time.time() * 1000)),)
        ),
    ]
    for w in workers:
        w.start()
    try:
        for _ in range(100):
            new_topic(partitions=4)
    finally:
        stop.set()
        for w in workers:
            w.join()

    assert errors == []
    ends = log.end_offsets(topic)
    assert sum(ends.values()) == appended
    assert positions(read_all(log, topic)) == {(p, o) for p, n in ends.items() for o in range(n)}


def test_close_finishes_or_refuses_every_pending_append(
    open_log: OpenLog, log: Log, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=2)
    pending: list[list[Future[list[Position]]]] = [[] for _ in range(4)]

    def append(worker: int) -> None:
        for i in range(3_000):
            fut = log.append(topic, [Message(b"%d-%d" % (worker, i))])
            pending[worker].append(fut)
            if fut.done() and isinstance(fut.exception(), LogClosedError):
                return

    workers = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.05)
    log.close()
    for w in workers:
        w.join()

    acknowledged: set[tuple[int, int]] = set()
    for fut in (f for futures in pending for f in futures):
        try:
            [pos] = fut.result(timeout=WAIT_S)
        except LogClosedError:
            continue
        acknowledged.add((pos.partition, pos.offset))
    assert acknowledged
    assert acknowledged <= positions(read_all(open_log(), topic))


def test_poll_returns_nothing_after_the_timeout(
    new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic()
    consumer = new_consumer(group, [topic])
    settle([consumer], topic, 1)

    started = time.monotonic()
    assert consumer.poll(timeout_s=0.3) == []
    # 10x the timeout: only a poll that ignores its timeout (hangs) fails this.
    assert time.monotonic() - started < 3.0
    started = time.monotonic()
    assert consumer.poll(timeout_s=0) == []
    # Generous for a loaded machine; a poll(0) that blocked would wait for a record forever.
    assert time.monotonic() - started < 3.0


def test_poll_wakes_up_when_a_record_arrives(
    log: Log, new_topic: NewTopic, new_consumer: NewConsumer, group: str
) -> None:
    topic = new_topic()
    consumer = new_consumer(group, [topic])
    settle([consumer], topic, 1)
    later = threading.Timer(0.2, log.append_sync, args=(topic, [Message(b"hello")]))
    # A timeout far beyond the test's patience: only the append can end the poll in time.
    long_timeout_s = 60 * WAIT_S

    started = time.monotonic()
    later.start()
    try:
        records = consumer.poll(timeout_s=long_timeout_s)
    finally:
        later.join()

    assert [r.value for r in records] == [b"hello"]
    # Generous (the record comes after 0.2 s); a poll woken by its timeout would take 600 s.
    assert time.monotonic() - started < WAIT_S


# -- capabilities ----------------------------------------------------------------------------

# What each backend states about itself (``Log`` capabilities, asked instead of its class or
# the configured backend name), written out per backend name of the ``open_log`` fixture
# (``kafka+shredding`` is ``test_shredding_contract``'s). A new backend adds its row here.
CAPABILITIES: dict[str, dict[str, bool]] = {
    "embedded": {"encrypts_per_person": False, "shares_groups_across_processes": False},
    "kafka": {"encrypts_per_person": False, "shares_groups_across_processes": True},
    "kafka+shredding": {"encrypts_per_person": True, "shares_groups_across_processes": True},
}


def test_capabilities_are_the_backends(
    request: pytest.FixtureRequest,
    log: Log,
    new_topic: NewTopic,
    new_consumer: NewConsumer,
    group: str,
) -> None:
    expected = CAPABILITIES[request.node.callspec.params["open_log"]]
    assert {name: getattr(log, name) for name in expected} == expected
    # Every consumer counts shredded records (Consumer.shredded); readable ones are not.
    topic = new_topic()
    log.append_sync(topic, [Message(b"a", key=b"k"), Message(b"b")])
    consumer = new_consumer(group, [topic])
    assert len(drain(consumer, 2)) == 2
    assert consumer.shredded == 0
