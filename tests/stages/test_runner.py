"""Poison isolation in the stage runner: a record a stage cannot process is retried a few
times, then set aside to the ``dlq`` topic with the stage, the error and its original bytes,
and the stage goes on with every other record, each processed once; /health and /metrics
tell."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import msgspec
import pytest

from _support import wait_for
from clew._redis_shared import RedisUnreachableError
from clew.background import BackgroundServer
from clew.dlq.ledger import ReplayLedger
from clew.dlq.records import STAGE_FAILURE, DeadLetter
from clew.dlq.snapshot import DlqFilter, DlqSnapshot
from clew.identity.changes import IdentityRow, ProfileChange, encode_change
from clew.lake.query import Lake
from clew.log.base import (
    Consumer,
    Log,
    LogError,
    Message,
    Record,
    TopicPartition,
    TopicSpec,
)
from clew.log.embedded import EmbeddedLog
from clew.stages import runner as runner_module
from clew.stages.base import Stage
from clew.stages.runner import BATCH_ATTEMPTS, StageRunner
from clew.stages.setaside import StageLedger
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC


class _Picky(Stage):
    """Commits each batch it handles; refuses a batch holding a record whose value starts
    with ``poison`` (or raises ``error`` for every batch while it is set)."""

    group = "picky"
    topics = (EVENTS_TOPIC,)

    def __init__(self) -> None:
        self.done: list[bytes] = []
        self.error: Exception | None = None

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        if self.error is not None:
            raise self.error
        for rec in records:
            if rec.value.startswith(b"poison"):
                raise ValueError(f"cannot read {rec.value[:10]!r}")
        consumer.commit({(r.topic, r.partition): r.offset + 1 for r in records})
        self.done.extend(r.value for r in records)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (EVENTS_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


def _letters(log: Log) -> list[DeadLetter]:
    return [
        msgspec.json.decode(r.value, type=DeadLetter)
        for p in log.end_offsets(DLQ_TOPIC)
        for r in log.read(DLQ_TOPIC, p, 0)
    ]


def _run(log: Log, stage: Stage, ledger: StageLedger, until: object) -> StageRunner:
    runner = StageRunner(log, stage, 50, ledger=ledger)
    runner.start()
    try:
        wait_for(until, timeout_s=30)  # type: ignore[arg-type]
    finally:
        runner.stop()
    return runner


def test_a_poison_record_is_set_aside_and_every_other_record_is_processed_once(
    log: Log, tmp_path: Path
) -> None:
    good = [Message(f"ok-{i}".encode(), key=str(i).encode()) for i in range(40)]
    poison = Message(b"poison \xff", key=b"7", headers=(("source", b"src-1"),))
    log.append_sync(EVENTS_TOPIC, [*good[:20], poison, *good[20:]])
    stage = _Picky()
    ledger = StageLedger(tmp_path / "state.db")
    runner = _run(log, stage, ledger, lambda: len(stage.done) == 40)
    # Later records are processed too, with the poison record no longer in the way.
    log.append_sync(EVENTS_TOPIC, [Message(b"ok-late", key=b"1")])
    _run(log, stage, ledger, lambda: len(stage.done) == 41)

    assert sorted(stage.done) == sorted([m.value for m in good] + [b"ok-late"])
    assert [(r.value, r.key) for r in runner.set_aside] == [(poison.value, b"7")]
    [letter] = _letters(log)
    assert letter.reason == STAGE_FAILURE and letter.stage == "picky"
    assert letter.topic == EVENTS_TOPIC and letter.source_id == "src-1"
    assert letter.message.startswith("ValueError: cannot read b'poison")
    # Not UTF-8, so the exact bytes are kept in base64.
    assert letter.payload_encoding == "base64"
    assert base64.b64decode(letter.payload) == poison.value
    assert letter.headers == {"source": "src-1"}
    trouble = ledger.trouble()["picky"]
    assert trouble.set_aside_recent == 1 and trouble.failing is None
    assert trouble.last_set_aside == letter.message
    ledger.close()


def test_poison_records_at_the_end_of_a_partition_leave_no_lag(log: Log, tmp_path: Path) -> None:
    # Nothing after them for the stage to commit: the runner commits past them itself, once
    # the stage has committed what came before (so nothing unfinished is skipped).
    good = [Message(f"ok-{i}".encode(), key=b"k") for i in range(5)]
    poison = [Message(f"poison-{i}".encode(), key=b"k") for i in range(2)]
    log.append_sync(EVENTS_TOPIC, [*good, *poison])
    stage = _Picky()
    ledger = StageLedger(tmp_path / "state.db")
    runner = _run(
        log,
        stage,
        ledger,
        lambda: len(stage.done) == 5 and log.lag("picky", EVENTS_TOPIC).total == 0,
    )
    assert [r.value for r in runner.set_aside] == [m.value for m in poison]
    # After a restart the ledger keeps them away, and the commit stays past them.
    log.append_sync(EVENTS_TOPIC, [Message(b"ok-late", key=b"k")])
    _run(log, stage, ledger, lambda: b"ok-late" in stage.done)
    assert log.lag("picky", EVENTS_TOPIC).total == 0
    assert len(_letters(log)) == 2
    ledger.close()


@pytest.mark.parametrize(
    "error",
    [OSError("disk full"), RedisUnreachableError("cannot reach Redis while claiming ids")],
    ids=["disk", "redis"],
)
def test_an_outage_is_retried_and_never_blamed_on_a_record(
    log: Log, tmp_path: Path, error: Exception
) -> None:
    log.append_sync(EVENTS_TOPIC, [Message(f"ok-{i}".encode()) for i in range(5)])
    stage = _Picky()
    stage.error = error
    ledger = StageLedger(tmp_path / "state.db")
    runner = StageRunner(log, stage, 50, ledger=ledger)
    runner.start()
    try:
        # As many failures as make the runner isolate a record, were they not an outage.
        wait_for(lambda: runner.errors >= BATCH_ATTEMPTS, timeout_s=30)
        assert ledger.trouble()["picky"].failing == f"{type(error).__name__}: {error}"
        stage.error = None
        wait_for(lambda: len(stage.done) == 5)
        wait_for(lambda: "picky" not in ledger.trouble())
    finally:
        # Joins for up to 30 s, generous for a loaded machine: only a runner that ignores
        # stop() is still alive after it.
        runner.stop()
    assert not runner.alive
    assert runner.set_aside == [] and _letters(log) == []
    ledger.close()


def test_a_stage_outlives_a_log_it_cannot_join(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the log is away even making a consumer fails; the stage retries, and runs once
    the log is back."""
    log.append_sync(EVENTS_TOPIC, [Message(f"ok-{i}".encode()) for i in range(3)])
    consumer = log.consumer
    refusals = iter(range(2))

    def joining(*args: object, **kwargs: object) -> Consumer:
        if next(refusals, None) is not None:
            raise LogError("cannot reach Kafka")
        return consumer(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(log, "consumer", joining)
    monkeypatch.setattr(runner_module, "_RETRY_BACKOFF_S", (0.05,))
    stage = _Picky()
    runner = StageRunner(log, stage, 50)
    runner.start()
    try:
        wait_for(lambda: len(stage.done) == 3)
        assert runner.errors == 2 and runner.alive
    finally:
        runner.stop()


def test_a_failing_stage_does_not_hold_up_shutdown(
    log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After its second failure the runner backs off for 10 minutes: only stop() can end that.
    monkeypatch.setattr(runner_module, "_RETRY_BACKOFF_S", (0.05, 600.0))
    log.append_sync(EVENTS_TOPIC, [Message(b"ok")])
    stage = _Picky()
    stage.error = RuntimeError("stuck")
    runner = StageRunner(log, stage, 50)
    runner.start()
    wait_for(lambda: runner.errors >= 2)
    runner.stop(timeout_s=60)  # far below the backoff, generous for a loaded machine
    assert not runner.alive


class _LostPartitionOne(Consumer):
    """A member that reports only partition 0 as its own, always, while its polls return
    records of partition 1 too: as after two rebalances between two looks at the assignment
    (partition 1 gained inside a poll, lost again in the next look)."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        return self.inner.poll(max_records, timeout_s)

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        self.inner.commit(offsets, produce)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return [(EVENTS_TOPIC, 0)]

    def close(self) -> None:
        self.inner.close()


def test_a_stage_never_handles_records_of_a_partition_its_member_does_not_own(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The assignment looks unchanged between two looks, yet a poll returned records of a
    # partition another member owns now: handling them would apply what that member applies
    # (the profiles stage counted orders twice) and commit its partition's offsets.
    log.append_sync(
        EVENTS_TOPIC, [Message(f"ok-{i}".encode(), key=str(i).encode()) for i in range(20)]
    )
    mine = [r.value for r in log.read(EVENTS_TOPIC, 0, 0)]
    assert mine and len(mine) < 20, "records in both partitions"
    consumer = log.consumer
    monkeypatch.setattr(log, "consumer", lambda *a, **k: _LostPartitionOne(consumer(*a, **k)))
    stage = _Picky()
    runner = StageRunner(log, stage, 50)
    runner.start()
    try:
        wait_for(lambda: log.lag("picky", EVENTS_TOPIC).committed.get(0) == len(mine))
    finally:
        runner.stop()
    assert sorted(stage.done) == sorted(mine)
    assert log.lag("picky", EVENTS_TOPIC).committed.get(1, 0) == 0


def _unencodable_change(pid: str) -> ProfileChange:
    # msgspec reads an integer beyond 64 bits; the lake's JSON encoder cannot write one.
    return ProfileChange(
        profile_id=pid,
        first_seen="2026-03-01T10:00:00.000Z",
        last_seen="2026-03-01T10:00:00.000Z",
        identities=[IdentityRow("user_id", pid, f"m-{pid}", "src", "2026-03-01T10:00:00.000Z")],
        traits={"huge": 2**70} if pid == "poison" else {"plan": "pro"},
        computed={},
        merged_ids=[],
        changed_at="2026-03-01T10:00:00.000Z",
    )


def test_profiles_lake_sets_aside_a_change_it_cannot_write_and_health_says_so(
    server: BackgroundServer,
) -> None:
    clew = server.clew
    changes = [_unencodable_change(pid) for pid in ("a", "poison", "b")]
    clew.log.append_sync(
        CHANGES_TOPIC, [Message(encode_change(c), key=c.profile_id.encode()) for c in changes]
    )
    lake = Lake(clew.settings.lake_location)

    def profiles() -> list[object]:
        return [r[0] for r in lake.sql("SELECT profile_id FROM customer_profiles").rows]

    wait_for(lambda: sorted(profiles()) == ["a", "b"], timeout_s=60)  # type: ignore[type-var]

    health = httpx.get(server.url + "/health")
    assert health.status_code == 200
    body = health.json()
    assert body["ok"] is True and body["status"] == "degraded"
    stage = body["stages"]["profiles-lake"]
    assert stage["status"] == "set_aside" and stage["set_aside"] == 1
    assert "64-bit" in stage["reason"]
    assert body["stages"]["validate"]["status"] == "ok"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'clew_records_set_aside_total{stage="profiles-lake"} 1' in metrics
    assert 'clew_stage_failures_total{stage="profiles-lake"} ' in metrics

    # The lake stage writes the dead letter into the dlq table, where `clew dlq list` reads it.
    def dead_letters() -> list[object]:
        ledger = ReplayLedger(clew.settings.state_path)
        try:
            with DlqSnapshot(clew.settings.lake_location, ledger) as snapshot:
                return [r for rows in snapshot.rows(DlqFilter()) for r in rows]
        finally:
            ledger.close()

    wait_for(lambda: len(dead_letters()) == 1, timeout_s=30)
    [row] = dead_letters()
    assert row.stage == "profiles-lake" and row.topic == CHANGES_TOPIC  # type: ignore[attr-defined]
    assert row.reason == STAGE_FAILURE  # type: ignore[attr-defined]
    assert row.payload == encode_change(changes[1]).decode()  # type: ignore[attr-defined]
