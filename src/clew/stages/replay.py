"""The dead-letter queue as a user sees it, and its replay.

:class:`DlqSnapshot` reads the ``dlq`` lake table (one consistent snapshot), joined with the
replay ledger (``dlq_replays`` in ``state.db``) that says which rows were replayed and how.
:func:`replay_dlq` validates selected rows again against their source's *current* tracking
plan: an event that now passes lands in the ``events`` topic, one that still fails goes back
to the ``dlq`` topic as a new row (``dlq_id`` ``<old id>~<replay id>``, ``replay_of`` the old
id) with its new reason.

Exactly once, however often a replay dies and is run again:

- every replayed row gets an outcome in the ledger (``landed``, ``still_bad`` or
  ``duplicate``), and a row with an outcome is never replayed again;
- a landing claims the event's ``messageId`` in the dedup index with the origin
  ``replay:<dlq_id>``. An id claimed by another origin (the event was accepted some other way,
  or another row carries it) makes the row a ``duplicate``; the row's own earlier claim (a run
  that died before appending) lets it through again. An event already in the lake ``events``
  table with the same source and ``messageId`` is a duplicate too, even once its claim expired;
- each batch is written ahead to the ledger with the log's end offsets before its records are
  appended, and every appended record carries a ``replay_of`` header. The next run first
  reconciles a batch left behind by a run that died between the append and the ledger update:
  rows whose records are in the log after those offsets are done, the others are replayed.

One row never stops the others: a row whose kept event cannot be decoded at all is reported
(:attr:`ReplayReport.unreadable`), logged and left as it is; a row that makes revalidation
raise goes back to the ``dlq`` topic with reason ``stage_failure`` (stage
:data:`REPLAY_STAGE`, the error as its message), counted ``still_bad``, and the replay goes
on.

Only one replay runs per data directory at a time (:class:`ReplayInProgressError`).
"""

from __future__ import annotations

import fcntl
import logging
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from clew._errors import describe
from clew.config import Settings
from clew.events import EVENT_TYPES, Event, Rejection, normalise
from clew.log.base import Log, Message, Position
from clew.nesting import MAX_DEPTH
from clew.stages._dedup import Dedup, open_dedup
from clew.stages.setaside import STAGE_FAILURE
from clew.stages.validate import Blocked, DeadLetter, apply_plan, within_depth
from clew.topics import DLQ_TOPIC, EVENTS_TOPIC

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from clew.lake._storage import LakeLocation
    from clew.schema import CompiledPlan, SchemaRegistry

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

LANDED = "landed"
STILL_BAD = "still_bad"
DUPLICATE = "duplicate"

REPLAY_HEADER = "replay_of"
# The ``stage`` of a row put back because revalidating it raised (reason ``stage_failure``).
REPLAY_STAGE = "dlq-replay"
# Levels an event of a batch request may nest (the request and its array are two).
_EVENT_ROOM = MAX_DEPTH - 2
# Ids of unreadable rows a report keeps (the count is exact).
_UNREADABLE_IDS = 20

