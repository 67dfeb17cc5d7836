"""Replaying the dead-letter queue over a real embedded log, dedup index and lake: fixed events
land in ``events`` exactly once (replayed twice, interrupted before or after an append, or
already accepted another way), and still-bad ones go back to the queue with their new reason."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest

from _support import make_settings
from clew.backends import open_log
from clew.config import Settings
from clew.dlq.replay import ReplayInProgressError, ReplayReport, replay_dlq
from clew.dlq.snapshot import DlqFilter
from clew.lake.query import Lake
from clew.log.base import Message, Position
from clew.log.embedded import EmbeddedLog
from clew.schema import Compatibility, Enforcement, SchemaRegistry, SubjectUpdate
from clew.sources import Catalog
from clew.stages.workers import build_stage

RECEIVED_US = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z
ORDER = "track:Order Completed"
STRICT = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "revenue": {"type": "number"}},
    "required": ["order_id", "revenue"],
}
FIXED = {**STRICT, "required": ["order_id"]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def source_id(settings: Settings) -> str:
    catalog = Catalog.open(settings)
    try:
        return catalog.create_source("web", "web-write-key").id
    finally:
        catalog.close()


@pytest.fixture
def log(settings: Settings) -> Iterator[EmbeddedLog]:
    log = open_log(settings)
    assert isinstance(log, EmbeddedLog)
    yield log
    log.close()


def push(settings: Settings, subjects: dict[str, dict[str, Any]]) -> None:
    with SchemaRegistry(settings.registry_path) as registry:
        registry.publish_all(
            "web",
            [SubjectUpdate(s, schema) for s, schema in subjects.items()],
            enforcement=Enforcement.BLOCK_VIOLATIONS,
            compatibility=Compatibility.NONE,
            retire_missing=True,
        )


def send(log: EmbeddedLog, source_id: str, batch: list[dict[str, Any]], request: str) -> None:
    """Append a batch request to ``raw`` the way the collector does."""
    headers = (
        ("source", source_id.encode()),
        ("received_at", str(RECEIVED_US).encode()),
        ("type", b"batch"),
        ("request_id", request.encode()),
    )
    log.append_sync("raw", [Message(value=orjson.dumps({"batch": batch}), headers=headers)])


def drain(log: EmbeddedLog, settings: Settings) -> None:
    """Run the validate and lake stages over everything in the log, as `clew serve` would."""
    for name in ("validate", "lake"):
        stage, closers = build_stage(name, settings)
        consumer = log.consumer(stage.group, list(stage.topics))
        try:
            stage.on_assign(consumer, consumer.assignment())
            while records := consumer.poll(max_records=5000, timeout_s=0.1):
                stage.handle(records, consumer)
            stage.close(consumer)
        finally:
            consumer.close()
            for close in closers:
                close()


def order(i: int, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"u{i}",
        "messageId": f"m{i}",
        "timestamp": "2023-11-14T22:00:00.000Z",
        "properties": {"order_id": f"o{i}", **props},
    }


def sql(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    return Lake(settings.lake_path).sql(query).rows


def event_ids(settings: Settings) -> list[str]:
    return [r[0] for r in sql(settings, "SELECT message_id FROM events ORDER BY 1")]


def outcome(report: ReplayReport) -> tuple[int, int, int]:
    return report.landed, report.still_bad, report.duplicates


@pytest.fixture
def rejected(settings: Settings, log: EmbeddedLog, source_id: str) -> None:
    """Six orders blocked for a missing revenue, one also missing its order id."""
    push(settings, {ORDER: STRICT})
    bad = [order(i) for i in range(6)]
    del bad[5]["properties"]["order_id"]
    send(log, source_id, bad, "req-1")
    drain(log, settings)
    assert sql(settings, "SELECT count(*) FROM dlq") == [(6,)]
    assert event_ids(settings) == []
    push(settings, {ORDER: FIXED})


@pytest.mark.usefixtures("rejected")
def test_fixed_events_land_once_as_a_first_acceptance_would_and_a_second_replay_adds_none(
    settings: Settings, log: EmbeddedLog
) -> None:
    first = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(first) == (5, 1, 0)
    drain(log, settings)
    assert event_ids(settings) == [f"m{i}" for i in range(5)]
    times = sql(
        settings,
        "SELECT DISTINCT strftime(received_at, '%Y-%m-%dT%H:%M:%S.%g'), "
        "strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%g') FROM events",
    )
    assert times == [("2023-11-14T22:13:20.123", "2023-11-14T22:00:00.000")]

    second = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(second) == (0, 1, 0)
    assert second.skipped == 6
    drain(log, settings)
    assert event_ids(settings) == [f"m{i}" for i in range(5)]


@pytest.mark.usefixtures("rejected")
def test_still_bad_rows_go_back_with_the_new_reason_and_point_to_the_row_they_replace(
    settings: Settings, log: EmbeddedLog, source_id: str
) -> None:
    # The fix went wrong: the order id may be missing now, but a currency is required.
    push(settings, {ORDER: {**FIXED, "required": ["currency"]}})
    report = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(report) == (0, 6, 0)
    assert report.still_bad_reasons == {"schema_violation": 6}
    drain(log, settings)
    rows = sql(
        settings,
        "SELECT dlq_id, replay_of, reason, message, violations FROM dlq "
        "WHERE replay_of IS NOT NULL ORDER BY replay_of",
    )
    assert len(rows) == 6
    for dlq_id, replay_of, reason, message, violations in rows:
        assert dlq_id == f"{replay_of}~{report.replay_id}"
        assert reason == "schema_violation"
        assert message == "$.properties.currency: required property 'currency' is missing"
        assert [(v["path"], v["keyword"]) for v in orjson.loads(violations)] == [
            ("$.properties.currency", "required")
        ]
    assert {r[1] for r in rows} == {d for (d,) in sql(settings, "SELECT dlq_id FROM dlq")} - {
        r[0] for r in rows
    }

    # Only the new rows are left to replay; once fixed they land.
    push(settings, {ORDER: FIXED})
    again = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(again) == (5, 1, 0)
    assert again.skipped == 6


def events_topic(log: EmbeddedLog) -> dict[str, dict[str, Any]]:
    docs = [
        orjson.loads(r.value)
        for p in log.end_offsets("events")
        for r in log.read("events", p, 0, 10_000)
    ]
    return {d["messageId"]: d for d in docs}


def test_a_replayed_event_is_the_event_a_first_acceptance_makes(
    settings: Settings, log: EmbeddedLog, source_id: str, tmp_path: Path
) -> None:
    batch = [
        {**order(1), "anonymousId": "a1", "context": {"app": {"version": "2.0"}}},
        {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}},
    ]
    push(settings, {ORDER: STRICT, "identify": {"required": ["name"]}})
    send(log, source_id, batch, "req-1")
    drain(log, settings)
    push(settings, {ORDER: FIXED, "identify": {}})
    assert outcome(replay_dlq(settings, DlqFilter(), log=log)) == (2, 0, 0)
    replayed = events_topic(log)

    # The same request, sent once the plan was right, to another Clew.
    other = make_settings(tmp_path / "other")
    catalog = Catalog.open(other)
    other_source = catalog.create_source("web").id
    catalog.close()
    push(other, {ORDER: FIXED, "identify": {}})
    other_log = open_log(other)
    assert isinstance(other_log, EmbeddedLog)
    try:
        send(other_log, other_source, batch, "req-1")
        drain(other_log, other)
        accepted = events_topic(other_log)
    finally:
        other_log.close()
    assert len(accepted) == 2
    for doc in [*replayed.values(), *accepted.values()]:
        doc.pop("sourceId")
    assert replayed == accepted


class _Crash(Exception):
    pass


class CrashingLog(EmbeddedLog):
    """Dies on the ``crash_on``-th append to ``events``: before writing it, or after it is
    durable (``after_write``), as a process killed at either moment would."""

    def __init__(self, path: Path, crash_on: int, after_write: bool) -> None:
        super().__init__(path)
        self.crash_on = crash_on
        self.after_write = after_write
        self.appends = 0

    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        if topic == "events":
            self.appends += 1
            if self.appends == self.crash_on:
                if self.after_write:
                    super().append(topic, messages).result()
                raise _Crash
        return super().append(topic, messages)


@pytest.mark.parametrize("after_write", [False, True], ids=["before-append", "after-append"])
def test_an_interrupted_replay_resumes_and_lands_each_event_exactly_once(
    settings: Settings, log: EmbeddedLog, source_id: str, after_write: bool
) -> None:
    push(settings, {ORDER: STRICT})
    send(log, source_id, [order(i) for i in range(9)], "req-1")
    drain(log, settings)
    push(settings, {ORDER: FIXED})

    crashing = CrashingLog(settings.log_path, crash_on=2, after_write=after_write)
    try:
        with pytest.raises(_Crash):
            replay_dlq(settings, DlqFilter(), log=crashing, batch_size=2)
    finally:
        crashing.close()
    drain(log, settings)
    landed_before = 4 if after_write else 2
    assert len(event_ids(settings)) == landed_before

    resumed = replay_dlq(settings, DlqFilter(), log=log, batch_size=2)
    assert resumed.recovered == (2 if after_write else 0)
    assert resumed.skipped == resumed.recovered + 2
    assert outcome(resumed) == (9 - landed_before, 0, 0)
    drain(log, settings)
    assert event_ids(settings) == [f"m{i}" for i in range(9)]

    assert outcome(replay_dlq(settings, DlqFilter(), log=log)) == (0, 0, 0)


@pytest.mark.usefixtures("rejected")
def test_message_ids_accepted_another_way_are_duplicates(
    settings: Settings, log: EmbeddedLog, source_id: str
) -> None:
    # The app, fixed, sent two of the orders again; the plan now accepts them.
    send(log, source_id, [order(0, revenue=1.0), order(1, revenue=2.0)], "req-2")
    drain(log, settings)
    assert event_ids(settings) == ["m0", "m1"]

    report = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(report) == (3, 1, 2)
    drain(log, settings)
    assert event_ids(settings) == [f"m{i}" for i in range(5)]


def test_rows_sharing_a_message_id_land_it_once(
    settings: Settings, log: EmbeddedLog, source_id: str
) -> None:
    push(settings, {ORDER: STRICT})
    # An SDK retried a request the plan refused: the same event is dead-lettered twice.
    send(log, source_id, [order(7)], "req-1")
    send(log, source_id, [order(7)], "req-1-retry")
    drain(log, settings)
    push(settings, {ORDER: FIXED})
    assert outcome(replay_dlq(settings, DlqFilter(), log=log)) == (1, 0, 1)
    drain(log, settings)
    assert event_ids(settings) == ["m7"]


def test_an_envelope_error_stays_bad_with_its_generated_message_id(
    settings: Settings, log: EmbeddedLog, source_id: str
) -> None:
    send(log, source_id, [{"type": "track", "event": "Anonymous"}], "req-1")
    drain(log, settings)
    [(first_id, message_id)] = sql(settings, "SELECT dlq_id, message_id FROM dlq")
    report = replay_dlq(settings, DlqFilter(reasons=("no_identity",)), log=log)
    assert outcome(report) == (0, 1, 0)
    drain(log, settings)
    new = sql(settings, f"SELECT reason, message_id FROM dlq WHERE replay_of = '{first_id}'")
    assert new == [("no_identity", message_id)]


@pytest.mark.usefixtures("rejected")
def test_filters_and_a_dry_run_change_nothing_else(settings: Settings, log: EmbeddedLog) -> None:
    dry = replay_dlq(settings, DlqFilter(), log=log, dry_run=True)
    assert outcome(dry) == (5, 1, 0)
    none = replay_dlq(settings, DlqFilter(reasons=("no_identity",)), log=log)
    assert (none.selected, none.replayed) == (0, 0)
    two = replay_dlq(settings, DlqFilter(event="Order Completed", limit=2), log=log)
    assert (two.selected, outcome(two)) == (2, (2, 0, 0))
    drain(log, settings)
    assert event_ids(settings) == ["m0", "m1"]


@pytest.mark.usefixtures("rejected")
def test_one_replay_at_a_time(settings: Settings, log: EmbeddedLog) -> None:
    def start_another(report: ReplayReport) -> None:
        with pytest.raises(ReplayInProgressError, match="another `clew dlq replay` is running"):
            replay_dlq(settings, DlqFilter(), log=log)

    assert replay_dlq(settings, DlqFilter(), log=log, on_start=start_another).landed == 5


def _letter(source_id: str, n: int, **fields: Any) -> Message:
    """A dead letter as the validate stage writes it, with ``fields`` overriding."""
    doc = {
        "reason": "schema_violation",
        "message": "blocked",
        "payload": orjson.dumps(order(100 + n)).decode(),
        "source_id": source_id,
        "received_at": "2023-11-14T22:13:20.123456+00:00",
        "raw_partition": 0,
        "raw_offset": 1000 + n,
        "index": 0,
        "message_id": f"m{100 + n}",
        "event_type": "track",
        "event_name": "Order Completed",
        "dlq_id": f"0:{1000 + n}:0",
        **fields,
    }
    return Message(value=orjson.dumps(doc), key=source_id.encode())


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.usefixtures("rejected")
def test_rows_that_fail_again_or_cannot_be_read_never_stop_the_rest_of_the_replay(
    settings: Settings, log: EmbeddedLog, source_id: str
) -> None:
    deep_event = order(101)
    deep_event["properties"]["basket"] = orjson.loads(_nested(80))
    log.append_sync(
        "dlq",
        [
            # Its kept event is not JSON: reported and left as it is.
            _letter(source_id, 0, normalized="{not json"),
            # Too deep for the stages after validate: refused again, as validate refuses it.
            _letter(source_id, 1, reason="invalid_json", payload=orjson.dumps(deep_event).decode()),
            # Its kept event nests so deep that reading it raises: back with the error.
            _letter(
                source_id,
                2,
                normalized='{"type":"track","properties":{"x":' + _nested(100_000) + "}}",
            ),
        ],
    )
    drain(log, settings)

    report = replay_dlq(settings, DlqFilter(), log=log)
    assert outcome(report) == (5, 3, 0)
    assert (report.unreadable, report.unreadable_ids) == (1, ["0:1000:0"])
    assert report.still_bad_reasons == {
        "schema_violation": 1,
        "invalid_json": 1,
        "stage_failure": 1,
    }
    drain(log, settings)
    assert event_ids(settings) == [f"m{i}" for i in range(5)]
    back = dict(
        sql(
            settings,
            "SELECT replay_of, reason || ' ' || coalesce(stage, '') || ' ' || message FROM dlq "
            "WHERE replay_of LIKE '0:100%'",
        )
    )
    assert back["0:1001:0"].startswith("invalid_json  the event nests objects")
    assert back["0:1002:0"].startswith("stage_failure dlq-replay RecursionError")
    assert "0:1000:0" not in back

    # The unreadable row is reported again; the row put back with the error is not replayed
    # (the stage_failure rows are not the tracking plan's), the two refused again are.
    again = replay_dlq(settings, DlqFilter(), log=log)
    assert (again.unreadable, outcome(again)) == (1, (0, 2, 0))
