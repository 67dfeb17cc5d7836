"""Lake table definitions: Arrow schemas and the conversion of log records into rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class TableDef:
    name: str
    schema: pa.Schema
    partition_by: str
    # Builds the table's columns from the JSON values of log records.
    to_columns: Callable[[Sequence[bytes]], dict[str, pa.Array]]


EVENTS_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("type", pa.string()),
        ("event", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("user_id", pa.string()),
        ("anonymous_id", pa.string()),
        ("group_id", pa.string()),
        ("previous_id", pa.string()),
        ("timestamp", _TS),
        ("original_timestamp", _TS),
        ("sent_at", _TS),
        ("received_at", _TS),
        ("source_id", pa.string()),
        ("context", pa.string()),
        ("properties", pa.string()),
        ("traits", pa.string()),
        ("integrations", pa.string()),
        ("event_date", pa.date32()),
    ]
)

_EVENT_STRINGS = {
    "message_id": "messageId",
    "type": "type",
    "event": "event",
    "name": "name",
    "category": "category",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "source_id": "sourceId",
}
_EVENT_TIMES = {
    "timestamp": "timestamp",
    "original_timestamp": "originalTimestamp",
    "sent_at": "sentAt",
    "received_at": "receivedAt",
}
_EVENT_JSON = ("context", "properties", "traits", "integrations")


def _json_text(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


_EMPTY = msgspec.Raw(b"{}")


class _LakeEvent(msgspec.Struct, gc=False):
    """The fields of an ``events`` record the lake stores; nested objects stay raw JSON, so
    they are copied as text instead of being parsed and serialised again."""

    # gc=False: its fields are strings and raw bytes, so it can be in no reference cycle, and
    # the tens of thousands decoded per micro-batch would otherwise trigger collections that
    # rescan the process's long-lived objects (about a tenth of building the rows).

    messageId: str | None = None
    type: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    groupId: str | None = None
    previousId: str | None = None
    sourceId: str | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    receivedAt: str | None = None
    context: msgspec.Raw = _EMPTY
    properties: msgspec.Raw = _EMPTY
    traits: msgspec.Raw = _EMPTY
    integrations: msgspec.Raw = _EMPTY


_lake_event_decoder = msgspec.json.Decoder(list[_LakeEvent])


def _raw_column(raws: Sequence[msgspec.Raw]) -> pa.Array:
    """The JSON texts of ``raws`` as one string column, a JSON ``null`` as ``{}``: the bytes
    are joined once and handed to Arrow with their offsets (then checked to be UTF-8 there),
    instead of one Python string per value."""
    lengths = pa.array(map(len, raws), pa.int64(), size=len(raws))
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(lengths)])
    data = pa.py_buffer(b"".join(raws))
    binary = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(raws), [None, offsets.buffers()[1], data]
    )
    text = binary.cast(pa.large_string()).cast(pa.string())
    # Only a text of four bytes can be "null"; without one, the replacement (which copies
    # every text) would change nothing.
    if not pc.any(pc.equal(lengths, 4)).as_py():
        return text
    return pc.if_else(pc.equal(text, "null"), "{}", text)


def _json_array(values: Sequence[bytes]) -> bytes:
    """``values`` (JSON texts) as the text of one JSON array, copied once (a micro-batch of
    20k events is some 20 MB)."""
    if not values:
        return b"[]"
    parts = list(values)
    parts[0] = b"[" + parts[0]
    parts[-1] = parts[-1] + b"]"
    return b",".join(parts)


# Each field of _LakeEvent read from a list of them, in C.
_LAKE_EVENT_GETTERS = {name: attrgetter(name) for name in _LakeEvent.__struct_fields__}


def _event_columns(values: Sequence[bytes]) -> dict[str, pa.Array]:
    # One decode of all records as a JSON array is much cheaper than one per record, and
    # reading each field of the decoded structs (``map`` of an ``attrgetter``) runs in C, not
    # per field in Python (nor builds a tuple per record, as transposing them would).
    docs = _lake_event_decoder.decode(_json_array(values))

    def field(key: str) -> Any:
        return list(map(_LAKE_EVENT_GETTERS[key], docs))

    cols: dict[str, pa.Array] = {}
    for col, key in _EVENT_STRINGS.items():
        cols[col] = pa.array(field(key), pa.string())
    for col, key in _EVENT_TIMES.items():
        cols[col] = pa.array(field(key), pa.string()).cast(_TS)
    for col in _EVENT_JSON:
        cols[col] = _raw_column(field(col))
    cols["event_date"] = cols["timestamp"].cast(pa.date32())
    return cols


DLQ_SCHEMA = pa.schema(
    [
        ("received_at", _TS),
        ("source_id", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("message_id", pa.string()),
        ("event_type", pa.string()),
        ("event_name", pa.string()),
        ("payload", pa.string()),
        ("raw_partition", pa.int32()),
        ("raw_offset", pa.int64()),
        ("index", pa.int32()),
        ("dlq_id", pa.string()),
        ("replay_of", pa.string()),
        ("violations", pa.string()),
        ("schema_versions", pa.string()),
        ("normalized", pa.string()),
        ("stage", pa.string()),
        ("topic", pa.string()),
        ("headers", pa.string()),
        ("payload_encoding", pa.string()),
        ("received_date", pa.date32()),
    ]
)


_DLQ_JSON = ("violations", "schema_versions", "headers")


def _dlq_columns(values: Sequence[bytes]) -> dict[str, pa.Array]:
    docs = [orjson.loads(v) for v in values]
    cols: dict[str, pa.Array] = {}
    for field in DLQ_SCHEMA:
        if field.name == "received_date":
            continue
        raw = [d.get(field.name) for d in docs]
        if field.name in _DLQ_JSON:
            cols[field.name] = pa.array([_json_text(v) if v else None for v in raw], pa.string())
        elif field.type == _TS:
            cols[field.name] = pa.array(raw, pa.string()).cast(_TS)
        else:
            cols[field.name] = pa.array(raw, field.type)
    cols["received_date"] = cols["received_at"].cast(pa.date32())
    return cols


EVENTS = TableDef("events", EVENTS_SCHEMA, "event_date", _event_columns)
DLQ = TableDef("dlq", DLQ_SCHEMA, "received_date", _dlq_columns)

# Log topic -> lake table it lands in.
TABLES_BY_TOPIC = {"events": EVENTS, "dlq": DLQ}


def sink_app_id(topic: str, partition: int) -> str:
    """The Delta transaction id under which the lake stage records, in each commit to a
    topic's table, the last offset of ``partition`` it wrote: its progress, read back after a
    restart so that no record is written twice."""
    return f"clew:{topic}:{partition}"


def to_arrow(table: TableDef, values: Sequence[bytes]) -> pa.Table:
    return pa.table(table.to_columns(values), schema=table.schema)


# Tables of current state, upserted by key (not append-only histories): the profiles-lake
# stage keeps them within seconds of the serving store, and `clew rebuild` rewrites them from
# the events table. Both build their rows with `clew.lake._profile_rows`.

CUSTOMER_PROFILES_SCHEMA = pa.schema(
    [
        ("profile_id", pa.string()),
        # Every identifier as "id_type:value", sorted by (id_type, value).
        ("identifiers", pa.list_(pa.string())),
        # The first user id and email of `identifiers` (null if none), for convenient SQL.
        ("user_id", pa.string()),
        ("email", pa.string()),
        ("first_seen", _TS),
        ("last_seen", _TS),
        ("total_lifetime_value", pa.float64()),
        ("orders_count", pa.int64()),
        ("last_purchase_date", _TS),
        # The profile's traits as a JSON object with sorted keys.
        ("traits", pa.string()),
        # Every merged-away profile id that now resolves to this profile, sorted.
        ("merged_ids", pa.list_(pa.string())),
        # When the state in this row was announced (`changed_at`) or rebuilt; a row is only
        # replaced by a state at least as new.
        ("updated_at", _TS),
    ]
)

IDENTITIES_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("value", pa.string()),
        ("profile_id", pa.string()),
        # Provenance: the event that attached the identifier.
        ("message_id", pa.string()),
        ("source_id", pa.string()),
        ("time", _TS),
        # Set for an identifier attached by a probabilistic match (null: deterministic).
        ("match_weight", pa.float64()),
        ("probabilistic", pa.bool_()),
        # As in customer_profiles: an identifier moves to another profile only for a newer
        # state, so snapshots read out of order across log partitions cannot move it back.
        ("updated_at", _TS),
    ]
)


@dataclass(frozen=True, slots=True)
class StateTable:
    """A lake table of current state: one row per ``key``, replaced by upserts."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]


