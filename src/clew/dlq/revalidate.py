"""What the validate stage would make of a dead letter now: :func:`revalidate` applies the
checks of :mod:`clew.schema.event_checks` again, against the source's *current* tracking
plan (:class:`Plans`)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import msgspec

from clew.config import Settings
from clew.dlq.snapshot import DlqRow
from clew.events import EVENT_TYPES, Event, Rejection, normalise
from clew.nesting import MAX_DEPTH
from clew.schema.event_checks import Blocked, apply_plan, within_depth

if TYPE_CHECKING:
    from clew.schema import CompiledPlan, SchemaRegistry

# Levels an event of a batch request may nest (the request and its array are two).
_EVENT_ROOM = MAX_DEPTH - 2

_event_decoder = msgspec.json.Decoder(Event)
# apply_plan counts violations for the validate stage's metrics; a replay does not.
_IGNORED: Counter[str] = Counter()
_decoder = msgspec.json.Decoder()


class Plans:
    """Each source's plan as it is when the replay starts (None: the source has no plan, so
    nothing is checked, as in the validate stage)."""

    def __init__(self, settings: Settings) -> None:
        from clew.schema import SchemaRegistry
        from clew.sources import Catalog

        catalog = Catalog.open(settings)
        try:
            self._names = {s.id: s.name for s in catalog.sources()}
        finally:
            catalog.close()
        self._registry: SchemaRegistry = SchemaRegistry.open(settings)
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
