"""What the Spark engine of ``clew rebuild`` runs in its Python workers, on Arrow batches.

:func:`prepare` turns each lake event into what identity resolution needs (its identity
payload, as in ``_rebuild_sql``, and the consent preferences it carries), its order amount
(``clew.identity.traits``) and the nodes of the identifier graph: every identifier the event
could attach or look up. Identifiers that never share an event can never share a profile, so
the graph's connected components bound every profile.

:func:`resolve` runs the same :class:`~clew.identity.unifier.Unifier` as the DuckDB rebuild
over the events of whole components, in event-time order. Components are independent: every
decision of the unifier (lookups, limits, merge caps, separations, survivors, trait times)
reads only profiles made of identifiers of the event's own component, so applying each
component's events alone, in the global order restricted to it, gives what one pass over all
events gives. A partition may hold many components; one store serves them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clew.batch._rebuild_sql import PayloadShape
from clew.config import IdentitySettings
from clew.events import Event
from clew.identity.consent import CONSENT
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID, extract
from clew.identity.traits import is_order, revenue
from clew.identity.unifier import Unifier
from clew.lake._profile_rows import profile_columns
from clew.nesting import encode
from clew.store.base import Separation
from clew.store.memory import MemoryProfileStore

_US = pa.timestamp("us", tz="UTC")
_TEXTS = pa.list_(pa.string())

EVENT_COLUMNS = (
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "previous_id",
    "timestamp",
    "received_at",
    "source_id",
    "context",
    "properties",
    "traits",
)
"""The ``events`` columns :func:`prepare` reads."""

PREPARED = pa.schema(
    [
        ("message_id", pa.string()),
        ("type", pa.string()),
        ("source_id", pa.string()),
        ("timestamp", _US),
        ("received_at", _US),
        ("previous_id", pa.string()),
        ("payload", pa.string()),
        ("full_traits", pa.string()),
        # The event's ``context.consent.categoryPreferences`` object as JSON, if it has one.
        ("consent", pa.string()),
        ("is_order", pa.bool_()),
        ("revenue", pa.float64()),
        ("nodes", _TEXTS),
    ]
)
"""One row per event with a time, from :func:`prepare`."""

# Kinds of the rows :func:`resolve` returns, all in the one schema below.
EVENT, PROFILE, IDENTITY = 0, 1, 2

RESOLVED = pa.schema(
    [
        ("kind", pa.int8()),
        ("profile_id", pa.string()),
        # EVENT rows: the event's time and order amount, for the per-profile aggregates.
        ("timestamp", _US),
        ("is_order", pa.bool_()),
        ("revenue", pa.float64()),
        # PROFILE rows: the customer_profiles columns a profile's store state decides.
        ("identifiers", _TEXTS),
        ("user_id", pa.string()),
        ("email", pa.string()),
        ("traits", pa.string()),
        ("merged_ids", _TEXTS),
        # PROFILE rows, for the reconciliation only (no customer_profiles column): the
        # profile's current consent as JSON.
        ("consent", pa.string()),
        # IDENTITY rows: the identities columns.
        ("id_type", pa.string()),
        ("value", pa.string()),
        ("message_id", pa.string()),
        ("source_id", pa.string()),
        ("time", _US),
        ("match_weight", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class Job:
    """What every worker needs, small and picklable: the identity settings as JSON (rebuilt
    once per task), the operator's separations and the rebuild's time."""

    identity_json: str
    separations: tuple[Separation, ...]
    rebuilt_ms: int

    def identity(self) -> IdentitySettings:
        return IdentitySettings.model_validate_json(self.identity_json)


def node(id_type: str, value: str) -> str:
    """A graph node: one identifier as text (unambiguous for any characters)."""
    return orjson.dumps([id_type, value]).decode()


def _object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _preferences(context: dict[str, Any] | None) -> dict[str, Any] | None:
    """``context.consent.categoryPreferences`` when it is an object (what the DuckDB rebuild
    selects; the unifier keeps its true/false categories)."""
    consent = None if context is None else context.get("consent")
    prefs = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    return prefs if isinstance(prefs, dict) else None


def _members(obj: dict[str, Any] | None, keys: tuple[str, ...]) -> list[Any]:
    return [None if obj is None else obj.get(k) for k in keys]


def _event(
    shape: PayloadShape,
    payload: list[Any],
    type_: str,
    message_id: str,
    source_id: str,
    when: str,
    previous_id: str | None,
    full_traits: dict[str, Any] | None,
    consent: dict[str, Any] | None,
) -> Event:
    """The event the unifier sees, built as the DuckDB rebuild builds it (see
    ``_rebuild_resolve``): the identity payload, an identify's whole traits and the consent
    preferences."""
    traits, context, properties = shape.objects(payload)
    if full_traits is not None:
        traits = full_traits
    elif type_ == "identify":
        traits = {}
    if consent is not None:
        context = {**context, "consent": {"categoryPreferences": consent}}
    return Event(
        type=type_,
        message_id=message_id,
        timestamp=when,
        received_at=when,
        source_id=source_id,
        user_id=payload[0],
        anonymous_id=payload[1],
        previous_id=previous_id,
        traits=traits,
        context=context,
        properties=properties,
    )


def _consent_json(computed: dict[str, Any]) -> str:
    """A profile's current consent (from its computed values) as JSON with sorted keys;
    ``{}`` when it has none, as the reconciliation reads it."""
    return orjson.dumps(computed.get(CONSENT, {}), option=orjson.OPT_SORT_KEYS).decode()


def _utc(column: pa.Array) -> pa.Array:
    """Spark hands timestamps over in its session time zone; the instants stay the same."""
    return column.cast(_US)


def _seconds(column: pa.Array) -> list[str]:
    # The DuckDB rebuild hands the unifier event times to the second, in this format.
    return pc.strftime(_utc(column), format="%Y-%m-%dT%H:%M:%SZ").to_pylist()  # type: ignore[no-any-return]


def prepare(batches: Iterable[pa.RecordBatch], job: Job) -> Iterator[pa.RecordBatch]:
    """Events (``EVENT_COLUMNS``, rows with a time) to :data:`PREPARED` rows."""
    rules = job.identity().rules
    table = rules.table()
    shape = PayloadShape.of(rules)
    alias_types = (
        (rules.previous_id_type,) if rules.previous_id_type is not None else (USER_ID, ANONYMOUS_ID)
    )
    for batch in batches:
        cols = {name: batch.column(name).to_pylist() for name in EVENT_COLUMNS}
        whens = _seconds(batch.column("timestamp"))
        out: dict[str, list[Any]] = {f.name: [] for f in PREPARED}
        for i in range(batch.num_rows):
            type_ = cols["type"][i]
            traits = _object(cols["traits"][i])
            context = _object(cols["context"][i])
            properties = _object(cols["properties"][i])
            payload = [
                cols["user_id"][i],
                cols["anonymous_id"][i],
                _members(traits, shape.traits),
                _members(context, shape.context),
                _members(properties, shape.properties),
            ]
            full = traits if type_ == "identify" and traits else None
            previous = cols["previous_id"][i] if type_ == "alias" else None
            source = cols["source_id"][i] or ""
            prefs = _preferences(context)
            mid = cols["message_id"][i]
            event = _event(shape, payload, type_, mid, source, whens[i], previous, full, prefs)
            found: dict[str, None] = {}
            # An alias's previousId is a user id or an anonymous id depending on what the
            # store knows when it is applied: both are nodes.
            for previous_type in alias_types if previous is not None else (USER_ID,):
                extraction = extract(event, rules, previous_id_type=previous_type, table=table)
                for ident in extraction.identifiers:
                    found[node(ident.id_type, ident.value)] = None
                if extraction.link is not None:
                    found[node(extraction.link.id_type, extraction.link.value)] = None
            order = is_order(type_ or "", cols["event"][i])
            out["message_id"].append(cols["message_id"][i])
            out["type"].append(type_)
            out["source_id"].append(source)
            out["timestamp"].append(cols["timestamp"][i])
            out["received_at"].append(cols["received_at"][i])
            out["previous_id"].append(previous)
            out["payload"].append(encode(payload).decode())
            out["full_traits"].append(None if full is None else cols["traits"][i])
            out["consent"].append(None if prefs is None else encode(prefs).decode())
            out["is_order"].append(order)
            out["revenue"].append(revenue(properties or {}) if order else None)
            out["nodes"].append(list(found))
        yield pa.RecordBatch.from_pydict(out, schema=PREPARED)


def resolve(batches: Iterable[pa.RecordBatch], job: Job) -> Iterator[pa.RecordBatch]:
    """:data:`PREPARED` rows of whole components, sorted by event time (ties: received_at,
    then message_id) to :data:`RESOLVED` rows: one per event with a profile, then one per
    profile and one per identifier of the partition's profiles."""
    ident = job.identity()
    shape = PayloadShape.of(ident.rules)
    store = MemoryProfileStore(history=0)
    for separation in job.separations:
        store.add_separation(separation)
    unifier = Unifier(store, ident.rules, ident.traits, keep_history=False)
    unifier.refresh_separations()
    pids: list[str | None] = []
    times: list[pa.Array] = []
    orders: list[pa.Array] = []
    amounts: list[pa.Array] = []
    for batch in batches:
        rows = zip(
            batch.column("type").to_pylist(),
            batch.column("message_id").to_pylist(),
            batch.column("source_id").to_pylist(),
            _seconds(batch.column("timestamp")),
            batch.column("previous_id").to_pylist(),
            batch.column("payload").to_pylist(),
            batch.column("full_traits").to_pylist(),
            batch.column("consent").to_pylist(),
            strict=True,
        )
        for type_, mid, source, when, previous, payload, traits, consent in rows:
            full = None if traits is None else orjson.loads(traits)
            prefs = None if consent is None else orjson.loads(consent)
            event = _event(
                shape, orjson.loads(payload), type_, mid, source, when, previous, full, prefs
            )
            pids.append(unifier.apply(event).profile_id)
        times.append(_utc(batch.column("timestamp")))
        orders.append(batch.column("is_order"))
        amounts.append(batch.column("revenue"))
    if not pids:
        return
    survivors: dict[str, str | None] = {}
    final: list[str | None] = []
    for pid in pids:
        if pid is not None and pid not in survivors:
            survivors[pid] = store.resolve(pid)
        final.append(None if pid is None else survivors[pid])
    yield _event_rows(final, times, orders, amounts)
    yield from _profile_rows(store, job.rebuilt_ms)