CUSTOMER_PROFILES = StateTable("customer_profiles", CUSTOMER_PROFILES_SCHEMA, ("profile_id",))
IDENTITIES = StateTable("identities", IDENTITIES_SCHEMA, ("id_type", "value"))
STATE_TABLES = (CUSTOMER_PROFILES, IDENTITIES)


# Append-only histories of change records: the profiles-lake stage adds each record of the
# `changes` topic it stores once, keyed by `key` (a copy of a record has the same key). Their
# rows are built with `clew.lake._change_rows`.

AUDIENCE_CHANGES_SCHEMA = pa.schema(
    [
        ("change_id", pa.string()),
        # audience_entered, audience_exited or trait_changed.
        ("kind", pa.string()),
        ("profile_id", pa.string()),
        ("user_id", pa.string()),
        # The audience entered or exited (null for a trait change).
        ("audience", pa.string()),
        # The computed trait that changed (null for an audience change).
        ("trait", pa.string()),
        # A trait's new and previous values as JSON text (null for none, and for audiences).
        ("value", pa.string()),
        ("previous", pa.string()),
        # Why it changed: event, timer or backfill.
        ("cause", pa.string()),
        # When the profiles stage decided the change (its clock, not event time).
        ("changed_at", _TS),
        # Every identifier of the profile then, as a JSON object {id_type: [values]}.
        ("identifiers", pa.string()),
        ("changed_date", pa.date32()),
    ]
)


@dataclass(frozen=True, slots=True)
class HistoryTable:
    """An append-only lake table of change records, one row per ``key``."""

    name: str
    schema: pa.Schema
    partition_by: str
    key: str


AUDIENCE_CHANGES = HistoryTable(
    "audience_changes", AUDIENCE_CHANGES_SCHEMA, "changed_date", "change_id"
)
HISTORY_TABLES = (AUDIENCE_CHANGES,)
