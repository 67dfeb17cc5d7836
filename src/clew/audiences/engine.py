"""The audience engine: folds events into computed-trait and funnel state, and evaluates a
profile's computed traits and audience memberships at a point in (clock) time.

State lives in the profile's computed values under ``_aud``, keyed by definition and
fingerprint (a changed definition starts from a fresh, backfilled state), so it is stored,
merged and deleted with the profile by every serving store. Public values sit beside it:
each computed trait under its name, and the sorted list of audiences under ``audiences``.

Time: events count at their event time. Windows are relative to the clock: an event leaves
a window of length W at ``event time + W``, and a funnel of ``within`` W matures at ``first
step time + W``; :meth:`Engine.evaluate` returns the next such moment so the caller can set
a timer. Lateness: a late event is folded in at its own time whenever it arrives (no cut-off);
an event already outside its window changes nothing, and any membership it revises is
announced as a new change. State is order-independent, so replaying history in another order
(a backfill) gives the same values.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clew.audiences.definitions import (
    All,
    AnyOf,
    Catalog,
    Condition,
    FunnelDef,
    InFunnel,
    Member,
    Not,
    TraitDef,
    compare,
    is_missing,
    read_path,
)
from clew.events import Event
from clew.store.base import Traits

STATE = "_aud"
AUDIENCES = "audiences"
MAX_WINDOW_ENTRIES = 2000
"""Events kept per windowed trait and profile; beyond it the oldest are dropped first."""
MAX_DISTINCT = 1000
"""Distinct values kept by unique_list, unique_count and most_frequent."""
_FUNNEL_STARTS = 100

_EMPTY: tuple[Any, ...] = (None, 0, [])
_FUNNELS = "f"
_TRAITS = "t"
_NAMES = "n"


@dataclass(slots=True, frozen=True)
class Change:
    """One announced change: ``kind`` is ``audience_entered``, ``audience_exited`` or
    ``trait_changed`` (``name`` the audience or trait; ``value``/``previous`` for traits)."""

    kind: str
    name: str
    value: Any = None
    previous: Any = None


@dataclass(slots=True, frozen=True)
class Evaluation:
    computed: Traits
    changes: list[Change]
    next_due_ms: int | None


def _key(name: str, fingerprint: str) -> str:
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


def _entry_time(entry: list[Any]) -> int:
    return int(entry[0])


class _Trait:
    """One compiled trait: reads an event's value, folds it into state, merges states and
    derives the value."""

    __slots__ = ("defn", "key", "numeric", "windowed")

    def __init__(self, defn: TraitDef) -> None:
        self.defn = defn
        self.key = _key(defn.name, defn.fingerprint)
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
        if not self.windowed:
            return _value(self.defn.kind, state), state, None
        assert self.defn.window_ms is not None
        if not state:
            return _value(self.defn.kind, None), None, None
        horizon = now_ms - self.defn.window_ms
        cut = bisect.bisect_right(state, horizon, key=_entry_time)
        entries = state[cut:] if cut else state
        if not entries:
            return _value(self.defn.kind, None), None, None
        due = entries[0][0] + self.defn.window_ms
        return _window_value(self.defn.kind, entries), entries, due


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


class _Funnel:
    """``did A, then not B within W``: state ``{"a": [A times after the last B], "b": last
    B time}``; member once the earliest remaining A is W old."""

    __slots__ = ("defn", "key")

    def __init__(self, defn: FunnelDef, fingerprint: str) -> None:
        self.defn = defn
        self.key = _key(defn.key, fingerprint)

    def fold(self, state: Any, event: Event, time_ms: int) -> Any:
        starts = list((state or {}).get("a", []))
        last_b = (state or {}).get("b")
        changed = False
        if self.defn.then_not.matches(event) and (last_b is None or time_ms > last_b):
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


class Engine:
    """Evaluates one :class:`Catalog`. Pure: every method returns new dicts and never mutates
    its arguments (stores may retry an update)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._traits = [_Trait(t) for t in catalog.all_traits()]
        self._public = [t for t in self._traits if not t.defn.hidden]
        self._by_name = {t.defn.name: t for t in self._traits}
        self._funnels = [_Funnel(f, a.fingerprint) for a in catalog.audiences for f in a.funnels]
        self._trait_by_key = {t.key: t for t in self._traits}
        self._funnel_by_key = {f.key: f for f in self._funnels}
        self._keys = {t.key for t in self._traits} | {f.key for f in self._funnels}
        self._public_names = sorted(t.defn.name for t in self._public)
        self._tests = [(a.name, _compile(a.condition)) for a in catalog.audiences]
        # Event type -> name -> traits that may match (None: any name).
        self._index: dict[str, dict[str | None, list[_Trait]]] = {}
        for t in self._traits:
            for etype in t.defn.match.types:
                by_name = self._index.setdefault(etype, {})
                for name in t.defn.match.names or (None,):
                    by_name.setdefault(name, []).append(t)

        self._funnel_any: set[str] = set()
        self._funnel_named: set[tuple[str, str]] = set()
        for f in self._funnels:
            for match in (f.defn.first, f.defn.then_not):
                for etype in match.types:
                    if match.names is None:
                        self._funnel_any.add(etype)
                    else:
                        self._funnel_named.update((etype, n) for n in match.names)

    def relevant(self, event: Event) -> bool:
        """Whether any trait or funnel may match the event (a cheap test before observe)."""
        by_name = self._index.get(event.type)
        name = event.event or event.name
        if by_name and (None in by_name or name in by_name):
            return True
        return event.type in self._funnel_any or (event.type, name or "") in self._funnel_named

    @property
    def event_types(self) -> set[str]:
        """Every event type a trait or funnel may match."""
        return set(self._index) | self._funnel_any | {t for t, _ in self._funnel_named}

    @property
    def state_keys(self) -> set[str]:
        """The keys under which this engine keeps state (traits and funnels)."""
        return set(self._keys)

    @property
    def empty(self) -> bool:
        return not self._traits and not self._funnels and not self.catalog.audiences

    def observe(self, computed: Traits, event: Event, time_ms: int) -> Traits | None:
        """``computed`` with the event folded into every trait and funnel it matches, or
        None when it matches none."""
        by_name = self._index.get(event.type)
        candidates: list[_Trait] = []
        if by_name:
            candidates = by_name.get(None, []) + by_name.get(event.event or event.name, [])
        updates: dict[str, dict[str, Any]] = {}
        old = computed.get(STATE) or {}
        for trait in candidates:
            if not all(f.matches(event) for f in trait.defn.match.where):
                continue
            counts, value = trait.read(event)
            if not counts:
                continue
            bucket = updates.setdefault(_TRAITS, dict(old.get(_TRAITS, {})))
            bucket[trait.key] = trait.fold(bucket.get(trait.key), time_ms, value)
        for funnel in self._funnels:
            fstates = updates.get(_FUNNELS, old.get(_FUNNELS, {}))
            before = fstates.get(funnel.key)
            after = funnel.fold(before, event, time_ms)
            if after is not before:
                bucket = updates.setdefault(_FUNNELS, dict(old.get(_FUNNELS, {})))
                bucket[funnel.key] = after
        if not updates:
            return None
        return {**computed, STATE: {**old, **updates}}

    def merge(self, out: Traits, into: Traits, from_: Traits) -> Traits:
        """``out`` (the merged computed values) with the two profiles' engine states
        combined; public values stay the surviving profile's until the next evaluation."""
        a = into.get(STATE) or {}
        b = from_.get(STATE) or {}
        traits = dict(a.get(_TRAITS, {}))
        for key, state in (b.get(_TRAITS) or {}).items():
            trait = self._trait_by_key.get(key)
            traits[key] = trait.merge(traits.get(key), state) if trait else traits.get(key, state)
        funnels = dict(a.get(_FUNNELS, {}))
        for key, state in (b.get(_FUNNELS) or {}).items():
            funnel = self._funnel_by_key.get(key)
            funnels[key] = (
                funnel.merge(funnels.get(key), state) if funnel else funnels.get(key, state)
            )
        result = dict(out)
        result[STATE] = {**a, _TRAITS: traits, _FUNNELS: funnels}
        result[AUDIENCES] = into.get(AUDIENCES, [])
        for name in a.get(_NAMES, []):
            if name in into:
                result[name] = into[name]
        return result

    def evaluate(self, traits: Traits, computed: Traits, now_ms: int) -> Evaluation:
        """Computed values and memberships at ``now_ms``, the changes from what ``computed``
        held, and when the result next changes by time alone."""
        state = computed.get(STATE) or {}
        old_traits: dict[str, Any] = state.get(_TRAITS, {})
        old_funnels: dict[str, Any] = state.get(_FUNNELS, {})
        new_traits: dict[str, Any] = {}
        values: dict[str, Any] = {}
        due: list[int] = []
        for trait in self._traits:
            value, kept, when = trait.value(old_traits.get(trait.key), now_ms)
            values[trait.defn.name] = value
            if kept is not None:
                new_traits[trait.key] = kept
            if when is not None:
                due.append(when)
        funnel_members: dict[str, bool] = {}
        new_funnels: dict[str, Any] = {}
        for funnel in self._funnels:
            fstate = old_funnels.get(funnel.key)
            if fstate is not None:
                new_funnels[funnel.key] = fstate
            member, when = funnel.member(fstate, now_ms)
            funnel_members[funnel.defn.key] = member
            if when is not None:
                due.append(when)

        out = {k: v for k, v in computed.items() if k not in state.get(_NAMES, [])}
        changes: list[Change] = []
        for name in self._public_names:
            previous = computed.get(name)
            value = values[name]
            if (previous != value) if name in computed else (value not in _EMPTY):
                changes.append(Change("trait_changed", name, value, previous))
            out[name] = values[name]
        for name in state.get(_NAMES, []):
            if name not in self._by_name and name in computed:
                changes.append(Change("trait_changed", name, None, computed[name]))
        members: set[str] = set()
        for name, test in self._tests:
            if test(traits, values, computed, members, funnel_members):
                members.add(name)
        before = set(computed.get(AUDIENCES) or [])
        for name in sorted(members - before):
            changes.append(Change("audience_entered", name))
        for name in sorted(before - members):
            changes.append(Change("audience_exited", name))
        out[AUDIENCES] = sorted(members)
        out[STATE] = {_TRAITS: new_traits, _FUNNELS: new_funnels, _NAMES: self._public_names}
        return Evaluation(out, changes, min(due) if due else None)


