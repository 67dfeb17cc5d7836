"""What the validate stage checks on a normalised event besides its envelope: the source's
tracking plan (:func:`apply_plan`, an event it blocks is :class:`Blocked`), how deep the event
nests (:func:`within_depth`) and that its integers fit 64 bits (:func:`within_int_range`).
The DLQ replay (:mod:`clew.dlq.replay`) applies the same checks again, so a replayed event is
the one a first-time acceptance makes."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import msgspec

from clew.events import Event, Rejection
from clew.nesting import MAX_DEPTH, huge_int_at, nests_deeper

if TYPE_CHECKING:
    from clew.schema.validator import CompiledPlan

_encoder = msgspec.json.Encoder()


class Blocked(msgspec.Struct):
    """An event the tracking plan blocked: why, and the normalised event for a replay."""

    rejection: Rejection
    violations: list[dict[str, str]]
    schema_versions: dict[str, str]
    normalized: str


def apply_plan(plan: CompiledPlan, ev: Event, counts: Counter[str]) -> Event | Blocked:
    """Enforce ``plan`` on one normalised event: the event to emit (possibly with unplanned
    properties omitted, or violations recorded in ``context.violations``), or why it is
    blocked. Counts violations and omissions in ``counts``."""
    verdict = plan.enforce(
        {
            "type": ev.type,
            "event": ev.event,
            "properties": ev.properties,
            "traits": ev.traits,
            "context": ev.context,
        }
    )
    if verdict.violations:
        counts["violations"] += len(verdict.violations)
    if verdict.omitted:
        counts["omitted_properties"] += len(verdict.omitted)
    if verdict.accepted:
        out = verdict.event
        if out is not None and (
            out.get("properties") is not ev.properties
            or out.get("traits") is not ev.traits
            or out.get("context") is not ev.context
        ):
            return msgspec.structs.replace(
                ev,
                properties=out.get("properties") or {},
                traits=out.get("traits") or {},
                context=out.get("context") or {},
            )
        return ev
    violations = [msgspec.to_builtins(v) for v in verdict.violations]
    first = verdict.violations[0] if verdict.violations else None
    detail = f"{first.path}: {first.message}" if first is not None else "blocked by the plan"
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    reason = verdict.reason or "schema_violation"
    return Blocked(
        rejection=Rejection(
            reason,
            f"{detail}{more}",
            message_id=ev.message_id,
            event_type=ev.type,
            event_name=ev.event,
        ),
        violations=violations,
        schema_versions=dict(verdict.schema_versions),
        normalized=_encoder.encode(ev).decode(),
    )


def within_depth(ev: Event, room: int) -> Event | Rejection:
    """``ev``, or its rejection when its objects (the event itself being one level) nest
    deeper than ``room`` levels."""
    if not nests_deeper((ev.properties, ev.traits, ev.context, ev.integrations), room):
        return ev
    return Rejection(
        "invalid_json",
        f"the event nests objects and arrays deeper than {MAX_DEPTH} levels "
        "(counted from its request's root)",
        message_id=ev.message_id,
        event_type=ev.type,
        event_name=ev.event,
    )


def within_int_range(ev: Event) -> Event | Rejection:
    """``ev``, or its rejection when it holds an integer outside the 64-bit range."""
    for name, part in (
        ("properties", ev.properties),
        ("traits", ev.traits),
        ("context", ev.context),
        ("integrations", ev.integrations),
    ):
        where = huge_int_at(part, name)
        if where is not None:
            return Rejection(
                "invalid_json",
                f"the event holds an integer beyond 64 bits at {where}; "
                "send it as a string, or as a number with a decimal point",
                message_id=ev.message_id,
                event_type=ev.type,
                event_name=ev.event,
            )
    return ev
