"""A profile's events read back for re-derivation (``clew identity split``): from one Delta
snapshot of the lake's ``events`` table, and from the ``events`` log topic for the records
that snapshot does not hold yet, reconciled with what the profiles stage has applied.

The SQL filter is coarse (a superset): ``userId``/``anonymousId``/``previousId`` equal to one
of the identifier values, or the JSON of ``traits``/``context``/``properties`` containing one
(lower-cased; phones by their last digits). Callers keep exactly the events whose extracted
identifiers they want.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from clew._locations import LakeLocation, as_location
from clew.events import Event, format_time, parse_time
from clew.identity.identifiers import ANONYMOUS_ID, PHONE, USER_ID, Identifier
from clew.log.base import Log
from clew.topics import EVENTS_TOPIC

_COLUMN_IDS = (USER_ID, ANONYMOUS_ID)
_PHONE_DIGITS = 7
_READ_BATCH = 500

_event_decoder = msgspec.json.Decoder(Event)
_object_decoder = msgspec.json.Decoder(dict[str, Any] | None)

EVENT_COLUMNS = (
    *("message_id", "type", "event", "name", "category"),
    *("user_id", "anonymous_id", "group_id", "previous_id"),
    *("epoch_ms(timestamp)", "epoch_ms(original_timestamp)", "epoch_ms(sent_at)"),
    *("epoch_ms(received_at)", "source_id", "context", "properties", "traits", "integrations"),
)
"""What :func:`row_to_event` reads, in its order: SQL expressions over the lake's ``events``
table."""

_SELECT = f"""
SELECT {", ".join(EVENT_COLUMNS)}
FROM (
    SELECT *, lower(concat_ws(' ', traits, context, properties)) AS _json
    FROM {{source}}
)
"""
_FILES = "read_parquet($files, hive_partitioning = true, union_by_name = true)"


@dataclass(slots=True, frozen=True)
class LakeSnapshot:
    """Candidate events of one Delta snapshot, and per ``events`` partition the last log
    offset that snapshot holds (-1: none)."""

    events: list[Event]
    offsets: dict[int, int]


@dataclass(slots=True, frozen=True)
class LogRange:
    """Records of one partition's offset range, decoded (undecodable ones are skipped, as
    the profiles stage skips them), and how many of the range the log no longer holds."""

    records: list[tuple[Event, bytes]]
    missing: int


def _time(ms: int | None) -> str | None:
    if ms is None:
        return None
    return format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))


def _object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    return _object_decoder.decode(text) or {}


def row_to_event(row: tuple[Any, ...]) -> Event:
    """The :class:`Event` of a row of :data:`EVENT_COLUMNS` (times as epoch ms, nested
    objects as JSON text): what the lake stage wrote, turned back into the envelope."""
    (mid, etype, name_event, name, category, user_id, anon, group_id, previous_id) = row[:9]
    ts, original, sent, received, source_id, context, properties, traits, integrations = row[9:]
    return Event(
        type=etype,
        message_id=mid,
        timestamp=_time(ts) or "",
        received_at=_time(received) or _time(ts) or "",
        source_id=source_id or "",
        original_timestamp=_time(original),
        sent_at=_time(sent),
        user_id=user_id,
        anonymous_id=anon,
        event=name_event,
        name=name,
        category=category,
        group_id=group_id,
        previous_id=previous_id,
        properties=_object(properties),
        traits=_object(traits),
        context=_object(context),
        integrations=_object(integrations),
    )


def _needle(ident: Identifier) -> tuple[str, str]:
    """``(kind, text)``: what the coarse filter looks for in the JSON columns."""
    if ident.id_type == PHONE:
        digits = "".join(c for c in ident.value if c.isdigit())
        return "digits", digits[-_PHONE_DIGITS:]
    return "json", json.dumps(ident.value.lower(), ensure_ascii=False)[1:-1]


def _where(identifiers: Collection[Identifier]) -> tuple[str, dict[str, Any]]:
    values = sorted({i.value for i in identifiers if i.id_type in _COLUMN_IDS})
    clauses = [
        "list_contains($ids, trim(user_id))",
        "list_contains($ids, trim(anonymous_id))",
        "list_contains($ids, trim(previous_id))",
    ]
    params: dict[str, Any] = {"ids": values}
    needles = sorted({_needle(i) for i in identifiers if i.id_type not in _COLUMN_IDS})
    for n, (kind, text) in enumerate(needles):
        if not text:
            continue
        params[f"n{n}"] = text
        if kind == "digits":
            clauses.append(f"contains(regexp_replace(_json, '[^0-9]', '', 'g'), $n{n})")
        else:
            clauses.append(f"contains(_json, $n{n})")
    return " OR ".join(clauses), params


def read_lake(
    lake_path: Path | LakeLocation,
    partitions: Iterable[int],
    identifiers: Collection[Identifier],
    cold_path: Path | LakeLocation | None = None,
) -> LakeSnapshot:
    """The events of the lake's current ``events`` snapshot (and of the cold tier's, when
    ``cold_path`` is given) that may carry ``identifiers``, and the log offsets the warm
    snapshot covers (the lake stage records them in each Delta commit). An absent table is an
    empty snapshot."""
    if not identifiers:
        return _snapshot(lake_path, partitions, None, cold_path)
    return _snapshot(lake_path, partitions, _where(identifiers), cold_path)


def read_lake_types(
    lake_path: Path | LakeLocation,
    partitions: Iterable[int],
    types: Collection[str],
    cold_path: Path | LakeLocation | None = None,
) -> LakeSnapshot:
    """Every event of the given types in the lake's current ``events`` snapshot, warm and
    cold (a backfill's history), with the log offsets the warm snapshot covers."""
    names = sorted(types)
    params = {f"t{i}": t for i, t in enumerate(names)}
    where = "type IN (" + ", ".join(f"$t{i}" for i in range(len(names))) + ")" if names else "false"
    return _snapshot(lake_path, partitions, (where, params), cold_path)


def _snapshot(
    lake_path: Path | LakeLocation,
    partitions: Iterable[int],
    filter_: tuple[str, dict[str, Any]] | None,
    cold_path: Path | LakeLocation | None = None,
) -> LakeSnapshot:
    import duckdb

    from clew.lake.tables import EVENTS, sink_app_id

    offsets = dict.fromkeys(partitions, -1)
    table = as_location(lake_path).table(EVENTS.name).open_if_exists()
    if table is None:
        return LakeSnapshot([], offsets)
    for p in offsets:
        version = table.transaction_version(sink_app_id(EVENTS_TOPIC, p))
        offsets[p] = -1 if version is None else version
    # Cold rows were moved out of the warm table, which had applied them: they are history
    # the warm offsets already cover.
    cold = None
    if cold_path is not None:
        cold = as_location(cold_path).table(EVENTS.name).open_if_exists()
    tables = [table] if cold is None else [table, cold]
    files = [f for t in tables for f in t.file_uris()]
    if filter_ is None or not files:
        return LakeSnapshot([], offsets)
    where, params = filter_
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        args: dict[str, Any] = {}
        if all(t.table_uri.startswith("file:") for t in tables):
            source, args = _FILES, {"files": files}
        else:
            # Object storage: the snapshots as pyarrow datasets, read through deltalake.
            names = []
            for i, t in enumerate(tables):
                names.append(f"_events_{i}")
                conn.register(names[-1], t.to_pyarrow_dataset())
            source = "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {n}" for n in names) + ")"
        query = _SELECT.format(source=source) + f" WHERE {where}"
        rows = conn.execute(query, {**args, **params}).fetchall()
    finally:
        conn.close()
    # A row moved between tiers while the two snapshots were read shows up in both.
    unique = {(r[13], r[0]): r for r in rows}
    return LakeSnapshot([row_to_event(r) for r in unique.values()], offsets)


