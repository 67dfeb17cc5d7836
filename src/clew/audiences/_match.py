"""The building blocks of definitions: durations, property paths, comparisons and which
events a definition counts (:class:`EventMatch`), with the parsing of each."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clew.events import Event

OPERATORS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "exists", "not_exists", "contains", "in", "not_in"}
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}
_UNIT_MS.update(d=86_400_000, w=7 * 86_400_000)
_ROOTS = ("properties", "context", "traits")
_MISSING = object()


class DefinitionError(ValueError):
    """A definition cannot be used; the message names it and says what to change."""


def parse_duration(value: Any, where: str) -> int:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"7d"``, ``"2w"`` (or a number of seconds) in ms."""
    if isinstance(value, bool) or value is None:
        raise DefinitionError(f"{where}: expected a duration such as '1h' or '7d', got {value!r}")
    if isinstance(value, int | float):
        ms = int(value * 1000)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise DefinitionError(
                f"{where}: {value!r} is not a duration; write a number and a unit "
                "(ms, s, m, h, d, w), e.g. '1h' or '7d'"
            )
        ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise DefinitionError(f"{where}: a duration must be positive, got {value!r}")
    return ms


def parse_path(text: Any, where: str) -> tuple[str, ...]:
    """A property path: ``revenue`` means ``properties.revenue``; a path starting with
    ``properties.``, ``context.`` or ``traits.`` starts at the event."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"{where}: expected a property name, got {text!r}")
    parts = tuple(text.strip().split("."))
    return parts if parts[0] in _ROOTS and len(parts) > 1 else ("properties", *parts)


def read_path(event: Event, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the event, or the module's missing marker."""
    node: Any = getattr(event, path[0])
    for part in path[1:]:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def is_missing(value: Any) -> bool:
    return value is _MISSING


def compare(actual: Any, op: str, expected: Any) -> bool:
    """``actual <op> expected``; a comparison between values of unlike types is false."""
    if op == "exists":
        return actual is not None and actual is not _MISSING
    if op == "not_exists":
        return actual is None or actual is _MISSING
    if actual is None or actual is _MISSING:
        return op in ("ne", "not_in")
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        return isinstance(actual, list) and expected in actual
    if isinstance(expected, int | float) and isinstance(actual, str):
        # SDKs often send numbers as strings ("19.99"); order them as numbers.
        try:
            actual = float(actual)
        except ValueError:
            return False
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        return bool(actual <= expected)
    except TypeError:
        return False


@dataclass(slots=True, frozen=True)
class PropertyFilter:
    path: tuple[str, ...]
    op: str
    value: Any

    def matches(self, event: Event) -> bool:
        return compare(read_path(event, self.path), self.op, self.value)


@dataclass(slots=True, frozen=True)
class EventMatch:
    """Which events count: track events by name (``names`` None: any name), or other types."""

    names: frozenset[str] | None
    types: frozenset[str]
    where: tuple[PropertyFilter, ...] = ()

    def matches(self, event: Event) -> bool:
        if event.type not in self.types:
            return False
        if self.names is not None and (event.event or event.name) not in self.names:
            return False
        return all(f.matches(event) for f in self.where)


def check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DefinitionError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def parse_operator(raw: Mapping[str, Any], default: str, where: str) -> str:
    """The ``op`` of a comparison, checked against the ``value`` it needs."""
    op = raw.get("op", default)
    if op not in OPERATORS:
        raise DefinitionError(f"{where}: unknown op {op!r}; use one of {sorted(OPERATORS)}")
    if op not in ("exists", "not_exists") and "value" not in raw:
        raise DefinitionError(f"{where}: op {op!r} needs a 'value' to compare with")
    if op in ("in", "not_in") and not isinstance(raw["value"], list):
        raise DefinitionError(f"{where}: op {op!r} needs a list as 'value'")
    return str(op)


def parse_filters(raw: Any, where: str) -> tuple[PropertyFilter, ...]:
    """``where`` as a mapping (``{category: shoes}`` means equals) or a list of
    ``{property, op, value}``."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        return tuple(PropertyFilter(parse_path(k, where), "eq", v) for k, v in raw.items())
    if not isinstance(raw, list):
        raise DefinitionError(f"{where}: expected a mapping or a list of filters")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise DefinitionError(f"{at}: expected {{property, op, value}}")
        check_keys(item, {"property", "op", "value"}, at)
        op = parse_operator(item, "eq", at)
        out.append(PropertyFilter(parse_path(item.get("property"), at), op, item.get("value")))
    return tuple(out)


def parse_event_match(raw: Any, where: str) -> EventMatch:
    """An event name, a list of names, or a mapping with ``event`` / ``type`` and ``where``.
    Without ``type``, named events are track events and ``"*"`` (or no ``event``) is any
    track, page or screen event."""
    if isinstance(raw, str | list):
        raw = {"event": raw}
    if not isinstance(raw, Mapping):
        raise DefinitionError(f"{where}: expected an event name or {{event, where}}")
    check_keys(raw, {"event", "type", "where"}, where)
    names_raw = raw.get("event")
    names: frozenset[str] | None
    if names_raw is None or names_raw == "*":
        names = None
    elif isinstance(names_raw, str):
        names = frozenset((names_raw,))
    elif isinstance(names_raw, list) and names_raw and all(isinstance(n, str) for n in names_raw):
        names = frozenset(names_raw)
    else:
        raise DefinitionError(f"{where}.event: expected a name or a list of names")
    types_raw = raw.get("type")
    if types_raw is None:
        types = (
            frozenset({"track"}) if names is not None else frozenset({"track", "page", "screen"})
        )
    else:
        listed = [types_raw] if isinstance(types_raw, str) else types_raw
        allowed = {"track", "page", "screen", "identify", "group", "alias"}
        if not isinstance(listed, list) or not set(listed) <= allowed:
            raise DefinitionError(f"{where}.type: use one or more of {sorted(allowed)}")
        types = frozenset(listed)
    return EventMatch(names, types, parse_filters(raw.get("where"), f"{where}.where"))