# One row per batch (writing a row per replayed dead letter would cost a replay a tenth of its
# speed); ``dlq_replays`` shows one row per dead letter. A batch written ahead keeps the log's
# end offsets until its records are known to be in the log; its rows are not done until then.
_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlq_replay_batches (
    batch_id TEXT PRIMARY KEY,
    replay_id TEXT NOT NULL,
    items TEXT NOT NULL,
    start_offsets TEXT,
    replayed_at REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS dlq_replays AS
SELECT json_extract(j.value, '$[0]') AS dlq_id, b.replay_id,
       json_extract(j.value, '$[1]') AS outcome, json_extract(j.value, '$[2]') AS reason,
       json_extract(j.value, '$[3]') AS new_dlq_id, b.replayed_at
FROM dlq_replay_batches b, json_each(b.items) j WHERE b.start_offsets IS NULL;
"""

# (dlq_id, outcome, new reason, new dlq_id) of one row of a batch.
_Item = tuple[str, str, str | None, str | None]


class ReplayError(RuntimeError):
    """A replay cannot run; the message says what to do."""


class ReplayInProgressError(ReplayError):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"another `clew dlq replay` is running on {data_dir}; wait for it to finish "
            "(an interrupted replay is resumed by running it again)"
        )


@dataclass(frozen=True, slots=True)
class DlqFilter:
    """Which rows to read. Times bound ``received_at`` (``since`` inclusive, ``until``
    exclusive); ``event`` matches a track event's name or another event's type."""

    reasons: tuple[str, ...] = ()
    source_id: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    include_replayed: bool = False


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    dlq_id: str
    replay_id: str
    outcome: str
    reason: str | None
    new_dlq_id: str | None
    replayed_at: datetime


@dataclass(slots=True)
class DlqRow:
    """One dead letter. Built positionally from a query row, in the order of ``_SELECT``;
    the JSON columns are parsed on first use (a replay never needs them)."""

    dlq_id: str
    received_us: int
    source_id: str
    reason: str
    message: str
    message_id: str | None
    event_type: str | None
    event_name: str | None
    payload: str
    raw_partition: int
    raw_offset: int
    index: int
    violations_json: str | None
    schema_versions_json: str | None
    normalized: str | None
    replay_of: str | None
    # The stage that set the record aside (reason ``stage_failure``); such a row is not an
    # event the tracking plan refused, and a replay leaves it alone.
    stage: str | None
    # The topic ``raw_partition`` and ``raw_offset`` are in (``raw`` when not set).
    topic: str | None
    replay: ReplayEntry | None = None
    in_lake: bool = False

    @property
    def received_at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.received_us)

    @property
    def violations(self) -> list[dict[str, str]]:
        return orjson.loads(self.violations_json) if self.violations_json else []

    @property
    def schema_versions(self) -> dict[str, str]:
        return orjson.loads(self.schema_versions_json) if self.schema_versions_json else {}


@dataclass(slots=True)
class DlqStats:
    total: int
    # (reason, source_id, event, count), most frequent first.
    by_kind: list[tuple[str, str, str | None, int]]
    # (hour, count), oldest first.
    by_hour: list[tuple[datetime, int]]


@dataclass(slots=True)
class ReplayReport:
    replay_id: str
    dry_run: bool
    selected: int = 0
    landed: int = 0
    still_bad: int = 0
    duplicates: int = 0
    skipped: int = 0
    recovered: int = 0
    # Rows whose kept event cannot be decoded: left as they are, with the first few ids.
    unreadable: int = 0
    unreadable_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    still_bad_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def replayed(self) -> int:
        return self.landed + self.still_bad + self.duplicates

    @property
    def events_per_s(self) -> float:
        return self.replayed / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(slots=True)
class _PendingBatch:
    batch_id: str
    start_offsets: dict[str, dict[int, int]]
    dlq_ids: set[str]


class ReplayLedger:
    """What each replayed row became, in ``state.db`` (the ``dlq_replays`` view).
    ``synchronous=FULL``: a batch written ahead survives power loss just as the log records
    appended after it do."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_LEDGER_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def _done(self, where: str = "", params: Sequence[Any] = ()) -> Iterator[ReplayEntry]:
        for replay_id, items, at in self._conn.execute(
            "SELECT replay_id, items, replayed_at FROM dlq_replay_batches "
            f"WHERE start_offsets IS NULL{where} ORDER BY replayed_at",
            params,
        ):
            when = datetime.fromtimestamp(at, tz=UTC)
            for dlq_id, outcome, reason, new_id in orjson.loads(items):
                yield ReplayEntry(dlq_id, replay_id, outcome, reason, new_id, when)

    def arrow(self) -> pa.Table:
        """Every outcome, as an Arrow table to join with the lake in DuckDB."""
        import pyarrow as pa

        cols: list[list[Any]] = [[], [], [], [], [], []]
        for replay_id, items, at in self._conn.execute(
            "SELECT replay_id, items, replayed_at FROM dlq_replay_batches "
            "WHERE start_offsets IS NULL"
        ):
            rows = orjson.loads(items)
            for i, col in enumerate(zip(*rows, strict=True)):
                cols[(0, 2, 3, 4)[i]].extend(col)
            cols[1].extend([replay_id] * len(rows))
            cols[5].extend([at] * len(rows))
        names = ("dlq_id", "replay_id", "outcome", "reason", "new_dlq_id", "replayed_at")
        types = [pa.string()] * 5 + [pa.float64()]
        return pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})

    def history(self, dlq_id: str) -> list[ReplayEntry]:
        """The replays of the row ``dlq_id`` belongs to: of the first-time row and of every
        row a replay made from it, oldest first."""
        root = dlq_id.split("~", 1)[0]
        found = self._done(
            " AND (instr(items, ?) OR instr(items, ?))", (f'["{root}"', f'["{root}~')
        )
        return [e for e in found if e.dlq_id == root or e.dlq_id.startswith(root + "~")]

    def write_ahead(
        self,
        batch_id: str,
        replay_id: str,
        offsets: dict[str, dict[int, int]],
        items: list[_Item],
        finished: str | None = None,
    ) -> None:
        """Record ``items`` as not yet done, with the log's end offsets before their records
        are appended; and mark the batch ``finished`` done, in the same transaction."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dlq_replay_batches VALUES (?, ?, ?, ?, ?)",
                (
                    batch_id,
                    replay_id,
                    orjson.dumps(items).decode(),
                    orjson.dumps(offsets, option=orjson.OPT_NON_STR_KEYS).decode(),
                    time.time(),
                ),
            )
            if finished is not None:
                conn.execute(
                    "UPDATE dlq_replay_batches SET start_offsets = NULL WHERE batch_id = ?",
                    (finished,),
                )

    def finish(self, batch_id: str, done: set[str] | None = None) -> int:
        """Mark the batch done: all its rows, or only those in ``done`` (the others are
        forgotten, to be replayed again). Returns how many rows are done."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT items FROM dlq_replay_batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return 0
            items = [i for i in orjson.loads(row[0]) if done is None or i[0] in done]
            if items:
                conn.execute(
                    "UPDATE dlq_replay_batches SET items = ?, start_offsets = NULL "
                    "WHERE batch_id = ?",
                    (orjson.dumps(items).decode(), batch_id),
                )
            else:
                conn.execute("DELETE FROM dlq_replay_batches WHERE batch_id = ?", (batch_id,))
        return len(items)

    def pending(self) -> list[_PendingBatch]:
        out = []
        for batch_id, items, offsets in self._conn.execute(
            "SELECT batch_id, items, start_offsets FROM dlq_replay_batches "
            "WHERE start_offsets IS NOT NULL"
        ).fetchall():
            starts = {
                topic: {int(p): off for p, off in parts.items()}
                for topic, parts in orjson.loads(offsets).items()
            }
            out.append(_PendingBatch(batch_id, starts, {i[0] for i in orjson.loads(items)}))
        return out

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# Columns of the dlq table, with the SQL type of those older data directories may lack.
_COLUMNS = {
    "received_at": "TIMESTAMPTZ",
    "source_id": "VARCHAR",
    "reason": "VARCHAR",
    "message": "VARCHAR",
    "message_id": "VARCHAR",
    "event_type": "VARCHAR",
    "event_name": "VARCHAR",
    "payload": "VARCHAR",
    "raw_partition": "INTEGER",
    "raw_offset": "BIGINT",
    "index": "INTEGER",
    "violations": "VARCHAR",
    "schema_versions": "VARCHAR",
    "normalized": "VARCHAR",
    "replay_of": "VARCHAR",
    "stage": "VARCHAR",
    "topic": "VARCHAR",
}
_NOT_REPLAYED = "NOT EXISTS (SELECT 1 FROM replays r WHERE r.dlq_id = d.dlq_id)"
_REPLAY = "r.replay_id, r.outcome, r.reason, r.new_dlq_id, r.replayed_at"
_SELECT = "d.dlq_id, " + ", ".join(
    "epoch_us(d.received_at)" if c == "received_at" else f'd."{c}"' for c in _COLUMNS
)


