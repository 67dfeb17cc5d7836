"""`clew dlq list|show|stats|replay` against a data directory filled by a running Clew."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from _support import WRITE_KEY, lake_count, make_settings, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.cli import app
from clew.log.base import Message
from clew.stages.workers import build_stage

runner = CliRunner()

PLAN = """
source: tests
mode: block_violations
compatibility: NONE
"""
ORDER = """
event: Order Completed
schema:
  type: object
  properties:
    order_id: {{type: string}}
    revenue: {{type: number}}
  required: [{required}]
"""


def write_plan(directory: Path, required: str) -> Path:
    (directory / "events").mkdir(parents=True, exist_ok=True)
    (directory / "plan.yaml").write_text(PLAN)
    (directory / "events" / "order_completed.yaml").write_text(ORDER.format(required=required))
    return directory


def order(i: int, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"u{i}",
        "messageId": f"m{i}",
        "properties": {"order_id": f"o{i}", **props},
    }


def post(url: str, key: str, batch: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=(key, ""), timeout=10)
    assert response.status_code == 200


class Clew:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __call__(self, *args: str) -> Result:
        return runner.invoke(app, [*args, "--data-dir", str(self.data_dir)])

    def json(self, *args: str) -> Any:
        result = self(*args, "--format", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clew]:
    """A data dir whose `tests` source blocks orders without revenue and unplanned events,
    holding 3 schema violations, 1 unplanned event and 2 events without identity (one of
    them from the `default` source, which has no plan)."""
    root = tmp_path_factory.mktemp("dlq")
    settings = make_settings(root / "data")
    clew = Clew(settings.data_dir)
    assert clew("plan", "push", str(write_plan(root / "plan", "order_id, revenue"))).exit_code == 0
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        bad = [order(i) for i in range(3)]
        bad.append({"type": "track", "event": "Signed Up", "userId": "u9"})
        bad.append({"type": "track", "event": "Order Completed", "properties": {}})
        post(srv.url, WRITE_KEY, bad)
        post(srv.url, srv.clew.default_source.write_key, [{"type": "page", "name": "Home"}])
        wait_for(lambda: lake_count(settings.data_dir, "dlq") == 6)
    yield clew


def test_list_filters_by_reason_source_event_and_time(filled: Clew) -> None:
    rows = filled.json("dlq", "list")
    assert len(rows) == 6
    by_reason = sorted((r["reason"], r["source"], r["event_name"] or r["event_type"]) for r in rows)
    assert by_reason == [
        ("no_identity", "default", "page"),
        ("no_identity", "tests", "Order Completed"),
        ("schema_violation", "tests", "Order Completed"),
        ("schema_violation", "tests", "Order Completed"),
        ("schema_violation", "tests", "Order Completed"),
        ("unplanned_event", "tests", "Signed Up"),
    ]
    assert len(filled.json("dlq", "list", "--reason", "schema_violation")) == 3
    both = filled.json("dlq", "list", "--reason", "unplanned_event", "--reason", "no_identity")
    assert len(both) == 3
    [home] = filled.json("dlq", "list", "--source", "default")
    assert home["payload"] == '{"type":"page","name":"Home"}'
    [signed_up] = filled.json("dlq", "list", "--event", "Signed Up")
    assert "track event 'Signed Up' is not in the tracking plan" in signed_up["message"]
    assert filled.json("dlq", "list", "--since", "2999-01-01") == []
    assert len(filled.json("dlq", "list", "--until", "2999-01-01T00:00:00Z")) == 6
    assert filled.json("dlq", "list", "--until", "2000-01-01") == []

    table = filled("dlq", "list", "--limit", "2")
    assert table.exit_code == 0
    assert "2 of 6 dead letters not yet replayed; use --limit to see more" in table.stdout
    assert sum(r["dlq_id"] in table.stdout for r in rows) == 2

    unknown = filled("dlq", "list", "--source", "test")
    assert unknown.exit_code == 1
    assert "there is no source named 'test' (did you mean 'tests'?)" in unknown.stderr
    bad_time = filled("dlq", "list", "--since", "last tuesday")
    assert bad_time.exit_code == 2 and "--since must be an ISO-8601 time" in bad_time.stderr


def test_show_gives_reason_violations_schema_versions_and_payload(filled: Clew) -> None:
    [row] = filled.json("dlq", "list", "--reason", "schema_violation", "--limit", "1")
    doc = filled.json("dlq", "show", row["dlq_id"])
    assert doc["violations"] == [
        {
            "path": "$.properties.revenue",
            "keyword": "required",
            "message": "required property 'revenue' is missing",
            "subject": "track:Order Completed",
            "version": "1-0-0",
        }
    ]
    assert doc["schema_versions"] == {"track:Order Completed": "1-0-0"}
    assert doc["history"] == [] and doc["replayed"] is None

    text = filled("dlq", "show", row["dlq_id"]).stdout
    assert f"Dead letter {row['dlq_id']}" in text
    assert "schema_violation" in text and "$.properties.revenue" in text
    assert "track:Order Completed 1-0-0" in text
    assert '    "order_id": "o' in text  # the payload, pretty-printed
    assert "Not replayed yet." in text

    missing = filled("dlq", "show", "9:9:9")
    assert missing.exit_code == 1 and "no dead letter with id '9:9:9'" in missing.stderr


def test_stats_count_by_reason_source_event_and_hour(filled: Clew) -> None:
    stats = filled.json("dlq", "stats")
    assert stats["total"] == 6
    assert stats["by_kind"][0] == {
        "reason": "schema_violation",
        "source": "tests",
        "event": "Order Completed",
        "count": 3,
    }
    assert len(stats["by_kind"]) == 4
    assert sum(h["count"] for h in stats["by_hour"]) == 6
    assert all(h["hour"].endswith(":00:00+00:00") for h in stats["by_hour"])
    assert filled.json("dlq", "stats", "--source", "default")["by_kind"] == [
        {"reason": "no_identity", "source": "default", "event": "page", "count": 1}
    ]
    table = filled("dlq", "stats").stdout
    assert "By reason, source and event" in table and "By hour received" in table
    assert "6 dead letters not yet replayed" in table


def test_replay_lands_fixed_events_once_and_keeps_the_rest_with_the_new_reason(
    server: BackgroundServer, tmp_path: Path
) -> None:
    data_dir = server.settings.data_dir
    clew = Clew(data_dir)
    assert (
        clew("plan", "push", str(write_plan(tmp_path / "plan", "order_id, revenue"))).exit_code == 0
    )
    bad = [order(i) for i in range(4)]
    del bad[3]["properties"]["order_id"]
    post(server.url, WRITE_KEY, bad)
    wait_for(lambda: lake_count(data_dir, "dlq") == 4)
    assert clew("plan", "push", str(write_plan(tmp_path / "plan", "order_id"))).exit_code == 0

    dry = clew("dlq", "replay", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Would replay 4 dead letters" in dry.stdout
    assert lake_count(data_dir, "dlq") == 4

    result = clew("dlq", "replay")
    assert result.exit_code == 0, result.output
    summary = result.stdout
    assert "landed" in summary and "Replayed 4 dead letters" in summary
    assert "events/s" in summary
    wait_for(lambda: lake_count(data_dir) == 3 and lake_count(data_dir, "dlq") == 5)
    assert clew("sql", "SELECT message_id FROM events ORDER BY 1", "-f", "csv").stdout.split() == [
        "message_id",
        "m0",
        "m1",
        "m2",
    ]

    [left] = clew.json("dlq", "list")
    assert left["reason"] == "schema_violation"
    assert left["message"] == "$.properties.order_id: required property 'order_id' is missing"
    old_id = left["replay_of"]
    assert left["dlq_id"].startswith(old_id + "~")
    outcomes = sorted(
        (r["replayed"] or {}).get("outcome", "") for r in clew.json("dlq", "list", "--all")
    )
    assert outcomes == ["", "landed", "landed", "landed", "still_bad"]

    shown = clew.json("dlq", "show", old_id)
    assert [(h["outcome"], h["new_dlq_id"]) for h in shown["history"]] == [
        ("still_bad", left["dlq_id"])
    ]
    assert "still_bad" in clew("dlq", "show", old_id).stdout

    again = clew("dlq", "replay")
    assert again.exit_code == 0
    assert "Replayed 1 dead letter in" in again.stdout
    wait_for(lambda: lake_count(data_dir, "dlq") == 6)
    assert lake_count(data_dir) == 3


def test_replay_reports_a_row_it_cannot_read_and_replays_the_others(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    letters = [
        {
            "reason": "schema_violation",
            "message": "blocked",
            "payload": json.dumps(order(i)),
            "source_id": "src",
            "received_at": "2026-01-05T14:00:00+00:00",
            "raw_partition": 0,
            "raw_offset": i,
            "index": 0,
            "message_id": f"m{i}",
            "event_type": "track",
            "event_name": "Order Completed",
            # Row 0 kept an event that is not JSON; row 1 one that is.
            "normalized": "{not json" if i == 0 else None,
            "dlq_id": f"0:{i}:0",
        }
        for i in range(2)
    ]
    log = open_log(settings)
    try:
        log.append_sync("dlq", [Message(json.dumps(d).encode()) for d in letters])
        stage, closers = build_stage("lake", settings)
        consumer = log.consumer(stage.group, list(stage.topics))
        stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(max_records=100, timeout_s=0.1):
            stage.handle(records, consumer)
        stage.close(consumer)
        consumer.close()
        for close in closers:
            close()
    finally:
        log.close()

    result = Clew(settings.data_dir)("dlq", "replay")
    assert result.exit_code == 0, result.output
    assert "unreadable (left in the queue)" in result.stdout
    assert "cannot be decoded were skipped (`clew dlq show ID`): 0:0:0" in result.stdout
    assert "Replayed 1 dead letter in" in result.stdout
