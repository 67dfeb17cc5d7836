"""The dead-letter queue as a user sees it: :class:`DlqSnapshot` reads one consistent
snapshot of the ``dlq`` lake table, joined with the replay ledger (:mod:`clew.dlq.ledger`)
that says which rows were replayed and how."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from clew.dlq.ledger import ReplayEntry, ReplayLedger

if TYPE_CHECKING:
    import duckdb

    from clew._locations import LakeLocation

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
