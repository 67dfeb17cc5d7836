"""Compatibility of JSON Schema (draft 2020-12) versions, with Confluent Schema Registry's
meaning of the modes:

- **backward**: consumers using the new schema can read data written with the old one, so
  every event valid under the old schema must validate against the new schema;
- **forward**: consumers still on the old schema can read data written with the new one;
- **full**: both. ``*_TRANSITIVE`` modes check against every earlier version, the others only
  against the latest; ``NONE`` checks nothing.

:func:`check` reports each way an event can stop validating as a :class:`Change` with a path,
a kind and a message. The structural rules (see :mod:`clew.schema._subsume`) are confirmed by
a semantic containment check (jsonschema-rs ``canonical``): when that proves the new schema
accepts everything the old one did, changes reported only because they could not be proven
safe are dropped; when it proves a value is lost that no rule explains, a ``SCHEMA_NARROWED``
change is reported.

>>> old = {"type": "object", "properties": {"price": {"type": "integer"}}}
>>> new = {"type": "object", "properties": {"price": {"type": "number"}}}
>>> check(old, new, Direction.BACKWARD)
[]
>>> [c.kind.value for c in check(old, new, Direction.FORWARD)]
['TYPE_WIDENED']
"""

from __future__ import annotations

from collections.abc import Sequence

import jsonschema_rs
from jsonschema_rs.canonical import Containment, Satisfiability

from clew.schema._jsonschema import Schema, canonical_json
from clew.schema._subsume import Subsumption
from clew.schema.changes import Change, ChangeKind, Compatibility, Direction

__all__ = [
    "Change",
    "ChangeKind",
    "Compatibility",
    "Direction",
    "check",
    "check_mode",
    "diff",
    "disjoint",
]


def check(
    old: Schema, new: Schema, direction: Direction = Direction.BACKWARD, *, semantic: bool = True
) -> list[Change]:
    """Every breaking change from ``old`` to ``new`` in ``direction`` (``FULL``: both), backward
    changes first. An empty list means compatible. ``semantic=False`` skips the containment
    check and returns the structural rules' findings only."""
    if canonical_json(old) == canonical_json(new):
        return []
    out: list[Change] = []
    for d in (Direction.BACKWARD, Direction.FORWARD):
        if direction not in (d, Direction.FULL):
            continue
        writer, reader = (old, new) if d is Direction.BACKWARD else (new, old)
        found = Subsumption(writer, reader, d).run()
        if semantic:
            found = _confirm(writer, reader, d, found)
        out += found
    return out


def check_mode(history: Sequence[Schema], new: Schema, mode: Compatibility) -> list[Change]:
    """The changes that make ``new`` break ``mode`` given the earlier versions ``history``
    (oldest first). Transitive modes check every version, newest first, and report each
    change once, against the newest version it breaks; ``Change.against`` is the 1-based
    position in ``history`` of that version."""
    direction = mode.direction
    if direction is None or not history:
        return []
    positions = range(len(history), 0, -1) if mode.transitive else [len(history)]
    seen: set[tuple[str, ChangeKind, Direction, str]] = set()
    out: list[Change] = []
    for position in positions:
        for change in check(history[position - 1], new, direction):
            key = (change.path, change.kind, change.breaks, change.message)
            if key not in seen:
                seen.add(key)
                out.append(_with_against(change, position))
    return out


def diff(old: Schema, new: Schema) -> list[Change]:
    """Every change from ``old`` to ``new`` that breaks either direction."""
    return check(old, new, Direction.FULL)


def disjoint(old: Schema, new: Schema) -> bool:
    """True when it is proven that no value is valid under both schemas: no event written
    under ``old`` can validate against ``new`` (a SchemaVer MODEL change)."""
    try:
        both = _canonical(old).intersect(_canonical(new))
        return both.satisfiability() == Satisfiability.NO
    except Exception:  # a second opinion: when it cannot run, it says nothing
        return False


def _canonical(schema: Schema) -> jsonschema_rs.CanonicalSchema:
    return jsonschema_rs.canonicalize(schema, validate_formats=True)


def _confirm(writer: Schema, reader: Schema, d: Direction, found: list[Change]) -> list[Change]:
    try:
        w, r = _canonical(writer), _canonical(reader)
        verdict = r.covers(w)
        if verdict == Containment.YES:
            return [c for c in found if not c.kind.conservative]
        if verdict != Containment.NO or found:
            return found
        witness = canonical_json(w.subtract(r).to_json_schema())
    except Exception:  # a second opinion: when it cannot run, it says nothing
        return found
    if len(witness) > 300:
        witness = witness[:297] + "..."
    if d is Direction.BACKWARD:
        kind, msg = ChangeKind.SCHEMA_NARROWED, "the new schema rejects values the old accepted"
    else:
        kind, msg = ChangeKind.SCHEMA_WIDENED, "the new schema accepts values the old rejected"
    return [Change("", kind, f"{msg}, for example values matching {witness}", d)]


def _with_against(change: Change, position: int) -> Change:
    return Change(
        change.path, change.kind, change.message, change.breaks, position, change.rejects_all
    )
