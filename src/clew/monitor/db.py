"""The monitor's database (``monitor.db``): its SQL schema, opened by the stage
(:mod:`clew.stages.monitor`) that writes it and read by :mod:`clew.monitor.status`, and the
counts of one batch of records before they are added to it."""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clew._sqlite import open_sqlite
from clew.monitor.records import Observation
from clew.monitor.volume import SeriesKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    event_name TEXT NOT NULL,
    source_id TEXT NOT NULL,
    app_version TEXT NOT NULL,
    first_bucket INTEGER NOT NULL,
    last_bucket INTEGER NOT NULL,
    UNIQUE (event_name, source_id, app_version)
);
CREATE TABLE IF NOT EXISTS counts (
    bucket INTEGER NOT NULL,
    series INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    dlq INTEGER NOT NULL,
    PRIMARY KEY (bucket, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlq_reasons (
    bucket INTEGER NOT NULL,
    series INTEGER NOT NULL,
    reason TEXT NOT NULL,
    n INTEGER NOT NULL,
    example TEXT,
    PRIMARY KEY (bucket, series, reason)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series_state (
    series INTEGER PRIMARY KEY,
    bucket INTEGER NOT NULL,
    status TEXT NOT NULL,
    expected REAL,
    observed INTEGER NOT NULL,
    dlq INTEGER NOT NULL,
    change_pct REAL,
    direction TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    bucket INTEGER NOT NULL,
    log_key BLOB NOT NULL,
    body BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    webhook TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

ADD_COUNTER = (
    "INSERT INTO counters VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)


def open_monitor_db(path: Path) -> sqlite3.Connection:
    """The monitor's database at ``path``, created when missing (``synchronous=FULL``: the
    stored offsets must survive power loss with the counts they go with)."""
    return open_sqlite(path, SCHEMA, synchronous="FULL")


@dataclass(slots=True)
class CountBatch:
    """Counts of one batch of records, per series (and its all-versions rollup) and hour;
    DLQ reasons with the first message seen for each."""

    counts: dict[tuple[SeriesKey, int], list[int]] = field(default_factory=dict)
    reasons: Counter[tuple[SeriesKey, int, str]] = field(default_factory=Counter)
    examples: dict[tuple[SeriesKey, int, str], str] = field(default_factory=dict)

    def slots(self, key: SeriesKey, bucket: int) -> tuple[list[int], list[int]]:
        """The ``[accepted, dlq]`` counts of ``key`` and of its rollup in ``bucket``, made
        (zero) where missing, in the order :meth:`add` makes them; the caller adds to them."""
        counts = self.counts
        return (
            counts.setdefault((key, bucket), [0, 0]),
            counts.setdefault((key.rollup, bucket), [0, 0]),
        )

    def add(self, obs: Observation) -> None:
        for key in (obs.key, obs.key.rollup):
            slot = self.counts.setdefault((key, obs.bucket), [0, 0])
            slot[1 if obs.dead else 0] += 1
            if obs.dlq_reason is not None:
                self.reasons[(key, obs.bucket, obs.dlq_reason)] += 1
                self.examples.setdefault((key, obs.bucket, obs.dlq_reason), obs.dlq_message or "")
