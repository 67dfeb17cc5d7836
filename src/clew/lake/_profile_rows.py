"""Rows of the lake's ``customer_profiles`` and ``identities`` tables, built the same way by
the profiles-lake stage (from change snapshots) and by ``clew rebuild`` (from profiles it
re-derived), so that the two can be compared value for value.

Times are passed as epoch milliseconds (the precision the serving store keeps).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa

from clew.identity.identifiers import EMAIL, USER_ID
from clew.lake.tables import CUSTOMER_PROFILES_SCHEMA, IDENTITIES_SCHEMA
from clew.nesting import encode
from clew.store.base import Profile

_MS = pa.timestamp("ms", tz="UTC")


def traits_json(traits: dict[str, Any]) -> str:
    """The traits as JSON text with sorted keys: equal traits give equal text. Traits nested
    deeper than the Tracking API allows (from events stored before it bounded nesting) are
    cut to :data:`~clew.nesting.MAX_DEPTH` levels rather than failing the row; raises
    :class:`~clew.nesting.UnencodableJsonError` for traits no JSON can hold."""
    return encode(traits, orjson.OPT_SORT_KEYS).decode()


def _times(values: Sequence[int | None], schema: pa.Schema, column: str) -> pa.Array:
    return pa.array(values, pa.int64()).cast(_MS).cast(schema.field(column).type)


class ProfileColumns:
    """Column builder for ``customer_profiles`` rows (or, with :meth:`store_part`, for the
    columns that come from a profile's identities, traits and merges only)."""

    def __init__(self) -> None:
        self.profile_id: list[str] = []
        self.identifiers: list[list[str]] = []
        self.user_id: list[str | None] = []
        self.email: list[str | None] = []
        self.traits: list[str] = []
        self.merged_ids: list[list[str]] = []
        self.first_seen: list[int] = []
        self.last_seen: list[int] = []
        self.ltv: list[float] = []
        self.orders: list[int] = []
        self.last_purchase: list[int | None] = []
        self.updated_at: list[int] = []

    def __len__(self) -> int:
        return len(self.profile_id)

    def add_identity(
        self,
        profile_id: str,
        identities: Iterable[tuple[str, str]],
        traits: dict[str, Any],
        merged_ids: Iterable[str],
    ) -> None:
        """The columns a profile's identifiers, traits and merges decide."""
        pairs = sorted(identities)
        self.profile_id.append(profile_id)
        self.identifiers.append([f"{t}:{v}" for t, v in pairs])
        self.user_id.append(next((v for t, v in pairs if t == USER_ID), None))
        self.email.append(next((v for t, v in pairs if t == EMAIL), None))
        self.traits.append(traits_json(traits))
        self.merged_ids.append(sorted(merged_ids))

    def add_activity(
        self,
        first_seen_ms: int,
        last_seen_ms: int,
        lifetime_value: float,
        orders: int,
        last_purchase_ms: int | None,
        updated_ms: int,
    ) -> None:
        """The columns the profile's events decide, for the row added last."""
        self.first_seen.append(first_seen_ms)
        self.last_seen.append(last_seen_ms)
        self.ltv.append(float(lifetime_value))
        self.orders.append(int(orders))
        self.last_purchase.append(last_purchase_ms)
        self.updated_at.append(updated_ms)

    def store_part(self) -> pa.Table:
        """``profile_id, identifiers, user_id, email, traits, merged_ids`` of every row."""
        s = CUSTOMER_PROFILES_SCHEMA
        return pa.table(
            {
                "profile_id": pa.array(self.profile_id, pa.string()),
                "identifiers": pa.array(self.identifiers, s.field("identifiers").type),
                "user_id": pa.array(self.user_id, pa.string()),
                "email": pa.array(self.email, pa.string()),
                "traits": pa.array(self.traits, pa.string()),
                "merged_ids": pa.array(self.merged_ids, s.field("merged_ids").type),
            }
        )

    def table(self) -> pa.Table:
        """Whole ``customer_profiles`` rows (every row needs :meth:`add_activity`)."""
        s = CUSTOMER_PROFILES_SCHEMA
        part = self.store_part()
        columns = {
            **{name: part.column(name) for name in part.column_names},
            "first_seen": _times(self.first_seen, s, "first_seen"),
            "last_seen": _times(self.last_seen, s, "last_seen"),
            "total_lifetime_value": pa.array(self.ltv, pa.float64()),
            "orders_count": pa.array(self.orders, pa.int64()),
            "last_purchase_date": _times(self.last_purchase, s, "last_purchase_date"),
            "updated_at": _times(self.updated_at, s, "updated_at"),
        }
        return pa.table({f.name: columns[f.name] for f in s}, schema=s)


class IdentityColumns:
    """Column builder for ``identities`` rows."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, str, str, str, str, int, float | None, int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        id_type: str,
        value: str,
        profile_id: str,
        message_id: str,
        source_id: str,
        time_ms: int,
        match_weight: float | None,
        updated_ms: int,
    ) -> None:
        self._rows.append(
            (id_type, value, profile_id, message_id, source_id, time_ms, match_weight, updated_ms)
        )

    def table(self) -> pa.Table:
        s = IDENTITIES_SCHEMA
        cols = list(zip(*self._rows, strict=True)) if self._rows else [()] * 8
        weights = pa.array(cols[6], pa.float64())
        return pa.table(
            {
                "id_type": pa.array(cols[0], pa.string()),
                "value": pa.array(cols[1], pa.string()),
                "profile_id": pa.array(cols[2], pa.string()),
                "message_id": pa.array(cols[3], pa.string()),
                "source_id": pa.array(cols[4], pa.string()),
                "time": _times(cols[5], s, "time"),
                "match_weight": weights,
                "probabilistic": weights.is_valid(),
                "updated_at": _times(cols[7], s, "updated_at"),
            },
            schema=s,
        )


def profile_columns(
    profiles: Iterable[Profile], updated_ms: int
) -> tuple[ProfileColumns, IdentityColumns]:
    """The ``customer_profiles`` part a rebuild takes from resolved ``profiles``, and their
    ``identities`` rows stamped ``updated_ms`` (both rebuild engines use it)."""
    columns = ProfileColumns()
    identities = IdentityColumns()
    for p in profiles:
        columns.add_identity(
            p.profile_id,
            ((e.id_type, e.value) for e in p.identities),
            p.traits,
            (r.from_id for r in p.merged),
        )
        for e in p.identities:
            prov = e.provenance
            identities.add(
                e.id_type,
                e.value,
                p.profile_id,
                prov.message_id,
                prov.source_id,
                prov.time_ms,
                prov.match_weight,
                updated_ms,
            )
    return columns, identities
