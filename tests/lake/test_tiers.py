"""Hot/warm/cold tiers: moving old lake partitions to cold exactly once, purging, querying."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from _support import make_settings, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.clock import ManualClock
from clew.config import LakeSettings, LifecycleSettings, Settings
from clew.lake import _tier_moves
from clew.lake.lifecycle import LifecycleScheduler
from clew.lake.query import Lake
from clew.lake.tables import DLQ, EVENTS, TableDef, to_arrow
from clew.lake.tiers import (
    LifecycleBusyError,
    TierProgress,
    lifecycle_lock,
    run_lifecycle,
    tier_status,
)
from clew.log.base import Message

# Partitions dated before 2024-03-03 are older than the default 90 warm days.
NOW = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)
OLD_DAYS = ("2024-01-10", "2024-02-01", "2024-03-01")
YOUNG_DAYS = ("2024-05-01", "2024-05-31")


def _settings(tmp_path: Path, **lifecycle: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lake=LakeSettings(vacuum_retention_hours=0),
        lifecycle=LifecycleSettings(**lifecycle),
    )


def _event(day: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "messageId": f"{day}/{i}",
            "type": "track",
            "event": "Product Viewed",
            "userId": f"u{i % 3}",
            "timestamp": f"{day}T10:00:00Z",
            "receivedAt": f"{day}T10:00:01Z",
            "properties": {"i": i},
        }
    )


def _dead(day: str, i: int) -> bytes:
    return orjson.dumps(
        {"received_at": f"{day}T10:00:00Z", "reason": "invalid_json", "dlq_id": f"{day}/{i}"}
    )


def _write(settings: Settings, table: TableDef, values: list[bytes]) -> None:
    write_deltalake(
        str(settings.lake_path / table.name),
        to_arrow(table, values),
        mode="append",
        partition_by=[table.partition_by],
        schema_mode="merge",
    )


def _fill(settings: Settings, per_day: int = 4) -> None:
    for day in OLD_DAYS + YOUNG_DAYS:
        _write(settings, EVENTS, [_event(day, i) for i in range(per_day)])
    _write(settings, DLQ, [_dead(OLD_DAYS[0], 0), _dead(YOUNG_DAYS[0], 0)])


def _count(settings: Settings, table: str = "events", *, cold: bool = False) -> int:
    lake = Lake(settings.lake_path, settings.cold_path)
    return int(lake.sql(f"SELECT count(*) FROM {table}", include_cold=cold).rows[0][0])


def _dates(path: Path, column: str) -> set[str]:
    if not DeltaTable.is_deltatable(str(path)):
        return set()
    return {p[column] for p in DeltaTable(str(path)).partitions()}


def test_old_partitions_move_to_cold_and_young_ones_stay_warm(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    seen: list[TierProgress] = []
    report = run_lifecycle(settings, NOW_MS, progress=seen.append)
    assert _dates(settings.lake_path / "events", "event_date") == set(YOUNG_DAYS)
    assert _dates(settings.cold_path / "events", "event_date") == set(OLD_DAYS)
    assert _dates(settings.cold_path / "dlq", "received_date") == {OLD_DAYS[0]}
    events, dlq = report.tables
    assert (events.table, events.partitions_moved, events.rows_moved) == ("events", 3, 12)
    assert (dlq.partitions_moved, dlq.rows_moved) == (1, 1)
    assert events.warm_bytes_after < events.warm_bytes_before
    assert events.cold_bytes_before == 0 < events.cold_bytes_after
    assert sorted((p.table, str(p.partition), p.rows) for p in seen) == sorted(
        [("events", d, 4) for d in OLD_DAYS] + [("dlq", OLD_DAYS[0], 1)]
    )
    assert report.warm_before == dt.date(2024, 3, 3)
    status = {(s.table, s.tier): s for s in tier_status(settings)}
    assert status["events", "cold"].rows == 12
    assert str(status["events", "cold"].oldest) == OLD_DAYS[0]
    assert (status["events", "warm"].partitions, status["events", "warm"].rows) == (2, 8)


def test_queries_read_warm_by_default_and_cold_on_request(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    run_lifecycle(settings, NOW_MS)
    assert _count(settings) == 8
    assert _count(settings, cold=True) == 20
    assert _count(settings, "dlq") == 1
    assert _count(settings, "dlq", cold=True) == 2
    lake = Lake(settings.lake_path, settings.cold_path)
    ids = lake.sql("SELECT count(DISTINCT message_id) FROM events", include_cold=True).rows
    assert ids == [(20,)]


def test_a_second_run_moves_nothing_more(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    run_lifecycle(settings, NOW_MS)
    again = run_lifecycle(settings, NOW_MS)
    assert again.rows_moved == 0
    assert _count(settings, cold=True) == 20


class _Crash(BaseException):
    """The process dying mid-run (a table's ordinary error is caught and the run goes on)."""


def test_a_crash_between_cold_append_and_warm_delete_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    _fill(settings)

    def crash(self: DeltaTable, *args: Any, **kwargs: Any) -> None:
        raise _Crash

    with monkeypatch.context() as m:
        m.setattr(DeltaTable, "delete", crash)
        with pytest.raises(_Crash):
            run_lifecycle(settings, NOW_MS)
    # The cold append happened, the warm delete did not: both tiers hold the old rows.
    assert _count(settings) == 20
    # A late event for an already copied date arrives before the next run.
    _write(settings, EVENTS, [_event(OLD_DAYS[1], 99)])
    report = run_lifecycle(settings, NOW_MS)
    assert report.tables[0].partitions_moved == 3
    assert _count(settings) == 8
    assert _count(settings, cold=True) == 21
    lake = Lake(settings.lake_path, settings.cold_path)
    per_id = lake.sql(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM events GROUP BY message_id)",
        include_cold=True,
    )
    assert per_id.rows == [(1,)]


