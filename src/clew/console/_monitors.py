"""The volume monitors as the data-quality page shows them: every series with the state of its
last judged hour, the baseline its current hour is compared with (or that it is still
learning), and one series' recent hours. Read from the monitor's database, read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clew.monitor import HourCount, MonitorPolicy, SeriesHistory, SeriesKey
from clew.monitor.volume import baseline, hour_of, hour_start

SERIES_SHOWN = 200
CHART_HOURS = 48
LEARNING = "learning"
# Series needing a look first.
_ORDER = {"alert": 0, "ongoing": 1, "version_shift": 2, "low_volume": 3, "ok": 4, LEARNING: 5}


@dataclass(frozen=True, slots=True)
class SeriesRow:
    id: int
    key: SeriesKey
    first_seen: datetime
    # The last judged hour's verdict; None before the series was judged.
    judged: datetime | None
    status: str | None
    expected: float | None
    observed: int | None
    change_pct: float | None
    # The baseline of the hour under way: its method (weekly, seasonal, trailing) and value,
    # or LEARNING while the series has too little history.
    method: str
    baseline: float | None
    this_hour: HourCount


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection | None]:
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield db
    finally:
        db.close()


def _histories(
    db: sqlite3.Connection, ids: list[int], since: int
) -> dict[int, dict[int, HourCount]]:
    out: dict[int, dict[int, HourCount]] = {i: {} for i in ids}
    marks = ",".join("?" * len(ids))
    for series, bucket, accepted, dlq in db.execute(
        f"SELECT series, bucket, accepted, dlq FROM counts WHERE bucket >= ? "
        f"AND series IN ({marks})",
        [since, *ids],
    ):
        out[series][bucket] = HourCount(accepted, dlq)
    return out


def series_rows(path: Path, policy: MonitorPolicy, now: datetime) -> tuple[list[SeriesRow], int]:
    """The series (at most :data:`SERIES_SHOWN`, those alerting first) and how many there are."""
    current = hour_of(now)
    try:
        with _read_only(path) as db:
            if db is None:
                return [], 0
            return _series_rows(db, policy, current)
    except sqlite3.OperationalError:
        # The stage has not created its tables yet.
        return [], 0


def _series_rows(
    db: sqlite3.Connection, policy: MonitorPolicy, current: int
) -> tuple[list[SeriesRow], int]:
    rows: list[SeriesRow] = []
    total = int(db.execute("SELECT count(*) FROM series").fetchone()[0])
    found = db.execute(
        "SELECT s.id, s.event_name, s.source_id, s.app_version, s.first_bucket, t.bucket, "
        "t.status, t.expected, t.observed, t.change_pct FROM series s "
        "LEFT JOIN series_state t ON t.series = s.id "
        "ORDER BY CASE t.status WHEN 'alert' THEN 0 WHEN 'ongoing' THEN 1 ELSE 2 END, "
        "s.event_name, s.source_id, s.app_version LIMIT ?",
        (SERIES_SHOWN,),
    ).fetchall()
    histories = _histories(db, [r[0] for r in found], current - policy.lookback_hours)
    for sid, event, source, version, first, judged, status, expected, observed, change in found:
        history = SeriesHistory(first, histories[sid])
        base = baseline(history, current, policy)
        rows.append(
            SeriesRow(
                id=sid,
                key=SeriesKey(event, source, version),
                first_seen=hour_start(first),
                judged=hour_start(judged) if judged is not None else None,
                status=status,
                expected=expected,
                observed=observed,
                change_pct=change,
                method=base.method if base is not None else LEARNING,
                baseline=base.expected if base is not None else None,
                this_hour=history.at(current),
            )
        )
    rows.sort(key=lambda r: _ORDER.get(r.status or LEARNING, 6))
    return rows, total


def recent_hours(path: Path, series_id: int, now: datetime) -> dict[str, Any] | None:
    """One series' last :data:`CHART_HOURS` hours: labels and accepted and dead-lettered
    counts, or None for an unknown series."""
    current = hour_of(now)
    buckets = list(range(current - CHART_HOURS + 1, current + 1))
    try:
        with _read_only(path) as db:
            if db is None:
                return None
            if db.execute("SELECT 1 FROM series WHERE id = ?", (series_id,)).fetchone() is None:
                return None
            counts = _histories(db, [series_id], buckets[0])[series_id]
    except sqlite3.OperationalError:
        return None
    return {
        "labels": [hour_start(b).astimezone(UTC).strftime("%m-%d %H:00") for b in buckets],
        "accepted": [float(counts.get(b, HourCount()).accepted) for b in buckets],
        "dead-lettered": [float(counts.get(b, HourCount()).dlq) for b in buckets],
    }
