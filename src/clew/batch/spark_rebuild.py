"""The batch layer on Spark (``clew rebuild --engine spark``): the same ``customer_profiles``
and ``identities`` as the DuckDB rebuild (:mod:`clew.batch.rebuild`), computed by PySpark over
the lake's Delta tables and written back by Spark's Delta writer.

How, in four steps, each a Spark job:

1. read ``events`` (warm and cold tiers) and turn each event into its identity payload, order
   amount and identifier nodes, in Python workers (``_spark_rows.prepare``: the same
   extraction code as the speed layer, so no rule is re-implemented);
2. connected components of the identifier graph with DataFrames (``_spark_components``);
3. shuffle the events by component, sort them by event time (ties: ``received_at``, then
   ``message_id``, as the DuckDB rebuild) and run the unifier over each partition
   (``_spark_rows.resolve``): every identity rule (limits and their windows, caps,
   separations, alias typing, probabilistic links) and trait policy applies exactly as in the
   DuckDB rebuild, because it is the same code over the same events in the same order;
4. first/last seen and purchase totals per profile with DataFrame aggregates, joined to the
   profiles' identifiers, traits, merges and current consent (which the reconciliation
   compares; it is no ``customer_profiles`` column); both tables are overwritten with Spark.

Nothing but counts is collected to the driver, except for the reconciliation with a serving
store, which reads the rebuilt profiles back (the serving store is one machine's anyway).

The lake (and its cold tier) may be a local directory or on S3-compatible storage; Spark reaches
the latter through Hadoop's S3A connector, with the lake's store options given to every Delta
read and write (so a caller's session needs only the jars, see ``_spark_session``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from clew._locations import LakeLocation, TableLocation
from clew.backends import open_existing_store
from clew.batch._reconcile import Facts, reconcile
from clew.batch._spark_components import ComponentsError, components
from clew.batch._spark_rows import (
    EVENT,
    EVENT_COLUMNS,
    IDENTITY,
    PREPARED,
    PROFILE,
    RESOLVED,
    Job,
    prepare,
    resolve,
)
from clew.batch._spark_session import (
    LOCAL_MASTER,
    SparkUnavailableError,
    build_session,
    s3a_options,
    spark_path,
)
from clew.batch.rebuild import RebuildError, RebuildReport, agreed
from clew.config import Settings
from clew.lake.tables import (
    CUSTOMER_PROFILES,
    CUSTOMER_PROFILES_SCHEMA,
    EVENTS,
    IDENTITIES,
    IDENTITIES_SCHEMA,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SparkUnavailableError", "rebuild_spark"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_WRITE_ATTEMPTS = 3


def rebuild_spark(
    settings: Settings,
    *,
    master: str = LOCAL_MASTER,
    conf: Mapping[str, str] | None = None,
    session: SparkSession | None = None,
    dry_run: bool = False,
    max_differences: int = 20,
    require_agreement: bool = False,
) -> RebuildReport:
    """Re-derive ``customer_profiles`` and ``identities`` from the lake's ``events`` with
    Spark and overwrite both tables (not with ``dry_run``; with ``require_agreement``, only
    if the serving store agrees or there is none); the result equals
    :func:`clew.batch.rebuild.rebuild`'s. Uses ``session`` if given (it is left running),
    else starts one on ``master`` with ``conf`` and stops it at the end.

    An active session of this process is used like ``session`` (``master`` and ``conf``
    then do not apply). Raises :class:`SparkUnavailableError` if Spark cannot start (the
    message names what to install) and :class:`RebuildError` if the tables cannot be
    computed or written."""
    report = RebuildReport()
    rebuilt_at = datetime.now(UTC)
    speed = open_existing_store(settings)
    if session is None:
        session = _active_session()
    owned = session is None
    try:
        job = Job(
            settings.identity.model_dump_json(),
            tuple(speed.separations()) if speed is not None else (),
            (rebuilt_at - _EPOCH) // _ONE_MS,
        )
        lake, cold = settings.lake_location, settings.cold_location
        remote = next((loc for loc in (lake, cold) if not loc.is_local), None)
        with _phase(report, "start"):
            if session is not None:
                spark = session
            else:
                storage = None if remote is None else remote.options
                spark = build_session(master, conf or {}, storage=storage)
        try:
            tables = _compute(spark, lake, cold, job, rebuilt_at, report)
            try:
                if speed is not None:
                    with _phase(report, "reconcile"):
                        report.reconciliation = reconcile(
                            list(_facts(tables)), speed, max_differences
                        )
                if not dry_run:
                    if require_agreement and not agreed(report):
                        report.withheld = True
                    else:
                        with _phase(report, "write"):
                            _write(tables, lake)
                        report.written = True
            finally:
                tables.release()
        finally:
            if owned:
                spark.stop()
    finally:
        if speed is not None:
            speed.close()
    return report


def _active_session() -> SparkSession | None:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    return SparkSession.getActiveSession()


class _Tables:
    """The rebuilt tables; ``profiles`` has the ``customer_profiles`` columns and ``consent``."""

    def __init__(self, resolved: DataFrame, profiles: DataFrame, identities: DataFrame) -> None:
        self.resolved, self.profiles, self.identities = resolved, profiles, identities

    def release(self) -> None:
        self.profiles.unpersist()
        self.resolved.unpersist()


def _compute(
    spark: SparkSession,
    lake: LakeLocation,
    cold: LakeLocation,
    job: Job,
    rebuilt_at: datetime,
    report: RebuildReport,
) -> _Tables:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    with _phase(report, "read"):
        events = _events(spark, lake, cold)
        prepared = events.mapInArrow(lambda it: prepare(it, job), _spark_schema(PREPARED))
        prepared = prepared.persist(StorageLevel.MEMORY_AND_DISK)
        report.events = prepared.count()
    with _phase(report, "components"):
        try:
            labels, _ = components(prepared)
        except ComponentsError as exc:
            raise RebuildError(str(exc)) from exc
    with _phase(report, "resolve"):
        keyed = prepared.where(F.size("nodes") > 0).withColumn("node", F.col("nodes")[0])
        ordered = (
            keyed.join(labels, "node")
            .repartition("component")
            .sortWithinPartitions(
                F.col("timestamp").asc_nulls_last(),
                F.col("received_at").asc_nulls_last(),
                F.col("message_id").asc_nulls_last(),
            )
            .drop("node", "component", "nodes")
        )
        resolved = ordered.mapInArrow(lambda it: resolve(it, job), _spark_schema(RESOLVED))
        resolved = resolved.persist(StorageLevel.MEMORY_AND_DISK)
        counts = {kind: n for kind, n in _collect(resolved.groupBy("kind").count())}
        prepared.unpersist()
    report.applied = int(counts.get(EVENT, 0))
    report.profiles = int(counts.get(PROFILE, 0))
    report.identities = int(counts.get(IDENTITY, 0))
    with _phase(report, "sql"):
        activity = (
            resolved.where((F.col("kind") == EVENT) & F.col("profile_id").isNotNull())
            .groupBy("profile_id")
            .agg(
                F.min("timestamp").alias("first_seen"),
                F.max("timestamp").alias("last_seen"),
                F.coalesce(F.sum(F.when(F.col("is_order"), F.col("revenue"))), F.lit(0.0)).alias(
                    "total_lifetime_value"
                ),
                F.count(F.when(F.col("is_order"), 1)).alias("orders_count"),
                F.max(F.when(F.col("is_order"), F.col("timestamp"))).alias("last_purchase_date"),
            )
        )
        store_part = resolved.where(F.col("kind") == PROFILE).select(
            "profile_id", "identifiers", "user_id", "email", "traits", "merged_ids", "consent"
        )
        updated = F.lit(rebuilt_at).cast("timestamp")
        profiles = (
            store_part.join(activity, "profile_id")
            .withColumn("updated_at", updated)
            .select(*_typed(CUSTOMER_PROFILES_SCHEMA), "consent")
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        joined = profiles.count()
        identities = (
            resolved.where(F.col("kind") == IDENTITY)
            .withColumn("probabilistic", F.col("match_weight").isNotNull())
            # As the DuckDB rebuild: the identities table keeps milliseconds.
            .withColumn("updated_at", F.lit(_EPOCH + job.rebuilt_ms * _ONE_MS).cast("timestamp"))
            .select(*_typed(IDENTITIES_SCHEMA))
        )
    tables = _Tables(resolved, profiles, identities)
    if joined != report.profiles:
        tables.release()
        raise RebuildError(
            f"{report.profiles - joined} profiles have no event; run the rebuild again"
        )
    return tables


def _collect(frame: DataFrame) -> list[Any]:
    """``frame.collect()``. pyspark leaves the socket it read the rows from to the garbage
    collector, which warns about it (an error under strict warning filters): not ours to fix,
    so that one warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket", ResourceWarning)
        return frame.collect()


