"""The batch layer (``clew rebuild``): re-derive every profile from the lake's ``events`` table
and rewrite the lake tables ``customer_profiles`` and ``identities``, then reconcile the result
with the speed layer's serving store.

How: DuckDB reads every event in event-time order (ties: ``received_at``, then
``message_id``); the same :class:`~clew.identity.unifier.Unifier` the profiles stage runs
resolves them over an in-memory store, with the rules and trait policy of
``settings.identity`` and the operator's separations (``clew identity split``) read from the
serving store; each event's profile is resolved to its final survivor, and DuckDB computes
first/last seen and the purchase totals (the ``clew.identity.traits`` definitions, to the
same float) per profile from the events joined to that mapping. Identifiers, traits and
merges come from the in-memory store.

The unifier sees only what decides identities and traits: an event's identity payload (see
``_rebuild_sql``), type, id, time and source, and an identify's traits. Orders and history
are not applied there (orders are summed in SQL; the lake tables hold no history). Most
events are not applied at all; ``_rebuild_resolve`` says why skipping them is exact.

Computed traits and audience memberships: when audience definitions exist and there is a
serving store to compare with, the events each definition may read are folded, per final
profile, into the audience engine's state and evaluated once (``_rebuild_audiences``); without
definitions nothing of this runs.

Ordering: the speed layer applies events in arrival order (in event-time order within each
batch it polls); the rebuild applies them in event-time order. The two agree whenever events
arrive in time order; a late event (a phone that was offline, a backfill) can make them differ
(which identifier of a conflicting pair wins, which profile id survives a merge), and the
reconciliation report shows where.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from clew._locations import LakeLocation, TableLocation
from clew.audiences.definitions import DefinitionError
from clew.audiences.engine import Engine
from clew.audiences.repository import open_repository
from clew.backends import open_existing_store
from clew.batch._rebuild_audiences import ServingComputed, evaluate_rebuilt, fold
from clew.batch._rebuild_resolve import Resolved, resolve_events
from clew.batch._rebuild_sql import AGGREGATES, ENGINE_EVENTS, PayloadShape, load_events
from clew.batch._reconcile import Computed, Facts, Reconciliation, reconcile
from clew.clock import Clock, clock_for
from clew.config import Settings
from clew.identity.unifier import Unifier
from clew.lake._profile_rows import IdentityColumns, profile_columns
from clew.lake.tables import CUSTOMER_PROFILES, CUSTOMER_PROFILES_SCHEMA, IDENTITIES
from clew.store.base import Profile, ProfileStore
from clew.store.memory import MemoryProfileStore

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["RebuildError", "RebuildReport", "Reconciliation", "rebuild"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_WRITE_ATTEMPTS = 3
_ENGINE_BATCH_ROWS = 8192


class RebuildError(RuntimeError):
    """The rebuild cannot complete; the message says what to do."""


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did: counts, seconds per phase (``read``, ``resolve``, ``sql``,
    ``audiences`` when definitions exist, ``write``, ``reconcile``), and the comparison with
    the serving store (``None`` when there is no serving store). ``withheld``: the tables
    were not written because the layers disagree and agreement was required."""

    events: int = 0
    applied: int = 0
    profiles: int = 0
    identities: int = 0
    written: bool = False
    withheld: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    reconciliation: Reconciliation | None = None

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())


def rebuild(
    settings: Settings,
    *,
    dry_run: bool = False,
    max_differences: int = 20,
    require_agreement: bool = False,
    clock: Clock | None = None,
) -> RebuildReport:
    """Re-derive ``customer_profiles`` and ``identities`` from the lake's ``events`` and
    overwrite both tables (not with ``dry_run``; with ``require_agreement``, only if the
    serving store agrees or there is none). Reads the configured serving store, if it
    exists, for separations and the reconciliation; never writes it. With audience
    definitions (those the profiles stage evaluates) and a serving store, computed traits and
    memberships are derived too and compared at the time of ``clock`` (by default the
    profiles stage's clock, ``settings.clock``). Raises :class:`RebuildError` if a table
    cannot be written or the definitions cannot be read.

    Python's cyclic garbage collector is paused meanwhile: the in-memory store holds millions
    of long-lived objects that each collection would walk again, for nothing to collect."""
    report = RebuildReport()
    timed = _Clock(report.timings)
    rebuilt_at = datetime.now(UTC)
    speed = open_existing_store(settings)
    collecting = gc.isenabled()
    gc.disable()
    try:
        engine = _engine(settings) if speed is not None else None
        batch, states = _derive(settings, speed, engine, report, timed, rebuilt_at)
        if speed is not None:
            computed: ServingComputed | None = None
            if engine is not None:
                now_ms = (clock or clock_for(settings.clock, settings.data_dir)).now_ms()
                with timed("audiences"):
                    batch.evaluate(engine, states, now_ms)
                computed = ServingComputed.of(engine, speed, now_ms)
            with timed("reconcile"):
                report.reconciliation = reconcile(batch.facts(), speed, max_differences, computed)
        if not dry_run:
            if require_agreement and not agreed(report):
                report.withheld = True
            else:
                with timed("write"):
                    _write(settings.lake_location, batch)
                report.written = True
    finally:
        if collecting:
            gc.enable()
        if speed is not None:
            speed.close()
    return report


