"""The Delta mechanics of the lifecycle: partition statistics, moving warm partitions into
the cold table exactly once, purging cold partitions, vacuuming.

A move of partitions ``D`` of one table, read at warm version ``V``:

1. append the rows of ``D`` at ``V`` to the cold table, in one commit carrying an application
   transaction ``clew-tier:{table}:{date}`` = ``V`` for every date of ``D``;
2. delete ``D`` from the warm table *through the snapshot at V*, in one commit carrying the
   same application transactions.

Step 2 is an ordinary Delta delete, so Delta's conflict check makes it remove only what step 1
copied: if anything changed ``D`` in the warm table after ``V`` (the lake sink appending a late
event for an old date, its compaction, a privacy deletion), the commit fails instead of
removing rows that were never copied. Appends to other partitions (today's events) do not
conflict.

Recovery: for a date whose cold transaction is newer than its warm one, step 1 happened and
step 2 did not (a crash, or the conflict above). Its warm rows are then copied minus the rows
the cold table already holds for that date (a multiset difference on whole rows), and the warm
delete is retried; so a crash or conflict between the two commits neither duplicates nor loses
rows (a late row identical in every column to a row moved earlier would count as copied;
the difference is by multiplicity, so genuine repeats within the copy survive). Application
transactions rather than commit metadata: they are part of the table's snapshot
(``transaction_version``), survive checkpoints and cost one lookup each.

Two moves of the same table must not run at once (both would copy the same rows before either
deletes them): :mod:`clew.lake.tiers` holds a lock around every run. A deletion from both
tiers that lands after step 1 read its rows and before step 1 commits would find the rows in
neither tier yet see them reappear in cold; deleters avoid that by holding the same lock
(:func:`clew.lake.tiers.lifecycle_lock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.dataset as pds
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError

from clew._locations import TableLocation
from clew.lake.tables import TableDef

logger = logging.getLogger(__name__)

# Cold data is written once and read rarely, so it is compressed with zstd instead of the warm
# tier's snappy, without dictionary encoding (on event rows most columns are near-unique and a
# dictionary is built only to be abandoned: plain pages under zstd come out ~35% smaller and
# ~40% cheaper to write), into large files and row groups. Measured on event rows: the cold
# copy is 3-6x smaller than the warm files; zstd levels 6 and 9 cost 2-3x the CPU of level 3
# for no smaller files, so level 3 it is.
COLD_ZSTD_LEVEL = 3
COLD_ROW_GROUP_ROWS = 1024 * 1024
COLD_FILE_BYTES = 256 * 1024 * 1024
# Warm bytes (compressed) moved per pair of commits: the writer buffers a batch's rows until it
# commits, and a conflict makes a retry redo one batch, not the whole backlog.
BATCH_BYTES = 64 * 1024 * 1024
# Tries per partition when the warm table keeps changing under a move.
ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class PartitionStat:
    files: int
    rows: int
    bytes: int


def tier_app_id(table: TableDef, day: date) -> str:
    return f"clew-tier:{table.name}:{day.isoformat()}"


def open_table(path: TableLocation) -> DeltaTable | None:
    return path.open_if_exists()


def partition_stats(dt: DeltaTable | None, column: str) -> dict[date | None, PartitionStat]:
    """Files, rows and bytes per partition date of the snapshot ``dt`` (empty for ``None``);
    the key ``None`` holds rows whose date is null."""
    if dt is None:
        return {}
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return {}
    grouped = actions.group_by(f"partition.{column}").aggregate(
        [("path", "count"), ("num_records", "sum"), ("size_bytes", "sum")]
    )
    return {
        row[f"partition.{column}"]: PartitionStat(
            row["path_count"], row["num_records_sum"] or 0, row["size_bytes_sum"] or 0
        )
        for row in grouped.to_pylist()
    }


def _in_dates(column: str, days: Sequence[date]) -> str:
    listed = ", ".join(f"'{d.isoformat()}'" for d in days)
    return f"{column} IN ({listed})"


def _batches(days: Sequence[date], stats: dict[date | None, PartitionStat]) -> Iterator[list[date]]:
    batch: list[date] = []
    size = 0
    for day in sorted(days):
        if batch and size + stats[day].bytes > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(day)
        size += stats[day].bytes
    if batch:
        yield batch


def move_partitions(
    table: TableDef,
    warm_path: TableLocation,
    cold_path: TableLocation,
    days: Sequence[date],
    stats: dict[date | None, PartitionStat],
    on_moved: Callable[[date, int], None],
) -> list[date]:
    """Move ``days`` of ``table`` from the warm to the cold table, calling ``on_moved(day,
    rows)`` once each day is committed on both sides. Returns the days left unmoved because
    the warm table kept changing under every attempt (they move on the next run)."""
    deferred: list[date] = []
    for batch in _batches(days, stats):
        moved = _move(table, warm_path, cold_path, batch)
        if moved is None:
            # Something changed one of the batch's partitions: retry them one by one, so one
            # busy partition neither holds back nor re-reads the others.
            moved = {}
            for day in batch:
                for _ in range(ATTEMPTS):
                    one = _move(table, warm_path, cold_path, [day])
                    if one is not None:
                        moved.update(one)
                        break
                else:
                    deferred.append(day)
        for day, rows in sorted(moved.items()):
            on_moved(day, rows)
    return deferred


def _move(
    table: TableDef, warm_path: TableLocation, cold_path: TableLocation, days: Sequence[date]
) -> dict[date, int] | None:
    """One move of ``days`` (see the module docstring); the rows moved per day, or ``None``
    when the warm table changed under it and nothing was deleted from it."""
    warm = warm_path.open()
    version = warm.version()
    stats = partition_stats(warm, table.partition_by)
    present = [d for d in days if d in stats]
    if not present:
        return {}
    cold = open_table(cold_path)
    # Only a date the cold table holds rows of can have been copied already (a transaction
    # lookup costs milliseconds; a first move of a backlog needs none).
    in_cold = partition_stats(cold, table.partition_by)
    unfinished = [
        d
        for d in present
        if cold is not None and d in in_cold and _unfinished(table, warm, cold, d)
    ]
    txns = [Transaction(tier_app_id(table, d), version) for d in present]
    metadata = {"clew.operation": "tier-move", "clew.warm_version": str(version)}
    write_deltalake(
        cold if cold is not None else cold_path.uri,
        _rows(table, (warm, warm_path), (cold, cold_path), present, unfinished),
        storage_options=None if cold is not None else cold_path.storage_options,
        mode="append",
        partition_by=[table.partition_by],
        schema_mode="merge",
        target_file_size=COLD_FILE_BYTES,
        writer_properties=WriterProperties(
            compression="ZSTD",
            compression_level=COLD_ZSTD_LEVEL,
            max_row_group_size=COLD_ROW_GROUP_ROWS,
            default_column_properties=ColumnProperties(dictionary_enabled=False),
        ),
        commit_properties=CommitProperties(app_transactions=txns, custom_metadata=metadata),
    )
    try:
        warm.delete(
            _in_dates(table.partition_by, present),
            commit_properties=CommitProperties(app_transactions=txns, custom_metadata=metadata),
        )
    except CommitFailedError as e:
        logger.info("%s %s changed while moving to cold; retrying (%s)", table.name, present, e)
        return None
    return {d: stats[d].rows for d in present}


def _unfinished(table: TableDef, warm: DeltaTable, cold: DeltaTable, day: date) -> bool:
    copied = cold.transaction_version(tier_app_id(table, day))
    deleted = warm.transaction_version(tier_app_id(table, day))
    return copied is not None and (deleted is None or copied > deleted)


def _rows(
    table: TableDef,
    warm: tuple[DeltaTable, TableLocation],
    cold: tuple[DeltaTable | None, TableLocation],
    present: Sequence[date],
    unfinished: Sequence[date],
) -> pa.RecordBatchReader:
    """The rows to append to the cold table: every warm row of the finished days, streamed;
    for the unfinished days, the warm rows the cold table does not hold yet."""
    clean = [d for d in present if d not in unfinished]
    schema = pa.schema(warm[0].schema().to_arrow())
    cold_table, cold_at = cold

    def batches() -> Iterator[pa.RecordBatch]:
        if clean:
            yield from _dataset(*warm, table.partition_by, clean).to_batches()
        if unfinished and cold_table is not None:
            yield from _not_in_cold(table, warm, (cold_table, cold_at), unfinished).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _dataset(
    dt: DeltaTable, location: TableLocation, column: str, days: Sequence[date]
) -> pds.Dataset:
    """The rows of ``days`` in the snapshot ``dt`` (of the table at ``location``), as a
    dataset over exactly its files.

    The files are read with Arrow's own file system (local, or S3 with the lake's
    credentials): the Delta reader's file system wrapper calls back into Python for each
    read, which costs a quarter of a move's time, and cannot be used at all while the
    Delta writer pulls these rows (it would start its runtime inside its own)."""
    schema = pa.schema(dt.schema().to_arrow())
    filesystem, base = location.filesystem()
    actions = pa.table(dt.get_add_actions(flatten=True))
    wanted = set(days)
    files = [
        f"{base}/{path}"
        for path, day in zip(
            actions["path"].to_pylist(), actions[f"partition.{column}"].to_pylist(), strict=True
        )
        if day in wanted
    ]
    return pds.dataset(
        files,
        schema=schema,
        format="parquet",
        filesystem=filesystem,
        partitioning=pds.partitioning(pa.schema([(column, pa.date32())]), flavor="hive"),
        partition_base_dir=base,
    )


def _not_in_cold(
    table: TableDef,
    warm: tuple[DeltaTable, TableLocation],
    cold: tuple[DeltaTable, TableLocation],
    days: Sequence[date],
) -> pa.Table:
    import duckdb

    warm_rows = _dataset(*warm, table.partition_by, days).to_table()
    cold_rows = _dataset(*cold, table.partition_by, days).to_table()
    have = set(cold_rows.column_names)
    cold_cols = ", ".join(
        f'"{n}"' if n in have else f'NULL AS "{n}"' for n in warm_rows.column_names
    )
    warm_cols = ", ".join(f'"{n}"' for n in warm_rows.column_names)
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        conn.register("warm_rows", warm_rows)
        conn.register("cold_rows", cold_rows)
        missing = conn.sql(
            f"SELECT {warm_cols} FROM warm_rows EXCEPT ALL SELECT {cold_cols} FROM cold_rows"
        ).to_arrow_table()
    finally:
        conn.close()
    return missing.cast(warm_rows.schema)


def delete_partitions(path: TableLocation, column: str, days: Sequence[date]) -> bool:
    """Delete ``days`` from the table at ``path``; False when a concurrent change kept the
    commit from going through every attempt."""
    for _ in range(ATTEMPTS):
        dt = path.open()
        try:
            dt.delete(
                _in_dates(column, days),
                commit_properties=CommitProperties(custom_metadata={"clew.operation": "purge"}),
            )
        except CommitFailedError as e:
            logger.info("purge of %s changed concurrently; retrying (%s)", path, e)
            continue
        return True
    return False


def vacuum(path: TableLocation, retention_hours: float) -> int:
    """Remove files no snapshot younger than ``retention_hours`` references; returns how many."""
    dt = open_table(path)
    if dt is None:
        return 0
    return len(
        dt.vacuum(
            retention_hours=int(retention_hours),
            enforce_retention_duration=False,
            dry_run=False,
        )
    )