def _events(spark: SparkSession, lake: LakeLocation, cold: LakeLocation) -> DataFrame:
    """The warm and cold ``events`` rows that have a time, with the columns ``prepare``
    reads (an absent table is no rows)."""
    from pyspark.sql import functions as F

    found: DataFrame | None = None
    for root in (lake, cold):
        table = root.table(EVENTS.name)
        if not table.exists():
            continue
        frame = (
            spark.read.format("delta")
            .options(**_hadoop_options(table))
            .load(spark_path(table.uri))
            .select(*EVENT_COLUMNS)
        )
        found = frame if found is None else found.unionByName(frame)
    if found is None:
        found = spark.createDataFrame([], _spark_schema(EVENTS.schema)).select(*EVENT_COLUMNS)
    return found.where(F.col("timestamp").isNotNull())


def _typed(schema: pa.Schema) -> list[Any]:
    """Columns in the lake table's order, cast to its types."""
    from pyspark.sql import functions as F

    spark_schema = _spark_schema(schema)
    return [F.col(f.name).cast(f.dataType).alias(f.name) for f in spark_schema.fields]


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _hadoop_options(table: TableLocation) -> dict[str, str]:
    """The table's store options as Hadoop settings, which Delta applies to the file system
    it reads and writes the table with (none for a local table)."""
    return {} if table.is_local else s3a_options(table.options)


