"""The state behind computed traits and funnels: how one event folds into it, how two
profiles' states merge, and what value a state has at a point in time. Every function is
pure and independent of the order events arrive in (see :mod:`clew.audiences.engine`)."""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Any

from clew.audiences.definitions import FunnelDef, TraitDef, is_missing, read_path
from clew.events import Event

MAX_WINDOW_ENTRIES = 2000
"""Events kept per windowed trait and profile; beyond it the oldest are dropped first."""
MAX_DISTINCT = 1000
"""Distinct values kept by unique_list, unique_count and most_frequent."""
_FUNNEL_STARTS = 100


def state_key(name: str, fingerprint: str) -> str:
    return f"{name}@{fingerprint}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _scalar(value: Any) -> Any:
    """A value a trait can hold, or None (objects and lists are not values)."""
    return value if isinstance(value, str | int | float | bool) else None


def _sort_key(value: Any) -> tuple[str, Any]:
    """A total order over trait values (scalars): by type name, then value."""
    return (type(value).__name__, value)


# A window entry's time (entries are ``[time_ms, value]``).
_entry_time = itemgetter(0)


class TraitState:
    """One compiled trait: reads an event's value, folds it into state, merges states and
    derives the value."""

    __slots__ = ("defn", "key", "kind", "numeric", "window_ms", "windowed")

    def __init__(self, defn: TraitDef) -> None:
        self.defn = defn
        self.key = state_key(defn.name, defn.fingerprint)
        self.kind = defn.kind
        self.window_ms = defn.window_ms
        self.windowed = defn.window_ms is not None
        self.numeric = defn.kind in ("sum", "avg", "min", "max")

    def read(self, event: Event) -> tuple[bool, Any]:
        """(counts, value): whether the event contributes, and what."""
        if self.defn.kind == "count":
            return True, None
        assert self.defn.property is not None
        raw = read_path(event, self.defn.property)
        if is_missing(raw):
            return False, None
        value = _number(raw) if self.numeric else _scalar(raw)
        return value is not None, value

    def fold(self, state: Any, time_ms: int, value: Any) -> Any:
        if self.windowed:
            # Only the time orders entries: every value derived from them is independent of
            # the order of entries with equal times.
            entries = list(state or [])
            bisect.insort(entries, [time_ms, value], key=_entry_time)
            if len(entries) > MAX_WINDOW_ENTRIES:
                del entries[: len(entries) - MAX_WINDOW_ENTRIES]
            return entries
        return _fold(self.defn.kind, state, time_ms, value)

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        if self.windowed:
            entries = sorted([*a, *b], key=_entry_time)
            return entries[-MAX_WINDOW_ENTRIES:]
        return _merge(self.defn.kind, a, b)

    def value(self, state: Any, now_ms: int) -> tuple[Any, Any, int | None]:
        """(value, pruned state, when the value next changes by time alone)."""
        window_ms = self.window_ms
        if window_ms is None:
            return _value(self.kind, state), state, None
        if not state:
            return _value(self.kind, None), None, None
        horizon = now_ms - window_ms
        if state[0][0] > horizon:
            # Nothing has left the window: most evaluations.
            entries = state
        else:
            entries = state[bisect.bisect_right(state, horizon, key=_entry_time) :]
            if not entries:
                return _value(self.kind, None), None, None
        return _window_value(self.kind, entries), entries, entries[0][0] + window_ms


def _window_value(kind: str, entries: list[Any]) -> Any:
    """The value of a (non-empty, time-ordered) window's entries."""
    if kind == "count":
        return len(entries)
    if kind in ("sum", "avg", "min", "max"):
        values = [e[1] for e in entries]
        if kind == "sum":
            return float(sum(values))
        if kind == "avg":
            return sum(values) / len(values)
        return min(values) if kind == "min" else max(values)
    agg: Any = None
    for t, v in entries:
        agg = _fold(kind, agg, t, v)
    return _value(kind, agg)


