"""Rows of the lake's ``audience_changes`` table, from the audience and trait change records
of the ``changes`` topic.

JSON columns (``value``, ``previous``, ``identifiers``) are written with sorted keys, so equal
values give equal text; a JSON ``null`` (or an absent value) is SQL NULL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pyarrow as pa

from clew.audiences.changes import AudienceChange
from clew.events import parse_time
from clew.lake.tables import AUDIENCE_CHANGES_SCHEMA

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MS = pa.timestamp("ms", tz="UTC")


def _json(value: Any) -> str | None:
    # msgspec, not orjson: a trait value may be an integer wider than 64 bits.
    return None if value is None else msgspec.json.encode(value, order="sorted").decode()


class AudienceChangeColumns:
    """Column builder for ``audience_changes`` rows, one per ``change_id``: a copy of a change
    already added (the profiles stage re-sends what it cannot prove it sent) is dropped."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[AudienceChange, int]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, change: AudienceChange) -> None:
        """Raises ``ValueError`` (and adds nothing) if ``changed_at`` is not an ISO-8601
        time."""
        changed_ms = (parse_time(change.changed_at) - _EPOCH) // _ONE_MS
        self._rows.setdefault(change.change_id, (change, changed_ms))

    def dates(self) -> list[str]:
        """The ISO dates (UTC) of ``changed_at`` among the rows: the partitions they go to."""
        days = {datetime.fromtimestamp(ms / 1000, UTC).date() for _, ms in self._rows.values()}
        return sorted(d.isoformat() for d in days)

    def table(self) -> pa.Table:
        s = AUDIENCE_CHANGES_SCHEMA
        rows = [c for c, _ in self._rows.values()]
        changed_at = (
            pa.array([ms for _, ms in self._rows.values()], pa.int64())
            .cast(_MS)
            .cast(s.field("changed_at").type)
        )
        columns = {
            "change_id": pa.array([c.change_id for c in rows], pa.string()),
            "kind": pa.array([c.kind for c in rows], pa.string()),
            "profile_id": pa.array([c.profile_id for c in rows], pa.string()),
            "user_id": pa.array([c.user_id for c in rows], pa.string()),
            "audience": pa.array([c.audience for c in rows], pa.string()),
            "trait": pa.array([c.trait for c in rows], pa.string()),
            "value": pa.array([_json(c.value) for c in rows], pa.string()),
            "previous": pa.array([_json(c.previous) for c in rows], pa.string()),
            "cause": pa.array([c.cause for c in rows], pa.string()),
            "changed_at": changed_at,
            "identifiers": pa.array([_json(c.identifiers) for c in rows], pa.string()),
            "changed_date": changed_at.cast(pa.date32()),
        }
        return pa.table(columns, schema=s)
