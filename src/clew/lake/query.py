"""Read-only SQL over the lake with DuckDB, in process.

Each query sees one consistent Delta snapshot per table (the latest when the connection is
made), even while the lake stage appends or compacts. Only SELECT-like statements run, and
DuckDB's access to files and settings is locked before the user's SQL does, so a query can
read the lake tables and nothing else.

Each query is bounded (:class:`QueryLimits`): DuckDB's memory limit and threads, and a spill
directory of its own, made for it and removed after it, so that no query reads what another
spilled. A query can be interrupted from another thread (:class:`Interrupt`), and one that runs
past its timeout is.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clew._errors import ServiceUnavailableError

if TYPE_CHECKING:
    import duckdb

    from clew._locations import LakeLocation, TableLocation
    from clew.config import Settings

# duckdb, deltalake and pyarrow are imported on first use: together they are most of an idle
# process's memory, and processes that never query (stage workers) should not pay for them.


class QueryError(ValueError):
    """The query cannot run; the message is DuckDB's or says what is not allowed."""


class LakeUnavailableError(ServiceUnavailableError):
    """The lake's storage (a bucket, a disk) did not answer a read: nothing is wrong with the
    query, so ask again once the storage is back (the SQL API answers 503)."""


class QueryInterrupted(QueryError):
    """The query was stopped before it finished: it ran past its timeout, or the one who asked
    for it (an HTTP client that went away) interrupted it. Its memory and spill are freed."""


@dataclass(slots=True)
class QueryResult:
    """``rows``: at most the ``max_rows`` asked for; ``truncated``: the query had more.
    ``left_out`` counts those more rows when the caller asked for the count, else ``None``."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False
    left_out: int | None = None


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one query may use. ``memory_bytes``: DuckDB's ``memory_limit``; ``threads``:
    DuckDB's worker threads (``None``: one per core); ``spill_root``: the directory under which
    each query gets a private spill directory (``None``: no spilling, a query that needs more
    memory fails); ``max_spill``: DuckDB's ``max_temp_directory_size`` per query."""

    memory_bytes: int | None = None
    threads: int | None = None
    spill_root: Path | None = None
    max_spill: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, concurrent: int = 1) -> QueryLimits:
        """The ``sql`` settings for one of ``concurrent`` queries that may run at once: each
        gets an equal share of ``sql.memory_limit``, so together they stay within it."""
        sql = settings.sql
        return cls(
            memory_bytes=max(sql.memory_limit_bytes() // concurrent, 1),
            threads=sql.threads,
            spill_root=settings.sql_spill_path,
            max_spill=sql.max_spill,
        )


class Interrupt:
    """Stops one query from another thread. :meth:`interrupt` before the query starts makes it
    refuse to start; during it, DuckDB stops at its next check (milliseconds) and the query
    raises :class:`QueryInterrupted`; after it, nothing happens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self.interrupted = False

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted = True
            if self._conn is not None:
                self._conn.interrupt()

    def _attach(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        with self._lock:
            if conn is not None and self.interrupted:
                raise QueryInterrupted("the query was interrupted before it started")
            self._conn = conn


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _storage_failed(e: Exception) -> bool:
    """Whether DuckDB failed reading the lake's files rather than running the query: an I/O
    error of its own, or an Arrow dataset's (which DuckDB reports as invalid input naming
    Arrow's ``IOError``)."""
    import duckdb

    return isinstance(e, duckdb.IOException) or "IOError:" in str(e)


def _queryable() -> list[tuple[str, Any, str | None]]:
    """Every lake table: name, Arrow schema, partition column (``None``: unpartitioned)."""
    from clew.lake.tables import HISTORY_TABLES, STATE_TABLES, TABLES_BY_TOPIC

    return (
        [(t.name, t.schema, t.partition_by) for t in TABLES_BY_TOPIC.values()]
        + [(t.name, t.schema, None) for t in STATE_TABLES]
        + [(t.name, t.schema, t.partition_by) for t in HISTORY_TABLES]
    )


def register_tables(
    conn: duckdb.DuckDBPyConnection,
    root: Path | LakeLocation,
    cold_root: Path | LakeLocation | None = None,
) -> None:
    """Create one view per lake table under ``root`` in ``conn``, each over the latest Delta
    snapshot of its table. A table that does not exist yet is an empty view of its schema, so
    queries written against a fresh install run and return nothing instead of failing.

    With ``cold_root``, a table that also has a cold tier there (docs/lifecycle.md) is the
    union of both (by column name). The warm snapshot is taken first: a query running while a
    partition moves may count that partition twice for an instant, but never misses it.

    A root on object storage is read through deltalake (DuckDB's own S3 reader is an extension
    Clew does not rely on): each snapshot is registered as a pyarrow dataset, which DuckDB
    scans with projections and filters pushed down."""
    from clew._locations import as_location

    warm_root = as_location(root)
    cold = as_location(cold_root) if cold_root is not None else None
    local = warm_root.is_local and (cold is None or cold.is_local)
    for name, schema, partition_by in _queryable():
        roots = [warm_root] if cold is None else [warm_root, cold]
        if local:
            _register_files(conn, name, schema, partition_by, roots)
        else:
            _register_datasets(conn, name, schema, roots)
    for view in _DERIVED_VIEWS:
        conn.execute(view)


def _register_files(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    schema: Any,
    partition_by: str | None,
    roots: list[LakeLocation],
) -> None:
    files = [f for r in roots for f in _snapshot_files(r.table(name))]
    if not files:
        conn.register(name, schema.empty_table())
        return
    # DuckDB's own Parquet reader over the files of one Delta snapshot (the partition
    # column comes from the hive-style path). Clew's tables use no deletion vectors
    # or column mapping, so these files are exactly the snapshot's rows.
    listed = ", ".join(_sql_string(f) for f in files)
    hive = (
        f"hive_partitioning = true, hive_types = {{'{partition_by}': DATE}}"
        if partition_by is not None
        else "hive_partitioning = false"
    )
    conn.execute(
        f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}], {hive}, "
        "union_by_name = true)"
    )