def _fold(kind: str, state: Any, t: int, v: Any) -> Any:
    if kind == "count":
        return (state or 0) + 1
    if kind == "sum":
        return (state or 0.0) + v
    if kind == "avg":
        s, n = state or (0.0, 0)
        return [s + v, n + 1]
    if kind == "min":
        return v if state is None or v < state else state
    if kind == "max":
        return v if state is None or v > state else state
    if kind == "first":
        return (
            [t, v]
            if state is None or (t, _sort_key(v)) < (state[0], _sort_key(state[1]))
            else state
        )
    if kind == "last":
        return (
            [t, v]
            if state is None or (t, _sort_key(v)) > (state[0], _sort_key(state[1]))
            else state
        )
    if kind in ("unique_list", "unique_count"):
        if state and v in state:
            return state
        values = list(state or [])
        bisect.insort(values, v, key=_sort_key)
        if len(values) > MAX_DISTINCT:
            values.pop()  # the largest: what is kept does not depend on arrival order
        return values
    # most_frequent: [[value, count], ...] sorted by value
    pairs = [list(p) for p in state or []]
    for p in pairs:
        if p[0] == v and type(p[0]) is type(v):
            p[1] += 1
            return pairs
    pairs.append([v, 1])
    pairs.sort(key=lambda p: _sort_key(p[0]))
    return pairs[:MAX_DISTINCT]


def _merge(kind: str, a: Any, b: Any) -> Any:
    if kind in ("count", "sum"):
        return a + b
    if kind == "avg":
        return [a[0] + b[0], a[1] + b[1]]
    if kind == "min":
        return min(a, b)
    if kind == "max":
        return max(a, b)
    if kind in ("first", "last"):
        return _fold(kind, a, b[0], b[1])
    if kind in ("unique_list", "unique_count"):
        merged = list(a)
        for v in b:
            merged = _fold(kind, merged, 0, v)
        return merged
    out = [list(p) for p in a]
    for value, count in b:
        for p in out:
            if p[0] == value and type(p[0]) is type(value):
                p[1] += count
                break
        else:
            out.append([value, count])
    out.sort(key=lambda p: _sort_key(p[0]))
    return out[:MAX_DISTINCT]


def _value(kind: str, state: Any) -> Any:
    if kind == "count":
        return state or 0
    if kind == "sum":
        return state or 0.0
    if state is None:
        return {"unique_list": [], "unique_count": 0}.get(kind)
    if kind == "avg":
        return state[0] / state[1] if state[1] else None
    if kind in ("min", "max"):
        return state
    if kind in ("first", "last"):
        return state[1]
    if kind == "unique_list":
        return list(state)
    if kind == "unique_count":
        return len(state)
    best = max(state, key=lambda p: p[1]) if state else None
    return None if best is None else best[0]


class FunnelState:
    """``did A, then not B within W``: state ``{"a": [A times after the last B], "b": last
    B time}``; member once the earliest remaining A is W old."""

    __slots__ = ("defn", "key")

    def __init__(self, defn: FunnelDef, fingerprint: str) -> None:
        self.defn = defn
        self.key = state_key(defn.key, fingerprint)

    def fold(self, state: Any, event: Event, time_ms: int) -> Any:
        is_b = self.defn.then_not.matches(event)
        if not is_b and not self.defn.first.matches(event):
            return state  # most events are neither step: nothing to copy
        starts = list((state or {}).get("a", []))
        last_b = (state or {}).get("b")
        changed = False
        if is_b and (last_b is None or time_ms > last_b):
            last_b = time_ms
            starts = [t for t in starts if t > last_b]
            changed = True
        after_b = last_b is None or time_ms > last_b
        if after_b and time_ms not in starts and self.defn.first.matches(event):
            starts = sorted([*starts, time_ms])[:_FUNNEL_STARTS]
            changed = True
        return {"a": starts, "b": last_b} if changed else state

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return a if b is None else b
        bs = [x for x in (a.get("b"), b.get("b")) if x is not None]
        last_b = max(bs) if bs else None
        starts = sorted({t for t in [*a["a"], *b["a"]] if last_b is None or t > last_b})
        return {"a": starts[:_FUNNEL_STARTS], "b": last_b}

    def member(self, state: Any, now_ms: int) -> tuple[bool, int | None]:
        starts = (state or {}).get("a") or []
        if not starts:
            return False, None
        matures = starts[0] + self.defn.within_ms
        return (True, None) if now_ms >= matures else (False, matures)
