"""Hot, warm and cold data (docs/lifecycle.md).

- Hot: the serving store, already bounded to ``identity.history`` events per profile; a run
  only reports its size.
- Warm: the lake's partitioned history tables (``events`` by ``event_date``, ``dlq`` by
  ``received_date``), queried by default.
- Cold: partitions older than ``lifecycle.warm_days`` move to Delta tables of the same names,
  schemas and partitioning under ``Settings.cold_location`` (a directory or object storage),
  compressed harder; queried with ``clew sql --include-cold``. Cold partitions older than
  ``lifecycle.purge_after_days`` are deleted, and the raw log's retention runs too.

A run is exactly-once per partition even across crashes and while the lake sink appends (see
:mod:`clew.lake._tier_moves`), and one run at a time holds the data directory's lifecycle lock.
Partition ages are measured against ``now_ms`` (event time: a demo's accelerated clock or
``clew lifecycle run --now``); the raw log's retention against the wall clock, because its
record timestamps are append times.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from clew._datadir import LIFECYCLE_LOCK, lock_path
from clew._errors import describe
from clew.config import Settings
from clew.lake.tables import TABLES_BY_TOPIC, TableDef

if TYPE_CHECKING:
    from clew._locations import LakeLocation
    from clew.lake._tier_moves import PartitionStat
    from clew.log.base import Log

logger = logging.getLogger(__name__)

# The tables that tier: append-only histories partitioned by a date. audience_changes stays
# warm: the audience_members and computed_traits views derive current state from all of it.
TIERED_TABLES: tuple[TableDef, ...] = tuple(TABLES_BY_TOPIC.values())


class LifecycleBusyError(RuntimeError):
    """Another lifecycle run holds the data directory's lifecycle lock."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"another lifecycle run is in progress on {data_dir}; wait for it to finish"
        )


@dataclass(frozen=True, slots=True)
class TierProgress:
    """One partition done: moved to cold, or purged from cold."""

    table: str
    action: Literal["move", "purge"]
    partition: date
    rows: int


@dataclass(slots=True)
class TableTierReport:
    """What a run did to one table. Bytes are those of the live Delta snapshot (files a
    vacuum keeps for readers' safety are not counted). In a dry run the counts say what would
    move or be purged, and the bytes do not change."""

    table: str
    partitions_moved: int = 0
    rows_moved: int = 0
    partitions_purged: int = 0
    rows_purged: int = 0
    # Partitions whose move was retried and failed because the warm table kept changing
    # under it; they move on the next run.
    partitions_deferred: int = 0
    warm_bytes_before: int = 0
    warm_bytes_after: int = 0
    cold_bytes_before: int = 0
    cold_bytes_after: int = 0
    files_vacuumed: int = 0
    seconds: float = 0.0
    # Why the table failed this run (``Type: message``); what it did before the failure is
    # consistent but not in the counts, and the next run finishes it. None: it did not fail.
    error: str | None = None


@dataclass(slots=True)
class LifecycleReport:
    now_ms: int
    dry_run: bool
    # Partitions dated before these moved to cold, and were purged from cold (None: never).
    warm_before: date
    purge_before: date | None
    tables: list[TableTierReport] = field(default_factory=list)
    # Records the raw log's retention removed (None: not run, as in a dry run).
    log_records_removed: int | None = None
    # The serving store (hot tier): its size on disk (None: it is not a file, but Redis), and
    # the events kept per profile.
    hot_bytes: int | None = 0
    hot_history_per_profile: int = 0
    seconds: float = 0.0

    @property
    def rows_moved(self) -> int:
        return sum(t.rows_moved for t in self.tables)

    @property
    def rows_purged(self) -> int:
        return sum(t.rows_purged for t in self.tables)

    @property
    def failures(self) -> dict[str, str]:
        """The error of each table that failed this run, by table name."""
        return {t.table: t.error for t in self.tables if t.error is not None}

    def summary(self) -> str:
        """One line for the log."""
        verb = "would move" if self.dry_run else "moved"
        tables = "; ".join(
            f"{t.table}: failed ({t.error})"
            if t.error is not None
            else f"{t.table}: {t.partitions_moved} partitions / {t.rows_moved} rows {verb}, "
            f"{t.partitions_purged} / {t.rows_purged} purged"
            + (f", {t.partitions_deferred} deferred" if t.partitions_deferred else "")
            for t in self.tables
        )
        log = "skipped" if self.log_records_removed is None else str(self.log_records_removed)
        return (
            f"lifecycle (warm before {self.warm_before}, purge before "
            f"{self.purge_before or 'never'}): {tables}; log records removed: {log}; "
            f"{self.seconds:.2f}s"
        )