def _event_rows(
    pids: list[str | None], times: list[pa.Array], orders: list[pa.Array], amounts: list[pa.Array]
) -> pa.RecordBatch:
    n = len(pids)
    columns = {
        "kind": pa.array([EVENT] * n, pa.int8()),
        "profile_id": pa.array(pids, pa.string()),
        "timestamp": pa.concat_arrays(times),
        "is_order": pa.concat_arrays(orders),
        "revenue": pa.concat_arrays(amounts),
    }
    return _batch(columns, n)


def _profile_rows(store: MemoryProfileStore, rebuilt_ms: int) -> Iterator[pa.RecordBatch]:
    profiles = store.scan(None, 1 << 62)
    columns, identities = profile_columns(profiles, rebuilt_ms)
    part = columns.store_part()
    n = part.num_rows
    consent = [_consent_json(p.computed) for p in profiles]
    yield _batch(
        {
            "kind": pa.array([PROFILE] * n, pa.int8()),
            **{name: part.column(name).combine_chunks() for name in part.column_names},
            "consent": pa.array(consent, pa.string()),
        },
        n,
    )
    ids = identities.table()
    n = ids.num_rows
    yield _batch(
        {
            "kind": pa.array([IDENTITY] * n, pa.int8()),
            **{
                name: ids.column(name).combine_chunks()
                for name in ("id_type", "value", "profile_id", "message_id", "source_id")
            },
            "time": ids.column("time").combine_chunks().cast(_US),
            "match_weight": ids.column("match_weight").combine_chunks(),
        },
        n,
    )


def _batch(columns: dict[str, pa.Array], n: int) -> pa.RecordBatch:
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in RESOLVED]
    return pa.RecordBatch.from_arrays(arrays, schema=RESOLVED)