class DlqSnapshot:
    """One consistent snapshot of the ``dlq`` lake table and of the replay ledger. Rows
    written before row ids existed get ``<raw partition>:<raw offset>:<index>``, the id the
    validate stage gives."""

    def __init__(self, lake_path: Path | LakeLocation, ledger: ReplayLedger) -> None:
        from clew.lake.query import Lake

        self._ledger = ledger
        self._conn: duckdb.DuckDBPyConnection = Lake(lake_path).connect()
        present = {r[0] for r in self._conn.execute("DESCRIBE dlq").fetchall()}
        cols = [
            f'"{c}"' if c in present else f'CAST(NULL AS {t}) AS "{c}"' for c, t in _COLUMNS.items()
        ]
        fallback = "CAST(raw_partition AS VARCHAR) || ':' || raw_offset || ':' || \"index\""
        own_id = f"coalesce(dlq_id, {fallback})" if "dlq_id" in present else fallback
        self._conn.execute(
            f"CREATE TEMP VIEW dlq_rows AS SELECT {own_id} AS dlq_id, {', '.join(cols)} FROM dlq"
        )
        self._conn.register("replays", ledger.arrow())

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DlqSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, f: DlqFilter, replayed: bool | None) -> tuple[str, list[Any]]:
        clauses = ["true"]
        params: list[Any] = []
        if f.reasons:
            clauses.append(f"d.reason IN ({', '.join('?' * len(f.reasons))})")
            params.extend(f.reasons)
        if f.source_id is not None:
            clauses.append("d.source_id = ?")
            params.append(f.source_id)
        if f.event is not None:
            clauses.append("(d.event_name = ? OR (d.event_name IS NULL AND d.event_type = ?))")
            params += [f.event, f.event]
        if f.since is not None:
            clauses.append("d.received_at >= ?")
            params.append(f.since)
        if f.until is not None:
            clauses.append("d.received_at < ?")
            params.append(f.until)
        if replayed is not None:
            clauses.append("r.outcome IS NOT NULL" if replayed else "r.outcome IS NULL")
        return " AND ".join(clauses), params

    def count(self, f: DlqFilter, *, replayed: bool | None = None) -> int:
        """Rows matching ``f`` (ignoring its limit); ``replayed`` None follows
        ``f.include_replayed``, True counts only replayed rows."""
        if replayed is None and not f.include_replayed:
            replayed = False
        where, params = self._where(f, replayed)
        row = self._conn.execute(
            f"SELECT count(*) FROM dlq_rows d LEFT JOIN replays r USING (dlq_id) WHERE {where}",
            params,
        ).fetchone()
        return int(row[0]) if row else 0

    def rows(self, f: DlqFilter, batch_size: int = 1000) -> Iterator[list[DlqRow]]:
        """The matching rows, newest first, in batches."""
        where, params = self._where(f, None if f.include_replayed else False)
        limit = f" LIMIT {int(f.limit)}" if f.limit is not None else ""
        result = self._conn.execute(
            f"SELECT {_SELECT}, {_REPLAY}, false "
            f"FROM dlq_rows d LEFT JOIN replays r USING (dlq_id) WHERE {where} "
            f"ORDER BY d.received_at DESC, d.dlq_id DESC{limit}",
            params,
        )
        while chunk := result.fetchmany(batch_size):
            yield [self._row(r) for r in chunk]

    def to_replay(self, f: DlqFilter, batch_size: int) -> Iterator[list[DlqRow]]:
        """The matching rows not replayed yet, without what a replay does not need (the
        violations and schema versions), and with :attr:`DlqRow.in_lake` set when the
        source and ``messageId`` are already in the ``events`` table. Oldest first when
        ``f.limit`` is set; otherwise in the lake's order, which saves sorting every payload."""
        where, params = self._where(f, False)
        select = _SELECT.replace('d."violations"', "NULL").replace('d."schema_versions"', "NULL")
        in_lake = (
            "EXISTS (SELECT 1 FROM events e WHERE e.source_id = d.source_id "
            "AND e.message_id = d.message_id)"
        )
        order = ""
        if f.limit is not None:
            order = f" ORDER BY d.received_at, d.dlq_id LIMIT {int(f.limit)}"
        result = self._conn.execute(
            f"SELECT {select}, NULL, NULL, NULL, NULL, NULL, {in_lake} FROM dlq_rows d "
            f"WHERE {where.replace('r.outcome IS NULL', _NOT_REPLAYED)} AND d.stage IS NULL"
            f"{order}",
            params,
        )
        while chunk := result.fetchmany(batch_size):
            yield [self._row(r) for r in chunk]

    def get(self, dlq_id: str) -> DlqRow | None:
        result = self._conn.execute(
            f"SELECT {_SELECT}, {_REPLAY}, false "
            "FROM dlq_rows d LEFT JOIN replays r USING (dlq_id) WHERE d.dlq_id = ?",
            [dlq_id],
        ).fetchone()
        return self._row(result) if result is not None else None

    def _row(self, r: Sequence[Any]) -> DlqRow:
        n = len(_COLUMNS) + 1
        row = DlqRow(*r[:n])
        row.in_lake = bool(r[n + 5])
        replay_id, outcome, reason, new_id, at = r[n : n + 5]
        if outcome is not None:
            when = datetime.fromtimestamp(at, tz=UTC)
            row.replay = ReplayEntry(row.dlq_id, replay_id, outcome, reason, new_id, when)
        return row

    def stats(self, f: DlqFilter) -> DlqStats:
        where, params = self._where(f, None if f.include_replayed else False)
        base = f"FROM dlq_rows d LEFT JOIN replays r USING (dlq_id) WHERE {where}"
        kinds = self._conn.execute(
            "SELECT d.reason, d.source_id, coalesce(d.event_name, d.event_type) AS ev, count(*) "
            f"{base} GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3",
            params,
        ).fetchall()
        hours = self._conn.execute(
            f"SELECT date_trunc('hour', d.received_at) AS h, count(*) {base} GROUP BY 1 ORDER BY 1",
            params,
        ).fetchall()
        return DlqStats(
            total=sum(int(k[3]) for k in kinds),
            by_kind=[(k[0], k[1], k[2], int(k[3])) for k in kinds],
            by_hour=[(h, int(n)) for h, n in hours],
        )