def read_log(log: Log, partition: int, first: int, last: int) -> LogRange:
    """The ``events`` records of ``partition`` with offsets ``first`` to ``last``
    (inclusive). Records removed by retention or deletion count as ``missing``."""
    records: list[tuple[Event, bytes]] = []
    seen = 0
    offset = first
    while offset <= last:
        batch = log.read(EVENTS_TOPIC, partition, offset, min(_READ_BATCH, last - offset + 1))
        if not batch:
            break
        for rec in batch:
            if rec.offset > last:
                break
            seen += 1
            try:
                records.append((_event_decoder.decode(rec.value), rec.value))
            except msgspec.DecodeError:
                continue
        offset = batch[-1].offset + 1
    return LogRange(records, max(0, last - first + 1 - seen))


@dataclass(slots=True, frozen=True)
class ReplayEvents:
    """The events to replay (with their JSON), in replay order, and how many of them came
    from the log, how many of the lake's were left for the profiles stage, and how many the
    profiles stage applied that could not be read."""

    events: list[tuple[Event, bytes]]
    from_log: int
    pending: int
    missing: int


def events_to_replay(
    lake: LakeSnapshot,
    applied: Mapping[tuple[str, int], int],
    log: Log,
    keep: Callable[[Event], bool],
) -> ReplayEvents:
    """The events ``keep`` selects that the profiles stage has applied (``applied``: its
    last applied offset per ``(topic, partition)``): the lake snapshot's, less those beyond
    ``applied`` (the stage applies them later), plus those beyond the snapshot up to
    ``applied``, read from the log. Ordered by event time, then ``receivedAt``, then
    ``messageId``."""
    not_applied: set[tuple[str, str]] = set()
    from_log: list[tuple[Event, bytes]] = []
    missing = 0
    for partition, in_lake in lake.offsets.items():
        done = applied.get((EVENTS_TOPIC, partition), -1)
        if in_lake < done:
            gap = read_log(log, partition, in_lake + 1, done)
            missing += gap.missing
            from_log += [(e, body) for e, body in gap.records if keep(e)]
        elif in_lake > done:
            ahead = read_log(log, partition, done + 1, in_lake)
            not_applied.update((e.source_id, e.message_id) for e, _ in ahead.records)
    chosen: list[tuple[Event, bytes]] = []
    pending = 0
    for event in lake.events:
        if not keep(event):
            continue
        if (event.source_id, event.message_id) in not_applied:
            pending += 1
        else:
            chosen.append((event, msgspec.json.encode(event)))
    chosen += from_log
    chosen.sort(key=lambda item: _order(item[0]))
    return ReplayEvents(chosen, len(from_log), pending, missing)


def _order(event: Event) -> tuple[datetime, datetime, str]:
    received = parse_time(event.received_at or event.timestamp)
    return parse_time(event.timestamp).astimezone(UTC), received.astimezone(UTC), event.message_id