def _derive(
    settings: Settings,
    speed: ProfileStore | None,
    engine: Engine | None,
    report: RebuildReport,
    timed: _Clock,
    rebuilt_at: datetime,
) -> tuple[_Batch, dict[str, dict[str, Any]]]:
    """Resolve the lake's events over an in-memory store (with the separations of the
    serving store ``speed``) into the rows of the two tables, and with ``engine`` fold each
    profile's audience state; counts and timings go to ``report``. The rows are stamped
    ``rebuilt_at``."""
    import duckdb

    from clew.lake.query import register_tables

    store = MemoryProfileStore(history=0)
    ident = settings.identity
    unifier = Unifier(store, ident.rules, ident.traits, keep_history=False)
    if speed is not None:
        for separation in speed.separations():
            store.add_separation(separation)
    unifier.refresh_separations()
    shape = PayloadShape.of(ident.rules)
    conn = duckdb.connect(":memory:")
    states: dict[str, dict[str, Any]] = {}
    try:
        conn.execute("SET TimeZone = 'UTC'")
        with timed("read"):
            register_tables(conn, settings.lake_location, settings.cold_location)
            types = engine.event_types if engine is not None else ()
            report.events = load_events(conn, shape, types)
        with timed("resolve"):
            resolved = resolve_events(conn, unifier, shape)
        report.applied = len(resolved.applied)
        with timed("sql"):
            applied, decided = _mapping(resolved, store)
            batch = _assemble(conn, applied, decided, store, rebuilt_at)
        if engine is not None:
            with timed("audiences"), _registered(conn, applied, decided):
                reader = conn.sql(ENGINE_EVENTS).to_arrow_reader(_ENGINE_BATCH_ROWS)
                states = fold(engine, reader)
        report.profiles = batch.table.num_rows
        report.identities = len(batch.identities)
    finally:
        conn.close()
    return batch, states


def _engine(settings: Settings) -> Engine | None:
    """The audience engine of the definitions the profiles stage evaluates, or None when
    there is no definition."""
    try:
        catalog = open_repository(settings).catalog()
    except DefinitionError as exc:
        raise RebuildError(
            f"the audience definitions cannot be read, so computed traits and audiences "
            f"cannot be rebuilt: {exc}; fix or remove that definition (clew audiences)"
        ) from None
    return Engine(catalog) if catalog.definitions() else None


def agreed(report: RebuildReport) -> bool:
    """Whether the rebuilt profiles agree with the serving store (vacuously, without one)."""
    return report.reconciliation is None or report.reconciliation.agree


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self._timings = timings

    def __call__(self, phase: str) -> _Phase:
        return _Phase(self._timings, phase)


class _Phase:
    def __init__(self, timings: dict[str, float], phase: str) -> None:
        self._timings, self._phase = timings, phase

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._started
        self._timings[self._phase] = self._timings.get(self._phase, 0.0) + elapsed


@dataclass(slots=True)
class _Batch:
    profiles: list[Profile]
    table: pa.Table
    identities: IdentityColumns
    # Per profile id, its computed traits and memberships (after evaluate()).
    computed: dict[str, Computed] | None = None

    def evaluate(self, engine: Engine, states: dict[str, dict[str, Any]], now_ms: int) -> None:
        """Evaluate every profile's computed traits and memberships at ``now_ms``, from its
        engine state in ``states`` (see ``_rebuild_audiences.fold``)."""
        by_id = {p.profile_id: p for p in self.profiles}
        self.computed = {
            row["profile_id"]: evaluate_rebuilt(
                engine, by_id[row["profile_id"]], row, states.get(row["profile_id"], {}), now_ms
            )
            for row in self.table.select(_TOTALS).to_pylist()
        }

    def facts(self) -> list[Facts]:
        by_id = {p.profile_id: p for p in self.profiles}
        computed = self.computed or {}
        return [
            Facts.from_row(row, by_id[row["profile_id"]], computed.get(row["profile_id"]))
            for row in self.table.to_pylist()
        ]


