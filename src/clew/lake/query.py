"""Read-only SQL over the lake with DuckDB, in process.

Each query sees one consistent Delta snapshot per table (the latest when the connection is
made), even while the lake stage appends or compacts. Only SELECT-like statements run, and
DuckDB's access to files and settings is locked before the user's SQL does, so a query can
read the lake tables and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

    from clew.lake._storage import LakeLocation, TableLocation

# duckdb, deltalake and pyarrow are imported on first use: together they are most of an idle
# process's memory, and processes that never query (stage workers) should not pay for them.


class QueryError(ValueError):
    """The query cannot run; the message is DuckDB's or says what is not allowed."""


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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
    from clew.lake._storage import as_location

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
    ask for it."""

    def __init__(
        self, root: Path | LakeLocation, cold_root: Path | LakeLocation | None = None
    ) -> None:
        from clew.lake._storage import as_location

        self.location = as_location(root)
        self.cold_location = as_location(cold_root) if cold_root is not None else None

    def tables(self) -> list[str]:
        return [name for name, _, _ in _queryable() if self.location.table(name).exists()]

    def connect(self, include_cold: bool = False) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per lake table, locked down to reading them.

        A table that does not exist yet is an empty view of its schema, so queries written
        against a fresh install run and return nothing instead of failing. ``include_cold``
        makes each tiered table the union of its warm and cold rows."""
        import duckdb

        cold = self.cold_location if include_cold else None
        if include_cold and cold is None:
            raise QueryError("this lake has no cold tier configured")
        conn = duckdb.connect(":memory:")
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
        self, query: str, max_rows: int | None = None, include_cold: bool = False
    ) -> QueryResult:
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
        conn = self.connect(include_cold)
        try:
            result = None
            for st in statements:
                result = conn.execute(st)
            assert result is not None
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(max_rows) if max_rows is not None else result.fetchall()
            return QueryResult(columns, rows)
        except duckdb.Error as e:
            raise QueryError(str(e)) from None
        finally:
            conn.close()