# -- replay ---------------------------------------------------------------------------------

_event_decoder = msgspec.json.Decoder(Event)
# apply_plan counts violations for the validate stage's metrics; a replay does not.
_IGNORED: Counter[str] = Counter()
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def new_replay_id() -> str:
    """A short random id such as ``r3fa2c1d0``; it ends the ids of the rows a replay puts
    back, so it is kept short (the ledger records when each replay ran)."""
    return "r" + secrets.token_hex(4)


class _Plans:
    """Each source's plan as it is when the replay starts (None: the source has no plan, so
    nothing is checked, as in the validate stage)."""

    def __init__(self, settings: Settings) -> None:
        from clew.schema import SchemaRegistry
        from clew.sources import Catalog

        catalog = Catalog(settings.meta_path)
        try:
            self._names = {s.id: s.name for s in catalog.sources()}
        finally:
            catalog.close()
        self._registry: SchemaRegistry = SchemaRegistry(settings.registry_path)
        self._known = set(self._registry.sources())
        self._plans: dict[str, CompiledPlan | None] = {}

    def get(self, source_id: str) -> CompiledPlan | None:
        if source_id not in self._plans:
            from clew.schema import CompiledPlan

            name = self._names.get(source_id)
            self._plans[source_id] = (
                CompiledPlan.from_registry(self._registry, name) if name in self._known else None
            )
        return self._plans[source_id]

    def close(self) -> None:
        self._registry.close()


