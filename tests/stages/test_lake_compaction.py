"""The lake stage maintains a table on its own every ``compact_every_commits`` appends: it
compacts the small files of the micro-batches into one, and vacuums the files no snapshot
still references (immediately with ``vacuum_retention_hours = 0``); between two triggers it
leaves the files as written. Readers see the same rows throughout. The profiles-lake stage
does the same for its tables every ``compact_every_commits`` flushes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from deltalake import DeltaTable

from clew.config import LakeSettings
from clew.identity.changes import IdentityRow, ProfileChange, encode_change
from clew.lake.query import Lake
from clew.lake.tables import CUSTOMER_PROFILES, IDENTITIES
from clew.log.base import Consumer, Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.lake_sink import LakeSinkStage
from clew.stages.profiles_sink import ProfilesSinkStage
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC

ROWS_PER_COMMIT = 5


def _event(i: int) -> Message:
    doc = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{i}",
        "userId": "u-1",
        "timestamp": "2026-11-01T10:00:00.000Z",
        "receivedAt": "2026-11-01T10:00:01.000Z",
        "sourceId": "src_1",
        "properties": {"sku": f"sku-{i}"},
    }
    return Message(value=orjson.dumps(doc), key=b"u-1")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (EVENTS_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 1))
    yield log
    log.close()


def _commit_one_batch(log: EmbeddedLog, stage: LakeSinkStage, consumer: Consumer, n: int) -> None:
    """Append one micro-batch and let the stage write it: one Delta commit (flush_rows)."""
    log.append_sync(EVENTS_TOPIC, [_event(n * ROWS_PER_COMMIT + i) for i in range(ROWS_PER_COMMIT)])
    while records := consumer.poll(200, 0.05):
        stage.handle(records, consumer)


def _data_files(table: Path) -> list[Path]:
    """The Parquet data files on disk, live or not (not the Delta log's checkpoints)."""
    return [p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts]


def _checkpoints(table: Path) -> list[Path]:
    return list((table / "_delta_log").glob("*.checkpoint.parquet"))


def _operations(table: Path) -> list[str]:
    return [str(h["operation"]) for h in reversed(DeltaTable(str(table)).history())]


def test_every_n_commits_the_table_is_compacted_and_vacuumed(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    table = lake / "events"
    settings = LakeSettings(
        flush_rows=ROWS_PER_COMMIT, compact_every_commits=3, vacuum_retention_hours=0
    )
    stage = LakeSinkStage(lake, settings)
    consumer = log.consumer("lake", [EVENTS_TOPIC, DLQ_TOPIC])
    stage.on_assign(consumer, consumer.assignment())
    try:
        for n in range(2):
            _commit_one_batch(log, stage, consumer, n)
        # Two commits: below the trigger, one file per micro-batch, nothing maintained.
        assert len(DeltaTable(str(table)).file_uris()) == 2
        assert len(_data_files(table)) == 2
        assert "OPTIMIZE" not in _operations(table)
        assert _checkpoints(table) == []

        _commit_one_batch(log, stage, consumer, 2)
        # The third commit triggers maintenance: one live file, the three small ones gone.
        assert len(DeltaTable(str(table)).file_uris()) == 1
        assert len(_data_files(table)) == 1
        assert _operations(table).count("OPTIMIZE") == 1
        assert len(_checkpoints(table)) == 1  # and the Delta log is checkpointed

        for n in range(3, 5):
            _commit_one_batch(log, stage, consumer, n)
        # The count starts again: two more commits are two more files, not compacted yet.
        assert len(DeltaTable(str(table)).file_uris()) == 3
        assert _operations(table).count("OPTIMIZE") == 1
        _commit_one_batch(log, stage, consumer, 5)
        assert len(DeltaTable(str(table)).file_uris()) == 1
        assert len(_data_files(table)) == 1
        assert _operations(table).count("OPTIMIZE") == 2
    finally:
        consumer.close()

    ids = sorted(r[0] for r in Lake(lake).sql("SELECT message_id FROM events").rows)
    assert ids == sorted(f"m-{i}" for i in range(6 * ROWS_PER_COMMIT))
    assert stage.rows_written[EVENTS_TOPIC] == 6 * ROWS_PER_COMMIT


def _snapshot(profile_id: str, n: int) -> Message:
    at = f"2026-03-01T10:{n:02d}:00.000Z"
    change = ProfileChange(
        profile_id=profile_id,
        first_seen="2026-03-01T10:00:00.000Z",
        last_seen=at,
        identities=[IdentityRow("user_id", profile_id, f"m-{n}", "src", at)],
        traits={},
        computed={},
        merged_ids=[],
        changed_at=at,
    )
    return Message(encode_change(change))


def test_the_profiles_lake_maintains_its_tables_every_n_flushes(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(CHANGES_TOPIC, 1))
    settings = LakeSettings(compact_every_commits=3, vacuum_retention_hours=0)
    stage = ProfilesSinkStage(tmp_path / "lake", settings)
    consumer = log.consumer(stage.group, stage.topics)
    profiles = tmp_path / "lake" / CUSTOMER_PROFILES.name
    try:
        stage.on_assign(consumer, consumer.assignment())

        def flush(n: int) -> None:
            log.append_sync(CHANGES_TOPIC, [_snapshot(f"P{n}", n)])
            stage.handle(consumer.poll(10, 0.5), consumer)
            stage.close(consumer)  # one flush per profile: a small file each

        for n in range(2):
            flush(n)
        assert stage.flushes == 2
        files_before = len(DeltaTable(str(profiles)).file_uris())
        assert files_before >= 2
        assert "OPTIMIZE" not in _operations(profiles)

        flush(2)
        assert _operations(profiles).count("OPTIMIZE") == 1
        assert _operations(tmp_path / "lake" / IDENTITIES.name).count("OPTIMIZE") == 1
        assert len(DeltaTable(str(profiles)).file_uris()) == 1
        assert len(_data_files(profiles)) == 1
    finally:
        consumer.close()
        log.close()
    rows = Lake(tmp_path / "lake").sql("SELECT profile_id FROM customer_profiles").rows
    assert sorted(r[0] for r in rows) == ["P0", "P1", "P2"]