def _write(tables: _Tables, lake: LakeLocation) -> None:
    """Overwrite both tables, as two Spark jobs at once (each commit waits on little else).
    Only the tables' own columns are written."""
    profiles = tables.profiles.select(*CUSTOMER_PROFILES_SCHEMA.names)
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(_overwrite, profiles, lake.table(CUSTOMER_PROFILES.name)),
            pool.submit(_overwrite, tables.identities, lake.table(IDENTITIES.name)),
        ]
        for future in done:
            future.result()


def _overwrite(frame: DataFrame, table: TableLocation) -> None:
    """Replace the table's rows and schema in one Delta commit. A commit that loses to
    another writer (the profiles-lake stage) is tried again."""
    from pyspark.errors import PySparkException

    writer = (
        frame.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .options(**_hadoop_options(table))
    )
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            writer.save(spark_path(table.uri))
            return
        except PySparkException as exc:
            if "Concurrent" not in str(exc) or attempt == _WRITE_ATTEMPTS - 1:
                raise RebuildError(f"could not overwrite {table.name}: {exc}") from exc


def _facts(tables: _Tables) -> Iterator[Facts]:
    """The rebuilt profiles as the reconciliation reads them (identifiers from
    ``identities``, traits and consent from their JSON)."""
    from pyspark.sql import functions as F

    ids = tables.identities.groupBy("profile_id").agg(
        F.collect_list(F.array("id_type", "value")).alias("pairs")
    )
    # Times as epoch milliseconds computed by Spark: collected timestamps would come back
    # in the driver's local time zone.
    rows = tables.profiles.join(ids, "profile_id", "left").select(
        "profile_id",
        "pairs",
        *(
            F.floor(F.unix_micros(c) / 1000).alias(c)
            for c in ("first_seen", "last_seen", "last_purchase_date")
        ),
        "total_lifetime_value",
        "orders_count",
        "traits",
        "consent",
    )
    for row in _collect(rows):
        values = row.asDict()
        last_purchase = values["last_purchase_date"]
        yield Facts(
            values["profile_id"],
            frozenset((t, v) for t, v in values["pairs"] or ()),
            int(values["first_seen"]),
            int(values["last_seen"]),
            values["total_lifetime_value"],
            values["orders_count"],
            None if last_purchase is None else int(last_purchase),
            orjson.loads(values["traits"]),
            orjson.loads(values["consent"]),
        )


class _Phase:
    def __init__(self, report: RebuildReport, name: str) -> None:
        self._report, self._name = report, name

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        timings = self._report.timings
        timings[self._name] = timings.get(self._name, 0.0) + time.perf_counter() - self._started


def _phase(report: RebuildReport, name: str) -> _Phase:
    return _Phase(report, name)