def revalidate(
    row: DlqRow, plan: CompiledPlan | None
) -> tuple[Event | Blocked | Rejection, bytes | None]:
    """What the validate stage would make of the row's event now: the event to emit, or why
    it is still refused (by the plan, or already by its envelope); and the event's JSON when
    it is the one the row kept. Rows whose envelope was valid start from the normalised event
    they kept; the others are normalised again from their payload with their original
    receive time and ``messageId``. Either way the plan is applied as the validate stage
    applies it, so an accepted event is the one a first-time acceptance makes."""
    if row.normalized is not None:
        kept = row.normalized.encode()
        ev = _event_decoder.decode(kept)
    else:
        result = _renormalise(row)
        if isinstance(result, Rejection):
            return result, None
        ev, kept = result, None
    out = ev if plan is None else apply_plan(plan, ev, _IGNORED)
    return out, kept if out is ev else None


def _renormalise(row: DlqRow) -> Event | Rejection:
    same = Rejection(row.reason, row.message, row.message_id, row.event_type, row.event_name)
    if row.index < 0:
        # The whole request could not be read; its events were never split out.
        return same
    if row.reason == "invalid_json" and "\ufffd" in row.payload:
        # The payload kept is the request's text with invalid UTF-8 replaced; decoding it now
        # would land altered strings.
        return same
    try:
        obj = _decoder.decode(row.payload.encode())
    except (msgspec.DecodeError, RecursionError) as e:
        return Rejection("invalid_json", f"the event cannot be read: {e}", row.message_id)
    if isinstance(obj, dict) and row.message_id:
        mid = obj.get("messageId")
        if not isinstance(mid, str | int) or mid == "":
            obj = {**obj, "messageId": row.message_id}
    path_type = row.event_type if row.event_type in EVENT_TYPES else "batch"
    result = normalise(
        obj,
        path_type=path_type or "batch",
        index=row.index,
        request_id=f"{row.raw_partition}-{row.raw_offset}",
        source_id=row.source_id,
        received_at=row.received_at,
    )
    # The validate stage's depth limit, counted as for an event of a batch request (the
    # request's path is not kept): an event too deep for the stages after it stays refused.
    return within_depth(result, _EVENT_ROOM) if isinstance(result, Event) else result