def test_an_append_to_a_moving_partition_is_moved_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lake sink appends a late event for an old date between the cold append and the
    warm delete: the delete conflicts, and the retry moves the late row too."""
    settings = _settings(tmp_path)
    _fill(settings)
    real_write = _tier_moves.write_deltalake
    calls = []

    def write_then_late_event(*args: Any, **kwargs: Any) -> None:
        real_write(*args, **kwargs)
        if not calls:
            calls.append(1)
            _write(settings, EVENTS, [_event(OLD_DAYS[0], 50)])

    monkeypatch.setattr(_tier_moves, "write_deltalake", write_then_late_event)
    report = run_lifecycle(settings, NOW_MS)
    assert report.tables[0].rows_moved == 13
    assert report.tables[0].partitions_deferred == 0
    assert _count(settings) == 8
    assert _count(settings, cold=True) == 21


def test_late_events_for_an_old_date_move_on_the_next_run(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    run_lifecycle(settings, NOW_MS)
    _write(settings, EVENTS, [_event(OLD_DAYS[2], 7), _event(OLD_DAYS[2], 8)])
    assert _dates(settings.lake_path / "events", "event_date") == {OLD_DAYS[2], *YOUNG_DAYS}
    report = run_lifecycle(settings, NOW_MS)
    assert (report.tables[0].partitions_moved, report.tables[0].rows_moved) == (1, 2)
    assert _dates(settings.lake_path / "events", "event_date") == set(YOUNG_DAYS)
    assert _count(settings, cold=True) == 22


def test_the_vacuumed_warm_table_holds_no_file_with_moved_rows(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    report = run_lifecycle(settings, NOW_MS)
    assert report.tables[0].files_vacuumed > 0
    moved = {f"{d}/{i}" for d in OLD_DAYS for i in range(4)}
    files = list((settings.lake_path / "events").rglob("*.parquet"))
    assert files
    on_disk = {m for f in files for m in pq.read_table(f, columns=["message_id"])["message_id"]}
    assert {str(m) for m in on_disk}.isdisjoint(moved)


def test_dry_run_reports_and_changes_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path, purge_after_days=120)
    _fill(settings)
    warm = DeltaTable(str(settings.lake_path / "events")).version()
    report = run_lifecycle(settings, NOW_MS, dry_run=True)
    assert (report.tables[0].partitions_moved, report.tables[0].rows_moved) == (3, 12)
    # Partitions before 2024-02-02 are older than 120 days: they would move, then be purged.
    assert (report.tables[0].partitions_purged, report.tables[0].rows_purged) == (2, 8)
    assert report.log_records_removed is None
    assert DeltaTable(str(settings.lake_path / "events")).version() == warm
    assert not settings.cold_path.exists()
    assert _count(settings) == 20


def test_cold_partitions_past_retention_are_purged(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    run_lifecycle(settings, NOW_MS)
    later = settings.model_copy(update={"lifecycle": LifecycleSettings(purge_after_days=120)})
    seen: list[TierProgress] = []
    report = run_lifecycle(later, NOW_MS, progress=seen.append)
    assert (report.tables[0].partitions_purged, report.tables[0].rows_purged) == (2, 8)
    assert {(p.action, str(p.partition)) for p in seen if p.table == "events"} == {
        ("purge", OLD_DAYS[0]),
        ("purge", OLD_DAYS[1]),
    }
    assert _dates(settings.cold_path / "events", "event_date") == {OLD_DAYS[2]}
    assert _count(settings, cold=True) == 12
    files = list((settings.cold_path / "events").rglob("*.parquet"))
    assert {f.parent.name for f in files} == {f"event_date={OLD_DAYS[2]}"}


def test_raw_log_retention_runs_with_the_lifecycle(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = open_log(settings)
    try:
        log.append_sync("raw", [Message(b"k", b"{}", timestamp_ms=1_000)])
        log.append_sync("raw", [Message(b"k", b"{}")])
        report = run_lifecycle(settings, NOW_MS, log=log)
    finally:
        log.close()
    assert report.log_records_removed == 1
    assert report.rows_moved == 0


def test_one_run_at_a_time(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with lifecycle_lock(settings.data_dir), pytest.raises(LifecycleBusyError):
        run_lifecycle(settings, NOW_MS)


def test_serve_counts_runs_and_sql_api_includes_cold_on_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    _fill(settings)
    with BackgroundServer(settings) as server:
        clew = server.clew
        clew.lifecycle.stop()
        scheduler = LifecycleScheduler(settings, clew.log, clock=ManualClock(NOW_MS))
        clew.lifecycle = scheduler
        scheduler.run_once()
        token = clew.catalog.create_token("analyst")
        headers = {"Authorization": f"Bearer {token}"}
        query = "SELECT count(*) FROM events"
        warm = httpx.post(f"{server.url}/v1/sql", json={"query": query}, headers=headers)
        both = httpx.post(
            f"{server.url}/v1/sql", json={"query": query, "include_cold": True}, headers=headers
        )
        bad = httpx.post(
            f"{server.url}/v1/sql", json={"query": query, "include_cold": "yes"}, headers=headers
        )
        metrics = httpx.get(f"{server.url}/metrics").text
    assert warm.json()["rows"] == [[8]]
    assert both.json()["rows"] == [[20]]
    assert bad.status_code == 400
    assert "clew_lifecycle_rows_moved_total 13" in metrics
    assert 'clew_lifecycle_runs_total{outcome="ok"} 1' in metrics


def test_rows_without_a_date_stay_warm(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    _write(settings, EVENTS, [orjson.dumps({"messageId": "undated", "type": "track"})])
    report = run_lifecycle(settings, NOW_MS)
    assert report.tables[0].rows_moved == 12
    assert _count(settings) == 9
    warm = {s.tier: s for s in tier_status(settings) if s.table == "events"}["warm"]
    assert (warm.partitions, warm.oldest) == (3, dt.date(2024, 5, 1))


def test_the_scheduler_runs_every_interval_and_can_be_off(tmp_path: Path) -> None:
    settings = _settings(tmp_path, run_every_minutes=0.001)
    _fill(settings)
    log = open_log(settings)
    scheduler = LifecycleScheduler(settings, log, clock=ManualClock(NOW_MS))
    try:
        scheduler.start()
        wait_for(lambda: scheduler.runs["ok"] >= 2)
    finally:
        scheduler.stop()
        log.close()
    assert scheduler.rows_moved == 13 and scheduler.last_run_seconds > 0
    off = LifecycleScheduler(_settings(tmp_path, run_every_minutes=0), log)
    off.start()
    assert not off.enabled and off.runs["ok"] == 0


def _corrupt_last_commit(table: Path) -> tuple[Path, bytes]:
    """Garble the newest entry of ``table``'s Delta log; returns it and its bytes."""
    entry = max((table / "_delta_log").glob("*.json"))
    good = entry.read_bytes()
    entry.write_bytes(b"{not json\n")
    return entry, good