def _register_datasets(
    conn: duckdb.DuckDBPyConnection, name: str, schema: Any, roots: list[LakeLocation]
) -> None:
    parts = []
    for i, root in enumerate(roots):
        dataset = root.table(name).dataset()
        if dataset is None:
            continue
        hidden = f"_clew_{name}_{i}"
        conn.register(hidden, dataset)
        parts.append(f"SELECT * FROM {hidden}")
    if not parts:
        conn.register(name, schema.empty_table())
        return
    conn.execute(f"CREATE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))


def _snapshot_files(table: TableLocation) -> list[str]:
    dt = table.open_if_exists()
    return [] if dt is None else list(dt.file_uris())


# Current state derived from the change history: who is in each audience now, and each
# profile's latest computed-trait values (profiles merged away or deleted are left out).
_DERIVED_VIEWS = (
    """CREATE VIEW audience_members AS
    SELECT profile_id, user_id, audience, changed_at AS entered_at
    FROM (
        SELECT *, row_number() OVER (
            PARTITION BY profile_id, audience ORDER BY changed_at DESC, kind DESC) AS rn
        FROM audience_changes WHERE audience IS NOT NULL)
    WHERE rn = 1 AND kind = 'audience_entered'
      AND profile_id IN (SELECT profile_id FROM customer_profiles)""",
    """CREATE VIEW computed_traits AS
    SELECT profile_id, user_id, trait, value, changed_at
    FROM (
        SELECT *, row_number() OVER (
            PARTITION BY profile_id, trait ORDER BY changed_at DESC) AS rn
        FROM audience_changes WHERE trait IS NOT NULL)
    WHERE rn = 1 AND value IS NOT NULL
      AND profile_id IN (SELECT profile_id FROM customer_profiles)""",
)


class Lake:
    """The lake at ``root`` (a directory or a :class:`LakeLocation` on object storage);
    ``cold_root`` is its cold tier (``Settings.cold_location``), read only by queries that
    ask for it. ``limits`` bound every query :meth:`sql` runs (none: DuckDB's defaults for
    memory and threads, and no spilling)."""

    def __init__(
        self,
        root: Path | LakeLocation,
        cold_root: Path | LakeLocation | None = None,
        limits: QueryLimits | None = None,
    ) -> None:
        from clew._locations import as_location

        self.location = as_location(root)
        self.cold_location = as_location(cold_root) if cold_root is not None else None
        self.limits = limits or QueryLimits()

    def tables(self) -> list[str]:
        return [name for name, _, _ in _queryable() if self.location.table(name).exists()]

    def connect(
        self, include_cold: bool = False, spill_dir: Path | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per lake table, locked down to reading them,
        within this lake's memory and thread limits.

        A table that does not exist yet is an empty view of its schema, so queries written
        against a fresh install run and return nothing instead of failing. ``include_cold``
        makes each tiered table the union of its warm and cold rows. ``spill_dir``: where the
        connection may spill (the caller's to remove; DuckDB always lets a connection read its
        own spill directory, so it must hold nothing else); ``None``: no spilling."""
        import duckdb

        cold = self.cold_location if include_cold else None
        if include_cold and cold is None:
            raise QueryError("this lake has no cold tier configured")
        config: dict[str, str | bool | int | float | list[str]] = {
            # DuckDB's default spills to `.tmp` under the working directory and lets every
            # query read it; an empty directory turns spilling off.
            "temp_directory": str(spill_dir.resolve()) if spill_dir is not None else "",
        }
        limits = self.limits
        if limits.memory_bytes is not None:
            config["memory_limit"] = f"{limits.memory_bytes}B"
        if limits.threads is not None:
            config["threads"] = limits.threads
        if spill_dir is not None and limits.max_spill is not None:
            config["max_temp_directory_size"] = limits.max_spill
        conn = duckdb.connect(":memory:", config=config)
        register_tables(conn, self.location, cold)
        conn.execute("SET TimeZone = 'UTC'")
        # Views over object storage are registered Arrow datasets: DuckDB needs no file
        # access for them, so only local roots are allowed.
        allowed = [r for r in (self.location, cold) if r is not None and r.is_local]
        listed = ", ".join(_sql_string(str(Path(r.uri).resolve())) for r in allowed)
        conn.execute(f"SET allowed_directories = [{listed}]")
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
        return conn

    def sql(
        self,
        query: str,
        max_rows: int | None = None,
        include_cold: bool = False,
        *,
        count_rest: bool = False,
        timeout_s: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> QueryResult:
        """Run a read-only ``query`` within this lake's limits; raise :class:`QueryError` when
        it cannot run and :class:`QueryInterrupted` when it is stopped.

        At most ``max_rows`` rows are returned (``truncated`` says whether there were more;
        with ``count_rest`` the rest are counted, streamed, into ``left_out``). A query still
        running after ``timeout_s`` seconds is interrupted; so is one whose ``interrupt`` is
        triggered. Either way its memory and its spill directory are freed before this
        returns."""
        import duckdb

        read_only = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as e:
            raise QueryError(str(e)) from None
        if not statements:
            raise QueryError("the query is empty")
        for st in statements:
            if st.type not in read_only:
                raise QueryError(
                    "only read-only queries (SELECT, WITH, EXPLAIN) are allowed, "
                    f"not {st.type.name}"
                )
        interrupt = interrupt or Interrupt()
        spill_dir = self._make_spill_dir()
        timer = None
        try:
            try:
                conn = self.connect(include_cold, spill_dir)
            except OSError as e:
                raise LakeUnavailableError(f"the lake's storage did not answer: {e}") from None
            try:
                interrupt._attach(conn)
                if timeout_s is not None:
                    timer = threading.Timer(timeout_s, interrupt.interrupt)
                    timer.daemon = True
                    timer.start()
                return _run(conn, statements, max_rows, count_rest)
            except duckdb.InterruptException:
                why = f"ran past its {timeout_s:g} s timeout" if timeout_s is not None else ""
                raise QueryInterrupted(
                    f"the query was interrupted{' (' + why + ')' if why else ''}; "
                    "narrow it (a filter on the partition date, fewer columns, a LIMIT)"
                ) from None
            except duckdb.Error as e:
                if _storage_failed(e):
                    raise LakeUnavailableError(f"the lake's storage did not answer: {e}") from None
                raise QueryError(str(e)) from None
            finally:
                if timer is not None:
                    timer.cancel()
                interrupt._attach(None)
                conn.close()
        finally:
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)

    def _make_spill_dir(self) -> Path | None:
        root = self.limits.spill_root
        if root is None:
            return None
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="query-", dir=root))


def _run(
    conn: duckdb.DuckDBPyConnection,
    statements: list[Any],
    max_rows: int | None,
    count_rest: bool,
) -> QueryResult:
    result = None
    for st in statements:
        result = conn.execute(st)
    assert result is not None
    columns = [d[0] for d in result.description or []]
    if max_rows is None:
        return QueryResult(columns, result.fetchall())
    rows = result.fetchmany(max_rows + 1)
    truncated = len(rows) > max_rows
    left_out = None
    if count_rest:
        left_out = len(rows) - max_rows if truncated else 0
        while truncated and (chunk := result.fetchmany(10_000)):
            left_out += len(chunk)
    return QueryResult(columns, rows[:max_rows], truncated, left_out)