def _unreadable(report: ReplayReport, row: DlqRow, exc: Exception) -> None:
    report.unreadable += 1
    if len(report.unreadable_ids) < _UNREADABLE_IDS:
        report.unreadable_ids.append(row.dlq_id)
    logger.error(
        "replay: dead letter %s cannot be decoded (%s); left in the queue as it is",
        row.dlq_id,
        describe(exc),
    )


def _dead_letter(row: DlqRow, refused: Blocked | Rejection, replay_id: str) -> DeadLetter:
    blocked = refused if isinstance(refused, Blocked) else None
    rej = refused.rejection if isinstance(refused, Blocked) else refused
    return DeadLetter(
        reason=rej.reason,
        message=rej.message,
        payload=row.payload,
        source_id=row.source_id,
        received_at=row.received_at.isoformat(),
        raw_partition=row.raw_partition,
        raw_offset=row.raw_offset,
        index=row.index,
        message_id=rej.message_id or row.message_id,
        event_type=rej.event_type or row.event_type,
        event_name=rej.event_name or row.event_name,
        violations=blocked.violations if blocked is not None else [],
        schema_versions=blocked.schema_versions if blocked is not None else {},
        normalized=blocked.normalized if blocked is not None else None,
        dlq_id=f"{row.dlq_id}~{replay_id}",
        replay_of=row.dlq_id,
        stage=REPLAY_STAGE if rej.reason == STAGE_FAILURE else None,
    )


def reconcile(ledger: ReplayLedger, log: Log) -> int:
    """Settle the batches a replay that died left written ahead: rows whose records reached
    the log are done; the others will be replayed. Returns how many rows were done."""
    done_total = 0
    for batch in ledger.pending():
        wanted = batch.dlq_ids
        found: set[str] = set()
        for topic, starts in batch.start_offsets.items():
            ends = log.end_offsets(topic)
            for partition, start in starts.items():
                offset = start
                while offset < ends.get(partition, 0):
                    records = log.read(topic, partition, offset, 5000)
                    if not records:
                        break
                    for rec in records:
                        mark = rec.header(REPLAY_HEADER)
                        if mark is not None and mark.decode() in wanted:
                            found.add(mark.decode())
                    offset = records[-1].offset + 1
        done_total += ledger.finish(batch.batch_id, found)
    return done_total


class _ReplayLock:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "locks" / "dlq-replay.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ReplayInProgressError(data_dir) from None

    def release(self) -> None:
        self._handle.close()


