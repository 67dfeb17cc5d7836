"""The SQL half of ``clew rebuild``: reading the lake's events in event-time order with each
event's identity payload, and the per-profile aggregates.

The identity payload of an event is everything :func:`clew.identity.extract` reads apart from
the event type: ``userId``, ``anonymousId``, and the members of ``traits``, ``context`` and
``properties`` that hold emails, phones, ``context.externalIds``, ``context.clew`` (a
probabilistic match) and the first step of the rules' custom id paths. Two events with the
same payload text carry the same identifiers, whatever else they hold.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clew.batch._lake_events import EVENT_COLUMNS
from clew.identity.rules import IdentityRules
from clew.identity.traits import ORDER_AMOUNTS, is_order

if TYPE_CHECKING:
    import duckdb

# Bits of the ``flags`` column.
HAS_TRAITS = 1  # an identify with traits: the unifier must see it (traits by event time)
UNCACHEABLE = 2  # an alias or a matched import: its identifiers depend on the store's state
HAS_CONSENT = 4  # consent preferences: the unifier must see them (the newest state wins)

_CLEW = "clew"
_NOTHING = "'{}'"


@dataclass(frozen=True, slots=True)
class PayloadShape:
    """Which members of ``traits``, ``context`` and ``properties`` a payload holds, in the
    order of its JSON arrays."""

    traits: tuple[str, ...]
    context: tuple[str, ...]
    properties: tuple[str, ...]

    @classmethod
    def of(cls, rules: IdentityRules) -> PayloadShape:
        roots: dict[str, set[str]] = {
            "traits": {"email", "phone"},
            "context": {"traits", "externalIds", _CLEW},
            "properties": set(),
        }
        for custom in rules.custom_ids:
            for path in custom.paths:
                root, first = path.split(".")[:2]
                roots[root].add(first)
        return cls(*(tuple(sorted(roots[r])) for r in ("traits", "context", "properties")))

    def objects(self, payload: list[Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The ``traits``, ``context`` and ``properties`` objects of a parsed payload (members
        that are absent or JSON null are both ``None``: extraction treats them alike)."""
        _, _, traits, context, properties = payload
        return (
            dict(zip(self.traits, traits)),  # noqa: B905 - lengths equal by construction
            dict(zip(self.context, context)),  # noqa: B905
            dict(zip(self.properties, properties)),  # noqa: B905
        )


