"""The SQL half of ``clew rebuild``: reading the lake's events in event-time order with each
event's identity payload and skip key, and the per-profile aggregates.

The identity payload of an event is everything :func:`clew.identity.extract` reads apart from
the event type: ``userId``, ``anonymousId``, and the sub-objects of ``traits``, ``context``
and ``properties`` that hold emails, phones, ``context.externalIds``, ``context.clew`` (a
probabilistic match) and the rules' custom id paths. Two events with the same payload text
have the same identifiers, whatever else they carry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from clew.identity.rules import IdentityRules
from clew.identity.traits import is_order

if TYPE_CHECKING:
    import duckdb

# Bits of the ``flags`` column.
HAS_TRAITS = 1  # an identify with traits: the unifier must see it (traits by event time)
UNCACHEABLE = 2  # an alias or a matched import: its identifiers depend on the store's state


def _pointer(key: str) -> str:
    """A JSON pointer to the top-level ``key`` (exact for any characters)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sub_object(column: str, keys: Iterable[str]) -> str:
    """SQL for a JSON object holding only ``keys`` of the JSON text ``column``."""
    parts = [
        f"{_sql_string(k)}, json_extract({column}, {_sql_string(_pointer(k))})"
        for k in sorted(set(keys))
    ]
    return f"json_object({', '.join(parts)})" if parts else "'{}'::JSON"


def payload_columns(rules: IdentityRules) -> dict[str, str]:
    """SQL expressions of the identity payload's JSON objects, by field."""
    roots: dict[str, set[str]] = {
        "traits": {"email", "phone"},
        "context": {"traits", "externalIds", "clew"},
        "properties": set(),
    }
    for custom in rules.custom_ids:
        for path in custom.paths:
            root, first = path.split(".")[:2]
            roots[root].add(first)
    return {
        "id_traits": _sub_object("traits", roots["traits"]),
        "id_context": _sub_object("context", roots["context"]),
        "id_properties": _sub_object("properties", roots["properties"]),
    }


def order_names(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The distinct track event names that are orders, decided by
    :func:`clew.identity.traits.is_order` itself (so the SQL cannot disagree with it)."""
    names = conn.execute("SELECT DISTINCT event FROM events WHERE type = 'track'").fetchall()
    return sorted(n for (n,) in names if is_order("track", n))


def _py_amount(text: str | None) -> float | None:
    """A string revenue as :func:`clew.identity.traits.revenue` reads it: ``float()``, finite."""
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _amount(key: str) -> str:
    """SQL: ``properties.<key>`` as revenue() reads it (a finite number, or NULL)."""
    path = _sql_string(_pointer(key))
    kind = f"json_type(properties, {path})"
    return (
        f"CASE WHEN {kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
        f"THEN nullif_infinite(TRY_CAST(json_extract(properties, {path}) AS DOUBLE)) "
        f"WHEN {kind} = 'VARCHAR' THEN clew_amount(json_extract_string(properties, {path})) END"
    )


def load_events(conn: duckdb.DuckDBPyConnection, rules: IdentityRules) -> int:
    """Materialise the temp tables ``ids`` (one row per distinct identity payload: ``key_id``,
    ``payload`` = the JSON array ``[userId, anonymousId, traits, context, properties]``, the
    objects cut down to what extraction reads) and ``ev`` (one row per event: ``rn``, its
    position in event-time order, ties by ``received_at`` then ``message_id``; ``key_id``;
    what the unifier needs besides the payload; ``flags``; the order amount). Returns the
    number of events."""
    import duckdb

    conn.create_function(
        "clew_amount", _py_amount, [duckdb.typing.VARCHAR], duckdb.typing.DOUBLE, side_effects=False
    )
    conn.execute(
        "CREATE OR REPLACE MACRO nullif_infinite(x) AS CASE WHEN isfinite(x) THEN x END"
    )
    orders = order_names(conn)
    listed = ", ".join(_sql_string(n) for n in orders) or "NULL"
    payload = payload_columns(rules)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE raw AS
        SELECT timestamp, received_at, message_id, type, source_id, previous_id,
               json_array(user_id, anonymous_id, {payload["id_traits"]},
                          {payload["id_context"]}, {payload["id_properties"]})::VARCHAR
                   AS payload,
               CASE WHEN type = 'identify' AND json_type(traits) = 'OBJECT'
                    AND len(json_keys(traits)) > 0 THEN traits END AS full_traits,
               (type = 'track' AND event IN ({listed})) AS is_order,
               CASE WHEN type = 'track' AND event IN ({listed})
                    THEN coalesce({_amount("revenue")}, {_amount("total")}, 0.0) END AS revenue
        FROM events
        """
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE ids AS
        SELECT (row_number() OVER () - 1)::INTEGER AS key_id, payload
        FROM (SELECT DISTINCT payload FROM raw)
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        SELECT (row_number() OVER (ORDER BY r.timestamp, r.received_at, r.message_id) - 1)
                   AS rn,
               i.key_id, r.type, r.message_id, coalesce(r.source_id, '') AS source_id,
               strftime(r.timestamp, '%Y-%m-%dT%H:%M:%S.%g') || 'Z' AS ts,
               CASE WHEN r.type = 'alias' THEN r.previous_id END AS previous_id,
               r.full_traits,
               ((CASE WHEN r.full_traits IS NOT NULL THEN {HAS_TRAITS} ELSE 0 END) |
                (CASE WHEN r.type = 'alias'
                      OR json_extract(r.payload, '/3/clew/match') IS NOT NULL
                      THEN {UNCACHEABLE} ELSE 0 END))::TINYINT AS flags,
               r.timestamp, r.is_order, r.revenue
        FROM raw r JOIN ids i USING (payload)
        """
    )
    conn.execute("DROP TABLE raw")
    (count,) = conn.execute("SELECT count(*) FROM ev").fetchone() or (0,)
    return int(count)


AGGREGATES = """
SELECT m.pidx,
       min(e.timestamp) AS first_seen,
       max(e.timestamp) AS last_seen,
       coalesce(sum(e.revenue) FILTER (WHERE e.is_order), 0.0) AS total_lifetime_value,
       count(*) FILTER (WHERE e.is_order) AS orders_count,
       max(e.timestamp) FILTER (WHERE e.is_order) AS last_purchase_date
FROM ev e JOIN mapping m USING (rn)
WHERE m.pidx IS NOT NULL
GROUP BY m.pidx
"""
"""Per profile (``mapping``: ``rn`` -> ``pidx``): first and last seen, and the purchase
totals the speed layer keeps (``clew.identity.traits``)."""