def replay_dlq(
    settings: Settings,
    filters: DlqFilter,
    *,
    dry_run: bool = False,
    log: Log | None = None,
    batch_size: int = 2000,
    on_start: Callable[[ReplayReport], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the rows ``filters`` selects that were not replayed yet (see the module
    docstring). ``log`` defaults to the configured log, opened and closed here.
    ``on_start`` gets the report once the rows are counted (``selected``, ``skipped``);
    ``on_progress`` the number of rows finished after each batch. A dry run writes nothing
    and detects duplicates only against the lake and within the run.

    Raises :class:`ReplayInProgressError` when another replay runs on the data directory;
    any other exception leaves finished batches recorded, so running again resumes."""
    from clew.log.factory import open_log

    started = time.monotonic()
    lock = _ReplayLock(settings.data_dir)
    resources: list[Callable[[], None]] = [lock.release]
    try:
        ledger = ReplayLedger(settings.state_path)
        resources.append(ledger.close)
        if log is None:
            log = open_log(settings)
            resources.append(log.close)
        report = ReplayReport(new_replay_id(), dry_run)
        if not dry_run:
            report.recovered = reconcile(ledger, log)
        dedup = open_dedup(settings)
        resources.append(dedup.close)
        plans = _Plans(settings)
        resources.append(plans.close)
        snapshot = DlqSnapshot(settings.lake_location, ledger)
        resources.append(snapshot.close)
        selected = snapshot.count(filters, replayed=False)
        report.selected = min(selected, filters.limit) if filters.limit is not None else selected
        report.skipped = snapshot.count(filters, replayed=True)
        if on_start is not None:
            on_start(report)
        seen: set[str] = set()
        # A batch's appends run while the next batch is validated; it is marked done with
        # the next one's write-ahead, or at the end.
        in_flight: _InFlight | None = None
        for number, rows in enumerate(snapshot.to_replay(filters, batch_size)):
            in_flight = _replay_batch(
                report,
                rows,
                plans,
                dedup,
                ledger,
                log,
                f"{report.replay_id}/{number}",
                seen,
                in_flight,
                on_progress,
            )
        if in_flight is not None:
            in_flight.wait()
            if in_flight.batch_id is not None:
                ledger.finish(in_flight.batch_id)
            if on_progress is not None:
                on_progress(in_flight.rows)
        report.elapsed_s = time.monotonic() - started
        return report
    finally:
        for close in reversed(resources):
            close()


@dataclass(slots=True)
class _InFlight:
    batch_id: str | None
    rows: int
    appends: list[Future[list[Position]]]

    def wait(self) -> None:
        for fut in self.appends:
            fut.result()


def _replay_batch(
    report: ReplayReport,
    rows: list[DlqRow],
    plans: _Plans,
    dedup: Dedup,
    ledger: ReplayLedger,
    log: Log,
    batch_id: str,
    seen: set[str],
    previous: _InFlight | None,
    on_progress: Callable[[int], None] | None,
) -> _InFlight:
    """Validate one batch and claim its ids; once the previous batch's appends are durable,
    write this one ahead (marking the previous one done) and start its appends."""
    replay_id = report.replay_id
    items: list[_Item] = []
    landings: list[tuple[DlqRow, Event, bytes | None]] = []
    letters: list[DeadLetter] = []
    for row in rows:
        plan = plans.get(row.source_id)
        try:
            result, kept = revalidate(row, plan)
        except msgspec.DecodeError as exc:
            _unreadable(report, row, exc)
            continue
        except Exception as exc:
            # One row must not stop the replay; it goes back to the queue with the error.
            logger.exception("replay: revalidating dead letter %s failed", row.dlq_id)
            result = Rejection(STAGE_FAILURE, describe(exc), row.message_id)
            kept = None
        if not isinstance(result, Event):
            letter = _dead_letter(row, result, replay_id)
            letters.append(letter)
            items.append((row.dlq_id, STILL_BAD, letter.reason, letter.dlq_id))
            report.still_bad_reasons[letter.reason] += 1
        elif row.in_lake:
            items.append((row.dlq_id, DUPLICATE, None, None))
        else:
            landings.append((row, result, kept))
    claims = [
        (f"{ev.source_id}/{ev.message_id}", f"replay:{row.dlq_id}") for row, ev, _ in landings
    ]
    if report.dry_run:
        dupes = set()
        for i, (key, _) in enumerate(claims):
            if key in seen:
                dupes.add(i)
            seen.add(key)
    else:
        dupes = dedup.claim(claims, time.time_ns() // 1_000_000)
    events: list[Message] = []
    for i, (row, ev, kept) in enumerate(landings):
        if i in dupes:
            items.append((row.dlq_id, DUPLICATE, None, None))
            continue
        items.append((row.dlq_id, LANDED, None, None))
        mark = ((REPLAY_HEADER, row.dlq_id.encode()),)
        value = kept if kept is not None else _encoder.encode(ev)
        events.append(Message(value, key=ev.identity_key, headers=mark))
    outcomes = Counter(item[1] for item in items)
    report.landed += outcomes[LANDED]
    report.still_bad += outcomes[STILL_BAD]
    report.duplicates += outcomes[DUPLICATE]
    finished = None
    if previous is not None:
        previous.wait()
        finished = previous.batch_id
    if not report.dry_run:
        dead = [
            Message(
                _encoder.encode(d),
                key=d.source_id.encode(),
                headers=((REPLAY_HEADER, (d.replay_of or "").encode()),),
            )
            for d in letters
        ]
        offsets = {t: log.end_offsets(t) for t in (EVENTS_TOPIC, DLQ_TOPIC)}
        ledger.write_ahead(batch_id, report.replay_id, offsets, items, finished)
    if previous is not None and on_progress is not None:
        on_progress(previous.rows)
    if report.dry_run:
        return _InFlight(None, len(rows), [])
    appends = [log.append(t, ms) for t, ms in ((EVENTS_TOPIC, events), (DLQ_TOPIC, dead)) if ms]
    return _InFlight(batch_id, len(rows), appends)