_Test = Callable[[Traits, Mapping[str, Any], Traits, set[str], dict[str, bool]], bool]
"""A compiled condition: (traits, computed values of this evaluation, stored computed
values, audiences already found to hold, funnel memberships) -> holds."""


def _compile(cond: Condition) -> _Test:
    """The condition as a closure, so that evaluating it walks no tree and splits no names."""
    if isinstance(cond, All | AnyOf):
        tests = [_compile(c) for c in cond.items]
        if isinstance(cond, All):

            def every(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
                return all(test(t, v, c, m, f) for test in tests)

            return every

        def some(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
            return any(test(t, v, c, m, f) for test in tests)

        return some
    if isinstance(cond, Not):
        inner = _compile(cond.item)
        return lambda t, v, c, m, f: not inner(t, v, c, m, f)
    if isinstance(cond, Member):
        name = cond.audience
        return lambda t, v, c, m, f: name in m
    if isinstance(cond, InFunnel):
        key = cond.key
        return lambda t, v, c, m, f: bool(f.get(key, False))
    head, *rest = cond.name.split(".")
    op, expected, of_traits = cond.op, cond.value, cond.source == "trait"

    def test(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
        if of_traits:
            actual: Any = t.get(head)
        else:
            actual = v[head] if head in v else c.get(head)
        for part in rest:
            actual = actual.get(part) if isinstance(actual, dict) else None
        return compare(actual, op, expected)

    return test
