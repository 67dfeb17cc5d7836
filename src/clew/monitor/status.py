"""The monitor's status, read from its database (:mod:`clew.monitor.db`) by any process:
``/health`` and ``/metrics`` show it while the stage (:mod:`clew.stages.monitor`) runs."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from clew.monitor.volume import SeriesKey, hour_start


@dataclass(frozen=True, slots=True)
class SeriesState:
    key: SeriesKey
    bucket_start: datetime
    status: str
    expected: float | None
    observed: int
    dlq: int
    change_pct: float | None
    direction: str | None


@dataclass(frozen=True, slots=True)
class MonitorStatus:
    """What the monitor knows, read from its database (by any process).

    ``alerts_total`` counts alerts by (first signal, direction) since the database was
    created; ``series`` counts the series judged in the latest closed hour by status;
    ``alerting`` lists those whose status is ``alert`` or ``ongoing``.
    """

    judged_through: datetime | None = None
    alerts_total: dict[tuple[str, str], int] = field(default_factory=dict)
    records_total: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    alerting: list[SeriesState] = field(default_factory=list)
    webhook: dict[str, int] = field(default_factory=dict)

    def metric_families(self) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
        """(name, type, help, [(labels, value)]) for the Prometheus text format."""
        return [
            (
                "clew_monitor_alerts_total",
                "counter",
                "Volume alerts raised, by first signal and direction",
                [
                    (f'{{signal="{s}",direction="{d}"}}', n)
                    for (s, d), n in sorted(self.alerts_total.items())
                ],
            ),
            (
                "clew_monitor_records_total",
                "counter",
                "Records counted by the volume monitor, by kind",
                [(f'{{kind="{k}"}}', n) for k, n in sorted(self.records_total.items())],
            ),
            (
                "clew_monitor_series",
                "gauge",
                "Series judged in the latest closed hour, by status",
                [(f'{{status="{s}"}}', n) for s, n in sorted(self.series.items())],
            ),
            (
                "clew_monitor_series_change_pct",
                "gauge",
                "Change of accepted volume against the baseline, of each alerting series",
                [
                    (
                        f'{{event="{_label(s.key.event_name)}",source="{_label(s.key.source_id)}",'
                        f'app_version="{_label(s.key.app_version)}",direction="{s.direction}"}}',
                        s.change_pct or 0.0,
                    )
                    for s in self.alerting
                ],
            ),
            (
                "clew_monitor_webhook_alerts",
                "gauge",
                "Alerts kept by the monitor, by webhook delivery state",
                [(f'{{state="{s}"}}', n) for s, n in sorted(self.webhook.items())],
            ),
        ]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def read_status(state_path: Path) -> MonitorStatus:
    """The monitor's status from its database at ``state_path``; empty when the monitor has
    not run yet. Safe to call from another process while the stage runs."""
    if not state_path.exists():
        return MonitorStatus()
    db = sqlite3.connect(state_path, timeout=5)
    try:
        return _read_status(db)
    except sqlite3.OperationalError:
        return MonitorStatus()
    finally:
        db.close()


def _read_status(db: sqlite3.Connection) -> MonitorStatus:
    row = db.execute("SELECT value FROM meta WHERE name = 'judged_through'").fetchone()
    judged = None if row is None else int(row[0])
    alerts: dict[tuple[str, str], int] = {}
    records: dict[str, int] = {}
    for name, value in db.execute("SELECT name, value FROM counters"):
        if name.startswith("alerts:"):
            _, signal, direction = name.split(":", 2)
            alerts[(signal, direction)] = value
        elif name.startswith("records_"):
            records[name.removeprefix("records_")] = value
    series: dict[str, int] = {}
    alerting: list[SeriesState] = []
    if judged is not None:
        for status, n in db.execute(
            "SELECT status, count(*) FROM series_state WHERE bucket = ? GROUP BY status",
            (judged,),
        ):
            series[status] = n
        for ev, src, ver, b, status, expected, observed, dlq, change, direction in db.execute(
            "SELECT s.event_name, s.source_id, s.app_version, t.bucket, t.status, t.expected, "
            "t.observed, t.dlq, t.change_pct, t.direction FROM series_state t JOIN series s "
            "ON s.id = t.series WHERE t.bucket = ? AND t.status IN ('alert', 'ongoing') "
            "ORDER BY s.event_name, s.source_id, s.app_version",
            (judged,),
        ):
            alerting.append(
                SeriesState(
                    SeriesKey(ev, src, ver),
                    hour_start(b),
                    status,
                    expected,
                    observed,
                    dlq,
                    change,
                    direction,
                )
            )
    webhook = dict(db.execute("SELECT webhook, count(*) FROM alerts GROUP BY webhook").fetchall())
    return MonitorStatus(
        judged_through=hour_start(judged) if judged is not None else None,
        alerts_total=alerts,
        records_total=records,
        series=series,
        alerting=alerting,
        webhook=webhook,
    )