@dataclass(frozen=True, slots=True)
class TierStatus:
    """One table in one tier, as `clew lifecycle status` shows it."""

    table: str
    tier: Literal["warm", "cold"]
    partitions: int
    rows: int
    bytes: int
    oldest: date | None
    newest: date | None


def _cutoff(now_ms: int, days: float) -> date:
    """Partitions dated before the returned day hold only data older than ``days``."""
    return (datetime.fromtimestamp(now_ms / 1000, tz=UTC) - timedelta(days=days)).date()


@contextmanager
def lifecycle_lock(data_dir: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the data directory's lifecycle lock: lifecycle runs take it, and so may anything
    that must not interleave with a move (a deletion of rows a move is copying). Raises
    :class:`LifecycleBusyError` if it is held and ``wait`` is false."""
    path = lock_path(data_dir, LIFECYCLE_LOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LifecycleBusyError(data_dir) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_lifecycle(
    settings: Settings,
    now_ms: int,
    *,
    dry_run: bool = False,
    progress: Callable[[TierProgress], None] | None = None,
    log: Log | None = None,
) -> LifecycleReport:
    """Move warm partitions older than ``warm_days`` to cold, purge cold partitions older
    than ``purge_after_days``, vacuum both, and run the raw log's retention on ``log`` (when
    given). ``progress`` is called once per partition moved or purged (or, in a dry run,
    that would be).

    ``dry_run`` reads only: the report says what a run would move and purge. Raises
    :class:`LifecycleBusyError` when another run is in progress. A table that fails (a Delta
    log it cannot read, a move that raises) is left consistent, its error goes into its
    :attr:`TableTierReport.error`, and the run goes on with the other tables and the log's
    retention; the next run finishes its work. Errors of the log's retention are raised."""
    started = time.perf_counter()
    lc = settings.lifecycle
    report = LifecycleReport(
        now_ms=now_ms,
        dry_run=dry_run,
        warm_before=_cutoff(now_ms, lc.warm_days),
        purge_before=_cutoff(now_ms, lc.purge_after_days) if lc.purge_after_days else None,
        hot_history_per_profile=settings.identity.history,
        hot_bytes=_hot_bytes(settings),
    )
    notify = progress or (lambda _: None)
    with lifecycle_lock(settings.data_dir):
        for table in TIERED_TABLES:
            try:
                report.tables.append(_run_table(settings, table, report, dry_run, notify))
            except Exception as exc:
                logger.exception("lifecycle: table %s failed; going on without it", table.name)
                report.tables.append(TableTierReport(table.name, error=describe(exc)))
        if log is not None and not dry_run:
            report.log_records_removed = log.enforce_retention(time.time_ns() // 1_000_000)
    report.seconds = time.perf_counter() - started
    return report


def _run_table(
    settings: Settings,
    table: TableDef,
    report: LifecycleReport,
    dry_run: bool,
    notify: Callable[[TierProgress], None],
) -> TableTierReport:
    from clew.lake import _tier_moves as moves

    started = time.perf_counter()
    warm_path = settings.lake_location.table(table.name)
    cold_path = settings.cold_location.table(table.name)
    col = table.partition_by
    warm = moves.partition_stats(moves.open_table(warm_path), col)
    cold = moves.partition_stats(moves.open_table(cold_path), col)
    out = TableTierReport(
        table.name, warm_bytes_before=_bytes(warm), cold_bytes_before=_bytes(cold)
    )
    # A row without a date (its partition value is null) has no age: it stays where it is.
    to_move = sorted(d for d in warm if d is not None and d < report.warm_before)
    purge_before = report.purge_before
    if dry_run:
        out.partitions_moved = len(to_move)
        out.rows_moved = sum(warm[d].rows for d in to_move)
        for d in to_move:
            notify(TierProgress(table.name, "move", d, warm[d].rows))
        if purge_before is not None:
            would_purge = {d: s.rows for d, s in cold.items() if d is not None and d < purge_before}
            for d in to_move:
                if d < purge_before:
                    would_purge[d] = would_purge.get(d, 0) + warm[d].rows
            out.partitions_purged = len(would_purge)
            out.rows_purged = sum(would_purge.values())
            for d, rows in sorted(would_purge.items()):
                notify(TierProgress(table.name, "purge", d, rows))
        out.warm_bytes_after, out.cold_bytes_after = out.warm_bytes_before, out.cold_bytes_before
        out.seconds = time.perf_counter() - started
        return out

    def moved(day: date, rows: int) -> None:
        out.partitions_moved += 1
        out.rows_moved += rows
        notify(TierProgress(table.name, "move", day, rows))

    if to_move:
        deferred = moves.move_partitions(table, warm_path, cold_path, to_move, warm, moved)
        out.partitions_deferred = len(deferred)
        out.files_vacuumed += moves.vacuum(warm_path, settings.lake.vacuum_retention_hours)
    if purge_before is not None:
        cold = moves.partition_stats(moves.open_table(cold_path), col)
        doomed = sorted(d for d in cold if d is not None and d < purge_before)
        if doomed and moves.delete_partitions(cold_path, col, doomed):
            for day in doomed:
                out.partitions_purged += 1
                out.rows_purged += cold[day].rows
                notify(TierProgress(table.name, "purge", day, cold[day].rows))
            out.files_vacuumed += moves.vacuum(cold_path, settings.lake.vacuum_retention_hours)
    out.warm_bytes_after = _bytes(moves.partition_stats(moves.open_table(warm_path), col))
    out.cold_bytes_after = _bytes(moves.partition_stats(moves.open_table(cold_path), col))
    out.seconds = time.perf_counter() - started
    return out


def tier_status(settings: Settings) -> list[TierStatus]:
    """Every tiered table in the warm and the cold tier (tables not created yet are empty)."""
    from clew.lake import _tier_moves as moves

    roots: tuple[tuple[Literal["warm", "cold"], LakeLocation], ...] = (
        ("warm", settings.lake_location),
        ("cold", settings.cold_location),
    )
    out: list[TierStatus] = []
    for table in TIERED_TABLES:
        for tier, root in roots:
            stats = moves.partition_stats(
                moves.open_table(root.table(table.name)), table.partition_by
            )
            dated = [d for d in stats if d is not None]
            out.append(
                TierStatus(
                    table.name,
                    tier,
                    partitions=len(stats),
                    rows=sum(s.rows for s in stats.values()),
                    bytes=_bytes(stats),
                    oldest=min(dated, default=None),
                    newest=max(dated, default=None),
                )
            )
    return out


def _bytes(stats: dict[date | None, PartitionStat]) -> int:
    return sum(s.bytes for s in stats.values())


def _hot_bytes(settings: Settings) -> int | None:
    """The serving store's size when it is a file on this machine (else not known here)."""
    from clew.backends import serving_store_file

    path = serving_store_file(settings)
    return None if path is None else _file_bytes(path)


def _file_bytes(path: Path) -> int:
    """A SQLite database's size with its write-ahead log."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
