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

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from clew.audiences._conditions import compile_condition
from clew.audiences._match import EventMatch
from clew.audiences._state import MAX_DISTINCT, MAX_WINDOW_ENTRIES, FunnelState, TraitState
from clew.audiences.definitions import AudienceCatalog
from clew.events import Event
from clew.store.base import Traits

__all__ = ["AUDIENCES", "MAX_DISTINCT", "MAX_WINDOW_ENTRIES", "STATE", "ComputedChange", "Engine"]

STATE = "_aud"
AUDIENCES = "audiences"

_EMPTY: tuple[Any, ...] = (None, 0, [])
_FUNNELS = "f"
_TRAITS = "t"
_NAMES = "n"
_T = TypeVar("_T")


class ComputedChange(msgspec.Struct, frozen=True):
    """One announced change: ``kind`` is ``audience_entered``, ``audience_exited`` or
    ``trait_changed`` (``name`` the audience or trait; ``value``/``previous`` for traits)."""

    kind: str
    name: str
    value: Any = None
    previous: Any = None


class Evaluation(msgspec.Struct, frozen=True):
    computed: Traits
    changes: list[ComputedChange]
    next_due_ms: int | None


class _Steps(Generic[_T]):
    """Which of ``items`` an event of a type and name may match, looked up instead of tested
    (each item matches through the :class:`EventMatch` es ``steps`` gives). Kept only for the
    names the definitions list, so event names from clients never grow it; every list is in
    the order of ``items``."""

    def __init__(self, items: Sequence[_T], steps: Callable[[_T], Iterable[EventMatch]]) -> None:
        any_name: dict[str, list[_T]] = {}
        named: dict[str, dict[str, list[_T]]] = {}
        for item in items:
            for match in steps(item):
                for etype in match.types:
                    if match.names is None:
                        any_name.setdefault(etype, []).append(item)
                    else:
                        for name in match.names:
                            named.setdefault(etype, {}).setdefault(name, []).append(item)
        order = {id(item): i for i, item in enumerate(items)}

        def ordered(found: Iterable[_T]) -> tuple[_T, ...]:
            return tuple(sorted({id(i): i for i in found}.values(), key=lambda i: order[id(i)]))

        self._any = {etype: ordered(found) for etype, found in any_name.items()}
        self._named = {
            etype: {n: ordered([*any_name.get(etype, ()), *found]) for n, found in names.items()}
            for etype, names in named.items()
        }

    @property
    def types(self) -> set[str]:
        """Every event type some item may match."""
        return set(self._any) | set(self._named)

    def of(self, etype: str, name: str | None) -> tuple[_T, ...]:
        if name is not None:
            found = self._named.get(etype, {}).get(name)
            if found is not None:
                return found
        return self._any.get(etype, ())