def _pointer(key: str) -> str:
    """A JSON pointer to the top-level ``key`` (exact for any characters)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _members(column: str, keys: tuple[str, ...]) -> str:
    """SQL: the JSON values of ``keys`` in the JSON text ``column``, as a list (one parse)."""
    if not keys:
        return "[]::JSON[]"
    return f"json_extract({column}, [{', '.join(_sql_string(_pointer(k)) for k in keys)}])"


def _py_amount(text: str | None) -> float | None:
    """A string revenue as :func:`clew.identity.traits.revenue` reads it: ``float()``, finite."""
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _amount(value: str) -> str:
    """SQL: the JSON ``value`` as revenue() reads it (a finite number, or NULL). Strings are
    looked up in the temp table ``amounts``, filled by Python's ``float()``, whose grammar
    (Unicode digits and spaces, ``_``) no SQL cast reproduces."""
    kind = f"json_type({value})"
    return (
        f"CASE WHEN {kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
        f"THEN nullif_infinite(TRY_CAST({value} AS DOUBLE)) "
        f"WHEN {kind} = 'VARCHAR' "
        f"THEN (SELECT a.amount FROM amounts a WHERE a.text = ({value}) ->> '$') END"
    )


def _string_amounts(conn: duckdb.DuckDBPyConnection) -> None:
    """Materialise the temp table ``amounts`` (``text``, ``amount``): each distinct string
    amount of an order in ``raw`` with its value as :func:`_py_amount` reads it. A DuckDB
    Python UDF would do this in the query, but registering one needs numpy, which is no
    dependency of Clew."""
    texts = [
        text
        for (text,) in conn.execute(
            """
            SELECT DISTINCT a ->> '$'
            FROM (SELECT unnest(amounts) AS a FROM raw WHERE amounts IS NOT NULL)
            WHERE json_type(a) = 'VARCHAR'
            """
        ).fetchall()
    ]
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE amounts AS "
        "SELECT unnest($1::VARCHAR[]) AS text, unnest($2::DOUBLE[]) AS amount",
        [texts, [_py_amount(t) for t in texts]],
    )


def _engine_row(types: Collection[str]) -> str:
    """SQL: for an event of one of ``types``, a struct of :data:`EVENT_COLUMNS` (fields
    ``c0``, ``c1``, ...), else NULL."""
    if not types:
        return ""
    fields = ", ".join(f"c{i} := {c}" for i, c in enumerate(EVENT_COLUMNS))
    listed = ", ".join(_sql_string(t) for t in sorted(types))
    return f"CASE WHEN type IN ({listed}) THEN struct_pack({fields}) END AS engine_row,"


def load_events(
    conn: duckdb.DuckDBPyConnection, shape: PayloadShape, engine_types: Collection[str] = ()
) -> int:
    """Materialise the temp tables ``ids`` (one row per distinct identity payload: ``key_id``;
    ``payload``, the JSON array ``[userId, anonymousId, [traits members], [context
    members], [properties members]]`` in ``shape``'s order; the ``key_id`` of its base
    payloads, the same ``userId`` and/or ``anonymousId`` with no other member, where some
    event carries one) and ``ev`` (one row per event:
    ``rn``, its position in event-time order, ties by ``received_at`` then ``message_id``;
    ``key_id``; what the unifier needs besides the payload; ``flags``; whether it is an
    order and its amount; with ``engine_types``, ``engine_row``: for an event of one of those
    types, what :func:`clew.batch._lake_events.row_to_event` needs, else NULL). Returns
    the number of events."""
    _create_raw(conn, shape, engine_types)
    _create_ids(conn, shape)
    _create_ev(conn, engine_types)
    conn.execute("DROP TABLE raw")
    conn.execute("DROP TABLE amounts")
    (count,) = conn.execute("SELECT count(*) FROM ev").fetchone() or (0,)
    return int(count)


def _create_raw(
    conn: duckdb.DuckDBPyConnection, shape: PayloadShape, engine_types: Collection[str]
) -> None:
    """The temp table ``raw``: each event with a timestamp, its identity payload, flags, and
    whether it is an order with its amounts."""
    conn.execute("CREATE OR REPLACE MACRO nullif_infinite(x) AS CASE WHEN isfinite(x) THEN x END")
    # Which names are orders is decided by is_order() itself, over the distinct names.
    names = conn.execute("SELECT DISTINCT event FROM events WHERE type = 'track'").fetchall()
    orders = ", ".join(_sql_string(n) for (n,) in names if is_order("track", n)) or "NULL"
    is_order_sql = f"(type = 'track' AND event IN ({orders}))"
    match = f"json_extract(context_members[{shape.context.index(_CLEW) + 1}], '/match') IS NOT NULL"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE raw AS
        SELECT timestamp, received_at, message_id, type, source_id, previous_id,
               user_id, anonymous_id,
               json_array(user_id, anonymous_id, {_members("traits", shape.traits)},
                          context_members, {_members("properties", shape.properties)})::VARCHAR
                   AS payload,
               full_traits, consent, {_engine_row(engine_types)}
               ((CASE WHEN full_traits IS NOT NULL THEN {HAS_TRAITS} ELSE 0 END) |
                (CASE WHEN type = 'alias' OR {match} THEN {UNCACHEABLE} ELSE 0 END) |
                (CASE WHEN consent IS NOT NULL THEN {HAS_CONSENT} ELSE 0 END))::TINYINT
                   AS flags,
               {is_order_sql} AS is_order,
               CASE WHEN {is_order_sql} THEN {_members("properties", ORDER_AMOUNTS)} END
                   AS amounts
        FROM (
            SELECT *, {_members("context", shape.context)} AS context_members,
                   CASE WHEN type = 'identify' AND json_type(traits) = 'OBJECT'
                        AND len(json_keys(traits)) > 0 THEN traits END AS full_traits,
                   CASE WHEN json_type(context, '$.consent.categoryPreferences') = 'OBJECT'
                        THEN json_extract(context, '$.consent.categoryPreferences')::VARCHAR
                   END AS consent
            FROM events
        )
        WHERE timestamp IS NOT NULL
        """
    )


