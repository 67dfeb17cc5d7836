"""The lake stage writes every event exactly once, even when it dies between the Delta commit
and the log commit."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from clew.config import LakeSettings
from clew.lake.query import Lake
from clew.lake.tables import sink_app_id
from clew.log.base import Consumer, Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.lake_sink import LakeSinkStage


def _event(i: int, day: int = 1) -> Message:
    doc = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{i}",
        "userId": f"u-{i % 7}",
        "timestamp": f"2026-11-{day:02d}T10:00:00.000Z",
        "receivedAt": f"2026-11-{day:02d}T10:00:01.000Z",
        "sourceId": "src_1",
        "properties": {"sku": f"sku-{i}", "price": i},
    }
    return Message(value=orjson.dumps(doc), key=doc["userId"].encode())


@pytest.fixture
def log(tmp_path: Path):
    log = EmbeddedLog(tmp_path / "log.db")
    for t in ("events", "dlq"):
        log.create_topic(TopicSpec(t, 3))
    yield log
    log.close()


def _drain(stage: LakeSinkStage, consumer: Consumer) -> None:
    stage.on_assign(consumer, consumer.assignment())
    while records := consumer.poll(200, 0.05):
        stage.handle(records, consumer)
    stage.close(consumer)


def _ids(lake_root: Path) -> list[str]:
    return [r[0] for r in Lake(lake_root).sql("SELECT message_id FROM events").rows]


def test_rows_land_once_with_columns_and_date_partitions(log: EmbeddedLog, tmp_path: Path) -> None:
    log.append_sync("events", [_event(i, day=1 + i % 2) for i in range(50)])
    stage = LakeSinkStage(tmp_path / "lake", LakeSettings(flush_rows=20))
    consumer = log.consumer("lake", ["events", "dlq"])
    _drain(stage, consumer)
    consumer.close()
    ids = _ids(tmp_path / "lake")
    assert sorted(ids) == sorted(f"m-{i}" for i in range(50))
    rows = (
        Lake(tmp_path / "lake")
        .sql(
            "SELECT event_date::VARCHAR, count(*), sum(json_extract(properties, '$.price')::INT) "
            "FROM events GROUP BY 1 ORDER BY 1"
        )
        .rows
    )
    assert rows == [
        ("2026-11-01", 25, sum(range(0, 50, 2))),
        ("2026-11-02", 25, sum(range(1, 50, 2))),
    ]
    assert (tmp_path / "lake" / "events" / "event_date=2026-11-01").is_dir()


def test_crash_after_delta_commit_before_log_commit_does_not_duplicate(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", [_event(i) for i in range(30)])
    stage = LakeSinkStage(tmp_path / "lake", LakeSettings(flush_rows=10))
    consumer = log.consumer("lake", ["events", "dlq"])
    stage.on_assign(consumer, consumer.assignment())

    def die(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed between the Delta commit and the log commit")

    consumer.commit = die  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        while records := consumer.poll(200, 0.05):
            stage.handle(records, consumer)
    consumer.close()
    written = len(_ids(tmp_path / "lake"))
    assert written > 0  # the Delta commit happened, the log commit did not

    log.append_sync("events", [_event(i) for i in range(30, 40)])
    restarted = LakeSinkStage(tmp_path / "lake", LakeSettings(flush_rows=10))
    consumer = log.consumer("lake", ["events", "dlq"])
    _drain(restarted, consumer)
    consumer.close()
    ids = _ids(tmp_path / "lake")
    assert len(ids) == len(set(ids)) == 40


def test_maintenance_compacts_and_readers_see_the_same_rows(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    stage = LakeSinkStage(tmp_path / "lake", LakeSettings(flush_rows=5, compact_every_commits=1000))
    consumer = log.consumer("lake", ["events", "dlq"])
    stage.on_assign(consumer, consumer.assignment())
    for batch in range(6):
        log.append_sync("events", [_event(batch * 5 + i) for i in range(5)])
        while records := consumer.poll(200, 0.05):
            stage.handle(records, consumer)
    files_before = len(list((tmp_path / "lake" / "events").rglob("*.parquet")))
    before = sorted(_ids(tmp_path / "lake"))
    from clew.lake.tables import EVENTS

    stage.maintain(EVENTS)
    consumer.close()
    after = sorted(_ids(tmp_path / "lake"))
    assert before == after and len(after) == 30
    from deltalake import DeltaTable

    live_files = len(DeltaTable(str(tmp_path / "lake" / "events")).file_uris())
    assert files_before >= 6
    assert live_files < files_before


def test_a_commit_repeated_after_its_answer_was_lost_is_refused_not_written_twice(
    tmp_path: Path,
) -> None:
    """When an outage cuts off the answer to a commit that landed, deltalake retries it from
    the snapshot before: that attempt meets the landed commit's application transaction and
    fails instead of adding the rows again (the runner then resumes past it, on_assign)."""
    uri = str(tmp_path / "events")
    rows = pa.table({"message_id": ["m-1"]})

    def commit(offset: int) -> CommitProperties:
        return CommitProperties(app_transactions=[Transaction(sink_app_id("events", 0), offset)])

    write_deltalake(uri, rows, commit_properties=commit(0))
    before = DeltaTable(uri)
    write_deltalake(uri, rows, mode="append", commit_properties=commit(1))
    with pytest.raises(CommitFailedError):
        write_deltalake(before, rows, mode="append", commit_properties=commit(1))
    assert DeltaTable(uri).to_pyarrow_table().num_rows == 2
    assert DeltaTable(uri).transaction_version(sink_app_id("events", 0)) == 1