_TOTALS = ["profile_id", "total_lifetime_value", "orders_count", "last_purchase_date"]


def _mapping(resolved: Resolved, store: MemoryProfileStore) -> tuple[pa.Table, pa.Table]:
    """Every event's profile as its final survivor: the tables ``applied`` (``rn``,
    ``profile_id``) and ``decided`` (``key_id``, ``profile_id``) that
    :data:`~clew.batch._rebuild_sql.MAPPING` reads."""
    import pyarrow as pa

    survivors: dict[str, str | None] = {}

    def table(pairs: dict[int, str | None], name: str) -> pa.Table:
        live: list[str | None] = []
        for pid in pairs.values():
            if pid is not None and pid not in survivors:
                survivors[pid] = store.resolve(pid)
            live.append(None if pid is None else survivors[pid])
        return pa.table(
            {name: pa.array(list(pairs), pa.int64()), "profile_id": pa.array(live, pa.string())}
        )

    return table(resolved.applied, "rn"), table(resolved.decided, "key_id")


def _assemble(
    conn: duckdb.DuckDBPyConnection,
    applied: pa.Table,
    decided: pa.Table,
    store: MemoryProfileStore,
    rebuilt_at: datetime,
) -> _Batch:
    """Compute the per-profile aggregates in SQL (events mapped by ``applied`` and
    ``decided``, see :func:`_mapping`) while Python collects the profiles' identities, traits
    and merges; join both into the rows of the two tables."""
    with ThreadPoolExecutor(1) as pool:
        # DuckDB releases the GIL: the aggregates run while Python walks the profiles.
        future = pool.submit(_aggregates, conn, applied, decided)
        profiles = store.scan(None, 1 << 62)
        columns, identities = profile_columns(profiles, (rebuilt_at - _EPOCH) // _ONE_MS)
        aggregates = future.result()
    conn.register("store_part", columns.store_part())
    conn.register("aggregates", aggregates)
    names = ", ".join(f.name for f in CUSTOMER_PROFILES_SCHEMA if f.name != "updated_at")
    rows = _arrow(
        conn,
        f"SELECT {names}, $updated::TIMESTAMPTZ AS updated_at "
        "FROM store_part JOIN aggregates USING (profile_id) ORDER BY profile_id",
        {"updated": rebuilt_at},
    ).cast(CUSTOMER_PROFILES_SCHEMA)
    conn.unregister("store_part")
    conn.unregister("aggregates")
    if rows.num_rows != len(profiles):
        raise RebuildError(
            f"{len(profiles) - rows.num_rows} profiles have no event; run the rebuild again"
        )
    return _Batch(profiles, rows, identities)


def _aggregates(conn: duckdb.DuckDBPyConnection, applied: pa.Table, decided: pa.Table) -> pa.Table:
    with _registered(conn, applied, decided):
        return _arrow(conn, AGGREGATES)


@contextmanager
def _registered(
    conn: duckdb.DuckDBPyConnection, applied: pa.Table, decided: pa.Table
) -> Iterator[None]:
    """``applied`` and ``decided`` registered in ``conn`` under those names meanwhile."""
    conn.register("applied", applied)
    conn.register("decided", decided)
    try:
        yield
    finally:
        conn.unregister("applied")
        conn.unregister("decided")


def _arrow(
    conn: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> pa.Table:
    table = conn.sql(sql, params=params).to_arrow_table()
    assert table is not None
    return table


def _write(lake: LakeLocation, batch: _Batch) -> None:
    """Overwrite both tables, in parallel (the Delta writer releases the GIL)."""
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(_overwrite, lake.table(CUSTOMER_PROFILES.name), batch.table),
            pool.submit(_overwrite, lake.table(IDENTITIES.name), batch.identities.table()),
        ]
        for future in done:
            future.result()


def _overwrite(path: TableLocation, table: pa.Table) -> None:
    from deltalake.exceptions import CommitFailedError

    for attempt in range(_WRITE_ATTEMPTS):
        try:
            path.write(table, mode="overwrite", schema_mode="overwrite")
            return
        except CommitFailedError as exc:
            if attempt == _WRITE_ATTEMPTS - 1:
                raise RebuildError(
                    f"could not overwrite {path.name}: another writer (the profiles-lake "
                    f"stage) kept committing ({exc}); run the rebuild again"
                ) from exc
