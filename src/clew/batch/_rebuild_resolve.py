"""The Python half of ``clew rebuild``: apply the lake's events, in event-time order, to the
unifier, skipping every event whose outcome is already known.

Skipping is exact. A payload (see ``_rebuild_sql``) is *decided* for a profile once an event
carrying it was *fully accepted*: every identifier it carries was attached to, or already in,
the profile it resolved to, or was dropped by extraction itself (a pure function of the
payload). During a rebuild nothing is ever detached or split, and merges move whole
profiles, so identifiers that once shared a profile share one forever. A later event with a
decided payload therefore finds all its identifiers in one profile: resolving it would only
widen that profile's seen times. Seen times and orders come from SQL (min/max and sums over
the events mapped to each profile); first-seen, which picks a merge's survivor, is set by the
event that created the profile (events come in time order), so the skipped widening cannot
change any later decision.

The same holds for the *base* payloads of a fully accepted one (its ``userId`` and
``anonymousId`` with every other member absent: a page view after the identify that brought
an email) when at least one of those ids is an identifier of the profile.

Never skipped: an identify with traits (its traits apply by event time), an event carrying
consent preferences (the newest state wins), an alias (whose ``previousId`` type depends on
what the store knows) and a probabilistic match (whose link may not be owned yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clew.batch._rebuild_sql import UNCACHEABLE, PayloadShape
from clew.events import Event
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID, extract
from clew.identity.unifier import Unifier

if TYPE_CHECKING:
    import duckdb

_BATCH_ROWS = 65_536
_COLUMNS = (
    "key_id, flags, type, message_id, source_id, timestamp, previous_id, full_traits, consent"
)


@dataclass(slots=True)
class Resolved:
    """Each event's profile, as resolved when it was applied: ``applied`` maps the ``rn`` of
    every event the unifier saw to its profile; every other event takes the profile its
    payload was decided for (``decided``, by ``key_id``)."""

    applied: dict[int, str | None]
    decided: dict[int, str | None]


class _Payloads:
    """The distinct payloads (table ``ids``) and what is decided about them."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        rows = conn.execute(
            "SELECT payload, base_both, base_user, base_anonymous FROM ids ORDER BY key_id"
        ).fetchall()
        self.text: list[str] = [r[0] for r in rows]
        self.bases: list[tuple[int | None, int | None, int | None]] = [r[1:] for r in rows]
        self.decided: dict[int, str | None] = {}
        # 1 per decided key_id, readable as an Arrow array without copying.
        self.mask = bytearray(len(rows))
        self.mask_view = pa.Array.from_buffers(
            pa.uint8(), len(rows), [None, pa.py_buffer(self.mask)]
        )
        self.extraction_drops: dict[int, int] = {}

    def decide(self, key: int, pid: str | None) -> None:
        self.decided[key] = pid
        self.mask[key] = 1

    def decide_bases(
        self, key: int, pid: str, user_id: str | None, anon: str | None, unifier: Unifier
    ) -> None:
        """Decide the base payloads of ``key`` that carry an identifier of ``pid``."""
        both, user_only, anon_only = (
            None if b is None or b in self.decided else b for b in self.bases[key]
        )
        if both is None and user_only is None and anon_only is None:
            return
        store = unifier.store
        has_user = user_id is not None and store.lookup(USER_ID, user_id.strip()) == pid
        has_anon = anon is not None and store.lookup(ANONYMOUS_ID, anon.strip()) == pid
        for base, carries in (
            (both, has_user or has_anon),
            (user_only, has_user),
            (anon_only, has_anon),
        ):
            if base is not None and carries and base not in self.decided:
                self.decide(base, pid)


def _batches(conn: duckdb.DuckDBPyConnection) -> Iterator[pa.RecordBatch]:
    reader = conn.sql(f"SELECT {_COLUMNS} FROM ev ORDER BY rn").to_arrow_reader(_BATCH_ROWS)
    assert reader is not None
    yield from reader


def resolve_events(
    conn: duckdb.DuckDBPyConnection, unifier: Unifier, shape: PayloadShape
) -> Resolved:
    """Apply the events of temp table ``ev`` in ``rn`` order (see the module docstring for
    which ones are skipped); returns every event's profile."""
    payloads = _Payloads(conn)
    applied: dict[int, str | None] = {}
    rn = 0
    for batch in _batches(conn):
        keys = batch.column(0)
        undecided = pc.equal(pc.take(payloads.mask_view, keys), 0)
        need = pc.indices_nonzero(pc.or_(pc.not_equal(batch.column(1), 0), undecided))
        sub = batch.take(need)
        rows = zip(
            need.to_pylist(),
            *(sub.column(c).to_pylist() for c in (0, 1, 2, 3, 4)),
            pc.strftime(sub.column(5), format="%Y-%m-%dT%H:%M:%SZ").to_pylist(),
            sub.column(6).to_pylist(),
            sub.column(7).to_pylist(),
            sub.column(8).to_pylist(),
            strict=True,
        )
        for i, k, f, type_, mid, source, when, previous, traits, consent in rows:
            if not f and k in payloads.decided:
                continue  # decided by an earlier event of this batch
            payload = orjson.loads(payloads.text[k])
            id_traits, id_context, id_properties = shape.objects(payload)
            if traits is not None:
                id_traits = orjson.loads(traits)
            elif type_ == "identify":
                id_traits = {}  # an identify without traits: nothing to apply
            if consent is not None:
                id_context = {
                    **id_context,
                    "consent": {"categoryPreferences": orjson.loads(consent)},
                }
            event = Event(
                type=type_,
                message_id=mid,
                timestamp=when,
                received_at=when,
                source_id=source,
                user_id=payload[0],
                anonymous_id=payload[1],
                previous_id=previous,
                traits=id_traits,
                context=id_context,
                properties=id_properties,
            )
            outcome = unifier.apply(event)
            pid = outcome.profile_id
            applied[rn + i] = pid
            if f & UNCACHEABLE or k in payloads.decided:
                continue
            dropped = len(outcome.resolution.dropped)
            if dropped:
                # Drops by extraction are the same for every event with this payload; a
                # drop by a rule (limit, merge cap, separation) depends on the store's
                # state, so the payload stays undecided.
                if k not in payloads.extraction_drops:
                    payloads.extraction_drops[k] = len(extract(event, unifier.rules).dropped)
                if dropped != payloads.extraction_drops[k]:
                    continue
            payloads.decide(k, pid)
            if pid is not None:
                payloads.decide_bases(k, pid, payload[0], payload[1], unifier)
        rn += batch.num_rows
    return Resolved(applied, payloads.decided)