def test_a_table_that_fails_does_not_stop_the_other_tables_or_log_retention(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    _fill(settings)
    _corrupt_last_commit(settings.lake_path / "events")
    log = open_log(settings)
    try:
        log.append_sync("raw", [Message(b"k", b"{}", timestamp_ms=1_000)])
        report = run_lifecycle(settings, NOW_MS, log=log)
    finally:
        log.close()
    events, dlq = report.tables
    assert events.error is not None and "DeltaError" in events.error
    assert report.failures == {"events": events.error}
    assert "events: failed" in report.summary()
    assert (dlq.error, dlq.partitions_moved) == (None, 1)
    assert _dates(settings.cold_path / "dlq", "received_date") == {OLD_DAYS[0]}
    assert report.log_records_removed == 1


def test_serve_reports_a_failing_lifecycle_until_a_run_succeeds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    _fill(settings)
    run_lifecycle(settings, NOW_MS)
    # Late events for an old day wait in the warm tier while the cold table cannot be read
    # (the lake stage writes only the warm one, so it keeps running).
    _write(settings, EVENTS, [_event(OLD_DAYS[0], 9)])
    entry, good = _corrupt_last_commit(settings.cold_path / "events")
    with BackgroundServer(settings) as server:
        clew = server.clew
        clew.lifecycle.stop()
        scheduler = LifecycleScheduler(settings, clew.log, clock=ManualClock(NOW_MS))
        clew.lifecycle = scheduler
        scheduler.run_once()
        failing = httpx.get(f"{server.url}/health").json()
        metrics = httpx.get(f"{server.url}/metrics").text
        entry.write_bytes(good)
        scheduler.run_once()
        healed = httpx.get(f"{server.url}/health").json()
    assert failing["ok"] is True and failing["status"] == "degraded"
    assert failing["lifecycle"]["status"] == "failing"
    assert failing["lifecycle"]["reason"].startswith("events: DeltaError")
    assert 'clew_lifecycle_runs_total{outcome="failed"} 1' in metrics
    assert 'clew_lifecycle_table_failures_total{table="events"} 1' in metrics
    assert _count(settings) == 8  # the late event moved once the cold table was readable
    assert healed["status"] == "ok"
    assert healed["lifecycle"] == {
        "enabled": settings.lifecycle.run_every_minutes > 0,
        "status": "ok",
        "reason": None,
        "failed_runs": 1,
    }
