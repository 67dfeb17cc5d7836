"""The validate stage over a real embedded log and dedup index: every event of a raw request
reaches the ``events`` topic exactly once, even when the stage dies before its commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from clew.dedup import DedupIndex, RedisDedupIndex
from clew.log.base import Consumer, Message, Record, TopicPartition, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.nesting import MAX_DEPTH
from clew.stages.validate import DLQ_TOPIC, EVENTS_TOPIC, ValidateStage

RAW = "raw"
RECEIVED_US = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (RAW, EVENTS_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def dedup(state_path: Path) -> Iterator[DedupIndex]:
    index = DedupIndex(state_path)
    yield index
    index.close()


class _Crash(Exception):
    pass


class _DiesBeforeCommit(Consumer):
    """A consumer whose process dies when the stage commits: nothing is produced or committed."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        raise _Crash

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        return self._inner.poll(max_records, timeout_s)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return self._inner.assignment()

    def close(self) -> None:
        self._inner.close()


def append_request(
    log: EmbeddedLog,
    body: dict[str, Any] | bytes,
    *,
    path_type: str = "batch",
    source: str = "src_1",
    request_id: str | None = None,
) -> None:
    """Append a request to ``raw`` the way the collector does."""
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = (
        ("source", source.encode()),
        ("received_at", str(RECEIVED_US).encode()),
        ("type", path_type.encode()),
        ("request_id", (request_id or uuid.uuid4().hex).encode()),
    )
    log.append_sync(RAW, [Message(value=value, headers=headers)])


def poll_all(consumer: Consumer) -> list[Record]:
    out: list[Record] = []
    while batch := consumer.poll(max_records=1000, timeout_s=0.2):
        out.extend(batch)
    return out


def run_once(log: EmbeddedLog, stage: ValidateStage) -> int:
    """One stage member's life: poll everything, handle it, leave. Returns records handled."""
    consumer = log.consumer(stage.group, list(stage.topics))
    try:
        records = poll_all(consumer)
        if records:
            stage.handle(records, consumer)
        return len(records)
    finally:
        consumer.close()


def topic_docs(log: EmbeddedLog, topic: str) -> list[dict[str, Any]]:
    docs = []
    for partition in log.end_offsets(topic):
        docs.extend(orjson.loads(r.value) for r in log.read(topic, partition, 0, 100_000))
    return docs


def message_ids(log: EmbeddedLog) -> list[str]:
    return sorted(d["messageId"] for d in topic_docs(log, EVENTS_TOPIC))


def events(n: int, prefix: str = "m", with_ids: bool = True) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ev = {"type": "track", "event": "Viewed", "userId": f"u-{i % 3}"}
        if with_ids:
            ev["messageId"] = f"{prefix}-{i}"
        out.append(ev)
    return out


def test_replaying_a_record_after_a_crash_before_the_commit_yields_each_event_once(
    log: EmbeddedLog, dedup: DedupIndex, state_path: Path
) -> None:
    append_request(log, {"batch": events(5)})
    append_request(log, {"batch": events(3, with_ids=False)})
    append_request(log, {"userId": "u-1", "event": "Signed Up"}, path_type="track")

    # The first member claims the ids in the dedup index, then dies before its commit.
    consumer = log.consumer("validate", [RAW])
    records = poll_all(consumer)
    assert len(records) == 3
    with pytest.raises(_Crash):
        ValidateStage(dedup).handle(records, _DiesBeforeCommit(consumer))
    consumer.close()
    dedup.close()
    assert topic_docs(log, EVENTS_TOPIC) == []

    # A restarted process re-reads the uncommitted records and lets its own claims through.
    restarted = DedupIndex(state_path)
    try:
        stage = ValidateStage(restarted)
        assert run_once(log, stage) == 3
        ids = message_ids(log)
        assert len(ids) == len(set(ids)) == 9
        assert {f"m-{i}" for i in range(5)} <= set(ids)
        assert stage.counters["duplicates"] == 0
        assert stage.counters["events"] == 9

        # Committed: another member reads nothing more.
        assert run_once(log, ValidateStage(restarted)) == 0
        assert len(message_ids(log)) == 9
    finally:
        restarted.close()