class Engine:
    """Evaluates one :class:`AudienceCatalog`. Pure: every method returns new dicts and never
    mutates its arguments (stores may retry an update)."""

    def __init__(self, catalog: AudienceCatalog) -> None:
        self.catalog = catalog
        self._traits = [TraitState(t) for t in catalog.all_traits()]
        self._public = [t for t in self._traits if not t.defn.hidden]
        self._by_name = {t.defn.name: t for t in self._traits}
        self._funnels = [
            FunnelState(f, a.fingerprint) for a in catalog.audiences for f in a.funnels
        ]
        self._trait_by_key = {t.key: t for t in self._traits}
        self._trait_rows = [(t, t.key, t.defn.name) for t in self._traits]
        self._funnel_by_key = {f.key: f for f in self._funnels}
        self._keys = {t.key for t in self._traits} | {f.key for f in self._funnels}
        self._public_names = sorted(t.defn.name for t in self._public)
        self._tests = [(a.name, compile_condition(a.condition)) for a in catalog.audiences]
        self._trait_steps = _Steps(self._traits, lambda t: (t.defn.match,))
        self._funnel_steps = _Steps(self._funnels, lambda f: (f.defn.first, f.defn.then_not))

    def relevant(self, event: Event) -> bool:
        """Whether any trait or funnel may match the event (a cheap test before observe)."""
        name = event.event or event.name
        return bool(
            self._trait_steps.of(event.type, name) or self._funnel_steps.of(event.type, name)
        )

    @property
    def event_types(self) -> set[str]:
        """Every event type a trait or funnel may match."""
        return self._trait_steps.types | self._funnel_steps.types

    @property
    def state_keys(self) -> set[str]:
        """The keys under which this engine keeps state (traits and funnels)."""
        return set(self._keys)

    @property
    def trait_names(self) -> list[str]:
        """The public computed traits (not hidden), sorted: each is kept in a profile's
        computed values under its name."""
        return list(self._public_names)

    @property
    def empty(self) -> bool:
        return not self._traits and not self._funnels and not self.catalog.audiences

    def observe(self, computed: Traits, event: Event, time_ms: int) -> Traits | None:
        """``computed`` with the event folded into every trait and funnel it matches, or
        None when it matches none."""
        name = event.event or event.name
        old = computed.get(STATE) or {}
        traits: dict[str, Any] | None = None
        for trait in self._trait_steps.of(event.type, name):
            where = trait.defn.match.where
            if where and not all(f.matches(event) for f in where):
                continue
            counts, value = trait.read(event)
            if not counts:
                continue
            if traits is None:
                traits = dict(old.get(_TRAITS, {}))
            traits[trait.key] = trait.fold(traits.get(trait.key), time_ms, value)
        funnels: dict[str, Any] | None = None
        for funnel in self._funnel_steps.of(event.type, name):
            before = (funnels if funnels is not None else old.get(_FUNNELS, {})).get(funnel.key)
            after = funnel.fold(before, event, time_ms)
            if after is not before:
                if funnels is None:
                    funnels = dict(old.get(_FUNNELS, {}))
                funnels[funnel.key] = after
        if traits is None and funnels is None:
            return None
        state = dict(old)
        if traits is not None:
            state[_TRAITS] = traits
        if funnels is not None:
            state[_FUNNELS] = funnels
        return {**computed, STATE: state}

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
        held = old_traits.get
        for trait, key, name in self._trait_rows:
            value, kept, when = trait.value(held(key), now_ms)
            values[name] = value
            if kept is not None:
                new_traits[key] = kept
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

        stale = set(state.get(_NAMES, ()))
        out = {k: v for k, v in computed.items() if k not in stale}
        changes: list[ComputedChange] = []
        for name in self._public_names:
            previous = computed.get(name)
            value = values[name]
            if (previous != value) if name in computed else (value not in _EMPTY):
                changes.append(ComputedChange("trait_changed", name, value, previous))
            out[name] = values[name]
        for name in state.get(_NAMES, []):
            if name not in self._by_name and name in computed:
                changes.append(ComputedChange("trait_changed", name, None, computed[name]))
        members: set[str] = set()
        for name, test in self._tests:
            if test(traits, values, computed, members, funnel_members):
                members.add(name)
        before = set(computed.get(AUDIENCES) or [])
        for name in sorted(members - before):
            changes.append(ComputedChange("audience_entered", name))
        for name in sorted(before - members):
            changes.append(ComputedChange("audience_exited", name))
        out[AUDIENCES] = sorted(members)
        out[STATE] = {_TRAITS: new_traits, _FUNNELS: new_funnels, _NAMES: self._public_names}
        return Evaluation(out, changes, min(due) if due else None)

    def inherited(self, evaluation: Evaluation) -> Evaluation:
        """``evaluation`` of a profile that took over other profile ids (a merge, or a
        rename to a more trusted identifier's id), with every membership and non-empty
        computed trait it holds announced under its id, unless already changing: the
        changes of those values were announced under the ids it took over, and whoever reads
        changes by profile id (the ``audience_members`` and ``computed_traits`` views,
        destinations) must see them under the surviving one."""
        computed = evaluation.computed
        changes = list(evaluation.changes)
        announced = {(c.kind, c.name) for c in changes}
        for name in self._public_names:
            value = computed.get(name)
            if value not in _EMPTY and ("trait_changed", name) not in announced:
                changes.append(ComputedChange("trait_changed", name, value, None))
        for name in computed.get(AUDIENCES) or []:
            if ("audience_entered", name) not in announced:
                changes.append(ComputedChange("audience_entered", name))
        return Evaluation(computed, changes, evaluation.next_due_ms)
