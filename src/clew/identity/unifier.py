"""The unifier: everything one event does to the person it belongs to. Identity resolution
(which profile, merging where the rules allow), traits, purchase totals and the profile's
recent-event history, all in the serving store.

The profiles stage runs it on every event (speed layer); ``clew identity split`` and
``clew rebuild`` run the same code over events read back from the lake (batch layer), so the
two layers cannot drift apart by construction of their rules, only by their input.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from clew.events import Event, format_time, parse_time
from clew.identity import consent
from clew.identity.identifiers import Extraction, extract
from clew.identity.resolver import IdentityResolver, MergeFunctions, Resolution
from clew.identity.rules import IdentityRules
from clew.identity.traits import (
    CONTESTED,
    MAX_CONTESTED_LINKS,
    TOO_MANY_LINKS,
    TRAIT_TIMES,
    TraitMerger,
    TraitPolicy,
    is_order,
    revenue,
)
from clew.store.base import Profile, ProfileStore, StoredEvent, Traits


class ComputedEngine(Protocol):
    """What the unifier needs of the audience engine (:class:`clew.audiences.engine.Engine`)
    to keep computed-trait and audience state with each profile; a protocol, so identity does
    not import audiences."""

    def relevant(self, event: Event) -> bool: ...

    def observe(self, computed: Traits, event: Event, time_ms: int) -> Traits | None: ...

    def merge(self, out: Traits, into: Traits, from_: Traits) -> Traits: ...


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What one event did: its profile (``None`` if it had no usable identifier) and the
    resolution (attached, merged, dropped)."""

    profile_id: str | None
    resolution: Resolution


class Unifier:
    """Applies events to profiles in ``store``. Not idempotent on its own (an order counted
    twice is counted twice): callers apply each event once, which the profiles stage ensures
    by committing the store and its offsets in one transaction."""

    def __init__(
        self,
        store: ProfileStore,
        rules: IdentityRules | None = None,
        traits: TraitPolicy | None = None,
        *,
        keep_history: bool = True,
        engine: ComputedEngine | None = None,
    ) -> None:
        self.store = store
        self.rules = rules if rules is not None else IdentityRules()
        self._table = self.rules.table()
        self.merger = TraitMerger(traits)
        self.resolver = IdentityResolver(store, self.rules, merge=self._merge_functions)
        self._keep_history = keep_history
        self.engine = engine

    def refresh_separations(self) -> None:
        """Reload the operator's separations (``clew identity split``) from the store."""
        self.resolver.set_separations(self.store.separations())

    def apply(
        self,
        event: Event,
        body: bytes = b"",
        extraction: Extraction | None = None,
        *,
        time_ms: int | None = None,
    ) -> Outcome:
        """Resolve the event and apply its traits, order and history to its profile.
        ``extraction``: ``extract(event, self.rules)`` if the caller already has it;
        ``time_ms``: the event's time in epoch milliseconds, if the caller parsed it."""
        if time_ms is None:
            time_ms = _time_ms(event)
        resolution = self.resolver.resolve(event, extraction, time_ms=time_ms)
        pid = resolution.profile_id
        store = self.store
        if resolution.refused:
            self._mark_contested(event, pid, resolution)
        if pid is None:
            return Outcome(None, resolution)
        if event.type == "identify" and event.traits:
            incoming = event.traits
            winners: list[str] = []

            def times(computed: Traits) -> Traits:
                updated, won = self.merger.times(computed, incoming, time_ms)
                winners[:] = won
                return updated

            # Times first: they decide which incoming values win (a late event never
            # overwrites a newer value).
            store.update_computed(pid, times)
            store.update_traits(pid, lambda traits: self.merger.values(traits, incoming, winners))
        if is_order(event.type, event.event):
            amount = revenue(event.properties)
            when = format_time(parse_time(event.timestamp))
            store.update_computed(pid, lambda c: self.merger.add_order(c, amount, when))
        prefs = consent.preferences(event)
        if prefs is not None:
            store.update_computed(
                pid, lambda c: consent.record(c, prefs, time_ms, event.message_id)
            )
        engine = self.engine
        if engine is not None and engine.relevant(event):
            store.update_computed(pid, lambda c: engine.observe(c, event, time_ms) or c)
        if self._keep_history and body:
            store.add_event(pid, StoredEvent(0, event.message_id, time_ms, body))
        return Outcome(pid, resolution)

    def _mark_contested(self, event: Event, pid: str | None, resolution: Resolution) -> None:
        """Record, on the profile the event went to and on every profile owning an
        identifier a rule refused it, the event's identifiers: which of those profiles gets
        a contested identifier can depend on the order events arrive in, and these links let
        a repair find every profile involved (see :mod:`clew.identity.repair`)."""
        store = self.store
        owners = {store.lookup(d.id_type, d.value) for d in resolution.refused}
        links = {f"{d.id_type}:{d.value}" for d in resolution.refused}
        links.update(str(i) for i in extract(event, self.rules, table=self._table).identifiers)

        def contest(computed: Traits) -> Traits:
            held = computed.get(CONTESTED, [])
            merged = sorted({*held, *links})
            if len(merged) > MAX_CONTESTED_LINKS:
                # Too many to follow: a repair gives up on this profile (see repair.py).
                merged = [*merged[: MAX_CONTESTED_LINKS - 1], TOO_MANY_LINKS]
            return computed if merged == held else {**computed, CONTESTED: merged}

        for owner in {pid, *owners} - {None}:
            assert owner is not None
            store.update_computed(owner, contest)

    def profile_of(self, event: Event) -> str | None:
        """The profile the event's identifiers resolve to now, without changing anything."""
        for ident in extract(event, self.rules, table=self._table).identifiers:
            owner = self.store.lookup(ident.id_type, ident.value)
            if owner is not None:
                return owner
        return None

    def _merge_functions(self, into: Profile, from_: Profile) -> MergeFunctions:
        into_times = into.computed.get(TRAIT_TIMES, {})
        from_times = from_.computed.get(TRAIT_TIMES, {})

        def traits(a: Traits, b: Traits) -> Traits:
            return self.merger.merge_traits(a, b, into_times, from_times)

        engine = self.engine

        def computed(a: Traits, b: Traits) -> Traits:
            out = consent.merge(self.merger.merge_computed(a, b), a, b)
            return out if engine is None else engine.merge(out, a, b)

        return MergeFunctions(traits, computed)


def _time_ms(event: Event) -> int:
    return int(parse_time(event.timestamp).timestamp() * 1000)
