"""The data-quality page's reading of the monitor database: each series' baseline for the hour
under way (or that it is learning), its last verdict, alerting series first, and one series'
recent hours."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from clew.console._monitors import CHART_HOURS, LEARNING, recent_hours, series_rows
from clew.monitor import MonitorPolicy
from clew.monitor.db import open_monitor_db
from clew.monitor.volume import hour_of

NOW = datetime(2026, 3, 5, 12, 30, tzinfo=UTC)
HOUR = hour_of(NOW)


def _monitor_db(path: Path) -> None:
    db = open_monitor_db(path)
    with db:
        # 1: seen for ten hours, 30 an hour: a trailing baseline; judged ok last hour.
        # 2: first seen this hour: learning. 3: alerting in the hour judged last.
        db.executemany(
            "INSERT INTO series (id, event_name, source_id, app_version, first_bucket, "
            "last_bucket) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (1, "Order Completed", "src_a", "*", HOUR - 10, HOUR),
                (2, "Signed Up", "src_a", "*", HOUR, HOUR),
                (3, "Page Viewed", "src_a", "2.0", HOUR - 10, HOUR),
            ],
        )
        db.executemany(
            "INSERT INTO counts (bucket, series, accepted, dlq) VALUES (?, ?, ?, ?)",
            [(HOUR - h, 1, 30, 0) for h in range(1, 10)] + [(HOUR, 1, 12, 2), (HOUR, 2, 4, 0)],
        )
        db.executemany(
            "INSERT INTO series_state (series, bucket, status, expected, observed, dlq, "
            "change_pct, direction) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (1, HOUR - 1, "ok", 30.0, 30, 0, 0.0, None),
                (3, HOUR - 1, "alert", 100.0, 40, 0, -60.0, "drop"),
            ],
        )
    db.close()


def test_series_show_their_baseline_or_learning_alerting_first(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    _monitor_db(path)
    rows, total = series_rows(path, MonitorPolicy(), NOW)
    assert total == 3
    assert [r.key.event_name for r in rows] == ["Page Viewed", "Order Completed", "Signed Up"]
    alerting, steady, young = rows
    assert (alerting.status, alerting.change_pct) == ("alert", -60.0)
    assert (steady.method, steady.baseline, steady.status) == ("trailing", 30.0, "ok")
    assert (steady.this_hour.accepted, steady.this_hour.dlq) == (12, 2)
    assert (young.method, young.baseline, young.status) == (LEARNING, None, None)


def test_recent_hours_of_one_series(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    _monitor_db(path)
    hours = recent_hours(path, 1, NOW)
    assert hours is not None
    assert len(hours["labels"]) == CHART_HOURS and hours["labels"][-1] == "03-05 12:00"
    assert hours["accepted"][-3:] == [30.0, 30.0, 12.0]
    assert hours["dead-lettered"][-1] == 2.0
    assert recent_hours(path, 99, NOW) is None


def test_no_monitor_database_yet(tmp_path: Path) -> None:
    assert series_rows(tmp_path / "monitor.db", MonitorPolicy(), NOW) == ([], 0)
    assert recent_hours(tmp_path / "monitor.db", 1, NOW) is None