def test_generated_message_ids_are_the_same_when_a_record_is_replayed(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    append_request(log, {"batch": events(4, with_ids=False)}, request_id="req-fixed")
    consumer = log.consumer("validate", [RAW])
    records = poll_all(consumer)
    stage = ValidateStage(dedup)
    seen: list[list[str]] = []

    class Capture(_DiesBeforeCommit):
        def commit(
            self,
            offsets: Mapping[TopicPartition, int] | None = None,
            produce: Mapping[str, Sequence[Message]] | None = None,
        ) -> None:
            assert produce is not None
            seen.append(sorted(orjson.loads(m.value)["messageId"] for m in produce[EVENTS_TOPIC]))
            raise _Crash

    for _ in range(2):
        with pytest.raises(_Crash):
            stage.handle(records, Capture(consumer))
    consumer.close()
    assert len(seen[0]) == 4
    assert seen[0] == seen[1]
    for mid in seen[0]:
        assert str(uuid.UUID(mid)) == mid


def test_duplicates_across_records_are_dropped_and_counted(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    first = {"type": "track", "event": "Paid", "userId": "u", "messageId": "dup-1"}
    again = {**first, "properties": {"retry": True}}
    append_request(log, {"batch": [first, {**first, "messageId": "other-1"}]})
    append_request(log, {"batch": [again, {**first, "messageId": "other-2"}]})
    append_request(log, again, path_type="track")
    stage = ValidateStage(dedup)

    run_once(log, stage)

    assert message_ids(log) == ["dup-1", "other-1", "other-2"]
    [kept] = [d for d in topic_docs(log, EVENTS_TOPIC) if d["messageId"] == "dup-1"]
    assert kept.get("properties", {}) == {}, "the first copy is kept"
    assert stage.counters["duplicates"] == 2
    assert stage.counters["events"] == 3
    # A duplicate is not a dead letter.
    assert topic_docs(log, DLQ_TOPIC) == []


def test_a_duplicate_within_one_batch_is_dropped(log: EmbeddedLog, dedup: DedupIndex) -> None:
    ev = {"type": "track", "event": "Paid", "userId": "u", "messageId": "twice"}
    append_request(log, {"batch": [ev, ev]})
    stage = ValidateStage(dedup)
    run_once(log, stage)
    assert message_ids(log) == ["twice"]
    assert stage.counters["duplicates"] == 1


def test_duplicates_are_dropped_in_a_later_poll_and_after_a_restart(
    log: EmbeddedLog, dedup: DedupIndex, state_path: Path
) -> None:
    ev = {"type": "track", "event": "Paid", "userId": "u", "messageId": "late"}
    append_request(log, {"batch": [ev]})
    run_once(log, ValidateStage(dedup))
    dedup.close()

    reopened = DedupIndex(state_path)
    try:
        append_request(log, {"batch": [ev]})
        stage = ValidateStage(reopened)
        assert run_once(log, stage) == 1
        assert message_ids(log) == ["late"]
        assert stage.counters["duplicates"] == 1
    finally:
        reopened.close()


def test_the_same_message_id_from_another_source_is_not_a_duplicate(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    ev = {"type": "track", "event": "Paid", "userId": "u", "messageId": "shared"}
    append_request(log, {"batch": [ev]}, source="src_a")
    append_request(log, {"batch": [ev]}, source="src_b")
    stage = ValidateStage(dedup)
    run_once(log, stage)
    docs = topic_docs(log, EVENTS_TOPIC)
    assert sorted(d["sourceId"] for d in docs) == ["src_a", "src_b"]
    assert stage.counters["duplicates"] == 0


def test_events_are_stamped_from_the_records_headers(log: EmbeddedLog, dedup: DedupIndex) -> None:
    append_request(
        log,
        {"batch": [{"type": "page", "anonymousId": "a", "name": "Home"}]},
        source="src_web",
    )
    run_once(log, ValidateStage(dedup))
    [doc] = topic_docs(log, EVENTS_TOPIC)
    assert doc["receivedAt"] == "2023-11-14T22:13:20.123Z"
    assert doc["timestamp"] == doc["receivedAt"]
    assert doc["sourceId"] == "src_web"
    assert doc["type"] == "page"


def test_bad_events_go_to_the_dlq_with_their_original_bytes_and_good_ones_go_on(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    good = b'{"type":"track","event":"Ok","userId":"u","messageId":"good"}'
    nobody = b'{ "type" : "track", "event": "Zo\xc3\xab",  "messageId": "nobody" }'
    array = b'[1, "two"]'
    body = b'{"batch": [' + good + b",\n" + nobody + b" , " + array + b'], "sentAt": null}'
    append_request(log, body)
    stage = ValidateStage(dedup)

    run_once(log, stage)

    assert message_ids(log) == ["good"]
    dead = sorted(topic_docs(log, DLQ_TOPIC), key=lambda d: d["index"])
    assert [(d["index"], d["reason"]) for d in dead] == [
        (1, "no_identity"),
        (2, "protocol_violation"),
    ]
    assert dead[0]["payload"].encode() == nobody
    assert dead[1]["payload"].encode() == array
    assert dead[0]["message_id"] == "nobody"
    assert dead[0]["event_name"] == "Zoë"
    assert all(d["source_id"] == "src_1" for d in dead)
    assert stage.counters["dlq_no_identity"] == stage.counters["dlq_protocol_violation"] == 1


def _redis_dedup(url: str, prefix: str, window_ms: int = 60_000) -> RedisDedupIndex:
    import redis

    from clew.store._redis_route import cluster_client

    if url.startswith("cluster+"):
        client = cluster_client(url.removeprefix("cluster+"), [])()
    else:
        client = redis.Redis.from_url(url)
    return RedisDedupIndex(client, prefix, window_ms)


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_redis(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return "cluster+" + request.getfixturevalue("redis_cluster_service").url


def test_validate_workers_on_two_machines_share_redis_claims(
    log: EmbeddedLog, shared_redis: str
) -> None:
    """With the serving store in Redis, the claims are there too: a partition that moves to a
    worker on another machine still drops what the first worker let through, and a replay
    of the first worker's own record (same origin) still passes."""
    prefix = f"dedup-{uuid.uuid4().hex}"
    first_machine = _redis_dedup(shared_redis, prefix)
    second_machine = _redis_dedup(shared_redis, prefix)
    try:
        ev = {"type": "track", "event": "Paid", "userId": "u", "messageId": "moved"}
        append_request(log, {"batch": [ev, {**ev, "messageId": "only-once"}]})
        run_once(log, ValidateStage(first_machine))
        append_request(log, {"batch": [ev]})
        stage = ValidateStage(second_machine)
        assert run_once(log, stage) == 1
        assert message_ids(log) == ["moved", "only-once"]
        assert stage.counters["duplicates"] == 1
        # Claims by another origin are duplicates; the same origin is a replay.
        assert first_machine.claim([("y", "o1")], 0) == set()
        assert second_machine.claim([("y", "o2"), ("x", "o"), ("x", "p")], 0) == {0, 2}
        assert second_machine.claim([("x", "o"), ("y", "o1")], 0) == set()
    finally:
        first_machine.close()
        second_machine.close()


def test_redis_claims_expire_with_the_window(shared_redis: str) -> None:
    index = _redis_dedup(shared_redis, f"dedup-{uuid.uuid4().hex}", window_ms=300)
    try:
        assert index.claim([("m", "a")], 0) == set()
        assert index.claim([("m", "b")], 0) == {0}
        time.sleep(0.5)
        assert index.claim([("m", "b")], 0) == set(), "an expired claim no longer blocks"
    finally:
        index.close()


class _Shredding(Consumer):
    """A member that reports records it skipped, as the crypto-shredding wrapper does."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner
        self.shredded = 0

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        records = self._inner.poll(max_records, timeout_s)
        self.shredded += len(records)
        return []

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        self._inner.commit(offsets, produce)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return self._inner.assignment()

    def close(self) -> None:
        self._inner.close()


def test_the_runner_counts_records_its_member_skipped_as_shredded(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    from clew.stages._counters import CounterStore
    from clew.stages.runner import StageRunner

    class _Log:
        def consumer(self, group: str, topics: list[str]) -> Consumer:
            return _Shredding(log.consumer(group, topics))

    for _ in range(3):
        append_request(log, {"batch": events(2)})
    counters = CounterStore(tmp_path / "counters.db")
    dedup = DedupIndex(tmp_path / "dedup.db")
    runner = StageRunner(_Log(), ValidateStage(dedup), counters=counters)  # type: ignore[arg-type]
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while counters.read("validate")["shredded_records"] < 3:
            assert time.monotonic() < deadline, "the skipped records were not counted"
            time.sleep(0.05)
    finally:
        runner.stop()
        dedup.close()
    assert counters.read("validate")["shredded_records"] == 3
    counters.close()


def test_a_stored_request_nested_too_deep_loses_only_its_deep_event(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    # Requests a collector without the nesting limit stored: the stages after this one
    # could not write traits this deep, so the event is dead-lettered and its batch goes on.
    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"k": deep}
    good = {"type": "identify", "userId": "u-1", "messageId": "good", "traits": {"a": 1}}
    bad = {"type": "identify", "userId": "u-2", "messageId": "deep", "traits": deep}
    append_request(log, msgspec.json.encode({"batch": [good, bad]}))
    append_request(log, b'{"batch": [' + b"[" * 5000 + b"]" * 5000 + b"]}")
    assert run_once(log, ValidateStage(dedup)) == 2
    assert [d["messageId"] for d in topic_docs(log, EVENTS_TOPIC)] == ["good"]
    dead = sorted(topic_docs(log, DLQ_TOPIC), key=lambda d: d["index"])
    assert [(d["index"], d["reason"]) for d in dead] == [(-1, "invalid_json"), (1, "invalid_json")]
    assert dead[1]["message_id"] == "deep"
    assert f"{MAX_DEPTH} levels" in dead[1]["message"]


def test_an_integer_beyond_64_bits_dead_letters_its_event_alone(
    log: EmbeddedLog, dedup: DedupIndex
) -> None:
    # Such an integer decodes, but the stages after this one could not write it as JSON.
    huge = (
        b'{"type":"identify","userId":"u","messageId":"huge",'
        b'"traits":{"s":[1,18446744073709551616]}}'
    )
    edge = (
        b'{"type":"track","event":"Big","userId":"u","messageId":"edge",'
        b'"properties":{"max":18446744073709551615,"min":-9223372036854775808,'
        b'"id":"123456789012345678901234567890"}}'
    )
    append_request(log, b'{"batch": [' + huge + b", " + edge + b"]}")

    run_once(log, ValidateStage(dedup))

    assert message_ids(log) == ["edge"]
    (dead,) = topic_docs(log, DLQ_TOPIC)
    assert (dead["index"], dead["reason"], dead["message_id"]) == (0, "invalid_json", "huge")
    assert "integer beyond 64 bits at traits.s[1]" in dead["message"]
    assert dead["payload"].encode() == huge