def _create_ids(conn: duckdb.DuckDBPyConnection, shape: PayloadShape) -> None:
    """The temp table ``ids``: one row per distinct payload of ``raw``, with its base
    payloads."""

    def base(user_id: str, anonymous_id: str) -> str:
        # Built exactly as an event's payload is, for an event without any other member.
        return (
            f"json_array({user_id}, {anonymous_id}, {_members(_NOTHING, shape.traits)}, "
            f"{_members(_NOTHING, shape.context)}, {_members(_NOTHING, shape.properties)})"
            "::VARCHAR"
        )

    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ids AS
        WITH n AS (
            SELECT (row_number() OVER () - 1)::INTEGER AS key_id, *
            FROM (SELECT DISTINCT payload, user_id, anonymous_id FROM raw)
        )
        SELECT n.key_id, n.payload, b.key_id AS base_both, u.key_id AS base_user,
               a.key_id AS base_anonymous
        FROM n
        LEFT JOIN n b ON b.payload = {base("n.user_id", "n.anonymous_id")}
        LEFT JOIN n u ON u.payload = {base("n.user_id", "NULL")}
        LEFT JOIN n a ON a.payload = {base("NULL", "n.anonymous_id")}
        """
    )


def _create_ev(conn: duckdb.DuckDBPyConnection, engine_types: Collection[str]) -> None:
    """The temp table ``ev``: one row per event of ``raw`` in event-time order, with its
    ``key_id`` and revenue."""
    _string_amounts(conn)
    amounts = ", ".join(_amount(f"r.amounts[{i + 1}]") for i in range(len(ORDER_AMOUNTS)))
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        SELECT (row_number() OVER (ORDER BY r.timestamp, r.received_at, r.message_id) - 1)
                   AS rn,
               i.key_id, r.flags, r.type, r.message_id, coalesce(r.source_id, '') AS source_id,
               r.timestamp, CASE WHEN r.type = 'alias' THEN r.previous_id END AS previous_id,
               r.full_traits, r.consent, r.is_order, {"r.engine_row," if engine_types else ""}
               CASE WHEN r.is_order
                    THEN coalesce({amounts}, 0.0)
               END AS revenue
        FROM raw r JOIN ids i USING (payload)
        """
    )


MAPPING = """
WITH mapping AS (
    SELECT e.rn, CASE WHEN a.rn IS NOT NULL THEN a.profile_id ELSE k.profile_id END
               AS profile_id
    FROM ev e LEFT JOIN applied a USING (rn) LEFT JOIN decided k USING (key_id)
)
"""
"""A CTE ``mapping`` (``rn``, ``profile_id``): each event's profile (its final survivor) is its
own if the unifier applied it (``applied``: ``rn``, ``profile_id``), else that of its payload
(``decided``: ``key_id``, ``profile_id``)."""

AGGREGATES = (
    MAPPING
    + """
SELECT m.profile_id,
       min(e.timestamp) AS first_seen,
       max(e.timestamp) AS last_seen,
       coalesce(sum(e.revenue) FILTER (WHERE e.is_order), 0.0) AS total_lifetime_value,
       count(*) FILTER (WHERE e.is_order) AS orders_count,
       max(e.timestamp) FILTER (WHERE e.is_order) AS last_purchase_date
FROM ev e JOIN mapping m USING (rn)
WHERE m.profile_id IS NOT NULL
GROUP BY m.profile_id
"""
)
"""Per profile (see :data:`MAPPING`): first and last seen, and the purchase totals the speed
layer keeps (``clew.identity.traits``)."""

ENGINE_EVENTS = (
    MAPPING
    + f"""
SELECT m.profile_id, {", ".join(f"e.engine_row.c{i}" for i in range(len(EVENT_COLUMNS)))}
FROM ev e JOIN mapping m USING (rn)
WHERE e.engine_row IS NOT NULL AND m.profile_id IS NOT NULL
ORDER BY e.rn
"""
)
"""The events loaded with ``engine_types`` that ended in a profile, in event-time order: the
profile (see :data:`MAPPING`), then the columns of :data:`EVENT_COLUMNS`."""
