"""Repair of contested profiles: the speed layer re-derives, in event-time order, the profiles
whose identity depended on the order their events arrived in, so that it agrees with the
batch rebuild (which applies every event in event-time order).

Without a refusal, identity resolution does not depend on order: every profile is the union
of the identifiers its events carry together, and its id derives from that union. A rule
that refuses an identifier (a shared device claimed by two user ids, a sixth email in a week)
decides by what the profiles hold when the event is applied, so a late event can decide
differently from the event-time order. The unifier marks every profile such a refusal
involves (:data:`~clew.identity.traits.CONTESTED`, with the identifiers of the refusing
event as links). When an event reaches a contested profile out of event-time order (it is
older than the newest event a profile it touches has seen), the profiles stage calls
:func:`repair`: the *component* (the contested profiles, every profile owning an identifier
their events or links name, transitively) is replayed from the profiles' recent-event
histories, in event-time order (ties: ``receivedAt``, then ``messageId``), through the same
unifier on an empty in-memory store, and written back in place of the old profiles.

A history holds every event of its profile only while it is shorter than the store's
``history`` cap (older events are dropped beyond it), so a component with a profile at the
cap, or with more than :data:`MAX_PROFILES` profiles, is not repaired: it keeps its
arrival-order answer, and ``clew rebuild --check`` reports the difference.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import msgspec
from msgspec.structs import replace

from clew.events import Event, parse_time
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID, extract
from clew.identity.resolver import canonical_key
from clew.identity.rules import IdentityRules
from clew.identity.traits import CONTESTED, TOO_MANY_LINKS, TraitPolicy
from clew.identity.unifier import ComputedEngine, Unifier
from clew.store.base import Profile, ProfileStore, Provenance, Redirect, StoredEvent
from clew.store.memory import MemoryProfileStore

MAX_PROFILES = 50
"""The largest component a repair re-derives."""

REPAIR_SOURCE = "clew:repair"
"""The ``source_id`` of the redirects a repair writes for ids that are no profile any more."""

_decoder = msgspec.json.Decoder(Event)


class Unrepairable(Exception):
    """The component cannot be re-derived from the histories; the message says why."""


@dataclass(slots=True, frozen=True)
class Repair:
    """What a repair did: the profiles it replaced (as they were), the re-derived profiles as
    written, and the old ids that are no profile any more, each with the profile it now
    leads to."""

    replaced: tuple[Profile, ...]
    written: tuple[Profile, ...]
    retired: dict[str, str]


def is_contested(profile: Profile | None) -> bool:
    return profile is not None and bool(profile.computed.get(CONTESTED))


def repair(
    store: ProfileStore,
    seeds: Iterable[str],
    rules: IdentityRules,
    traits: TraitPolicy,
    engine: ComputedEngine | None,
    now_ms: int,
) -> Repair:
    """Re-derive the component of the profiles ``seeds`` resolve to, in event-time order,
    and write it to ``store`` (call inside a store transaction). Raises
    :class:`Unrepairable` (changing nothing) when a history may be incomplete or the
    component is too large."""
    old, events = _component(store, seeds, rules)
    derived = _replay(store, events, rules, traits, engine)
    return _write(store, rules, old, derived, now_ms)


def _identifiers(event: Event, rules: IdentityRules) -> set[tuple[str, str]]:
    found = extract(event, rules)
    out = {(i.id_type, i.value) for i in found.identifiers}
    if found.link is not None:
        out.add((found.link.id_type, found.link.value))
    if event.type == "alias" and event.previous_id:
        # Its type depends on what the store knows when it is applied: both.
        value = event.previous_id.strip()
        out.update(((USER_ID, value), (ANONYMOUS_ID, value)))
    return out


def _component(
    store: ProfileStore, seeds: Iterable[str], rules: IdentityRules
) -> tuple[list[Profile], list[tuple[Event, bytes]]]:
    cap = store.history
    profiles: dict[str, Profile] = {}
    events: dict[str, tuple[Event, bytes]] = {}
    todo = list(seeds)
    while todo:
        pid = store.resolve(todo.pop())
        if pid is None or pid in profiles:
            continue
        profile = store.get(pid)
        if profile is None:
            continue
        history = store.events(pid, cap) if cap else []
        if not cap or len(history) >= cap:
            raise Unrepairable(
                f"profile {pid} has {len(history)} events in its history, the cap "
                f"({cap}): older ones may be missing"
            )
        links = profile.computed.get(CONTESTED, [])
        if TOO_MANY_LINKS in links:
            raise Unrepairable(f"profile {pid} is contested with too many identifiers")
        profiles[pid] = profile
        if len(profiles) > MAX_PROFILES:
            raise Unrepairable(f"the component has more than {MAX_PROFILES} profiles")
        keys: set[tuple[str, str]] = set()
        for stored in history:
            event = _decoder.decode(stored.body)
            events.setdefault(event.message_id + "\x00" + event.source_id, (event, stored.body))
            keys |= _identifiers(event, rules)
        for link in links:
            id_type, _, value = str(link).partition(":")
            keys.add((id_type, value))
        for id_type, value in keys:
            owner = store.lookup(id_type, value)
            if owner is not None and owner not in profiles:
                todo.append(owner)
    ordered = sorted(events.values(), key=lambda item: _order(item[0]))
    return list(profiles.values()), ordered


def _order(event: Event) -> tuple[float, float, str]:
    # The rebuild's order: event time, then receivedAt, then messageId.
    when = parse_time(event.timestamp).timestamp()
    received = parse_time(event.received_at).timestamp() if event.received_at else when
    return when, received, event.message_id


def _replay(
    store: ProfileStore,
    events: Collection[tuple[Event, bytes]],
    rules: IdentityRules,
    traits: TraitPolicy,
    engine: ComputedEngine | None,
) -> list[tuple[Profile, list[StoredEvent]]]:
    memory = MemoryProfileStore(history=store.history)
    unifier = Unifier(memory, rules, traits, keep_history=True, engine=engine)
    unifier.resolver.set_separations(store.separations())
    for event, body in events:
        unifier.apply(event, body)
    return [
        (p, memory.events(p.profile_id, memory.history)[::-1]) for p in memory.scan(None, 1 << 62)
    ]


def _write(
    store: ProfileStore,
    rules: IdentityRules,
    old: list[Profile],
    derived: list[tuple[Profile, list[StoredEvent]]],
    now_ms: int,
) -> Repair:
    live = {p.profile_id for p, _ in derived}
    holder = {(e.id_type, e.value): p.profile_id for p, _ in derived for e in p.identities}
    table = rules.table()
    retired: dict[str, str] = {}
    for profile in old:
        # An old id that is no profile now leads to the profile holding the most trusted
        # identifier it held.
        held = sorted(
            ((e.id_type, e.value) for e in profile.identities if (e.id_type, e.value) in holder),
            key=lambda k: canonical_key(table, *k),
        )
        if not held:
            continue
        target = holder[held[0]]
        for pid in (profile.profile_id, *(r.from_id for r in profile.merged)):
            if pid not in live:
                retired[pid] = target
    for profile in old:
        store.delete_profile(profile.profile_id)
    provenance = Provenance(f"repair/{now_ms}", REPAIR_SOURCE, now_ms)
    written: list[Profile] = []
    for profile, history in derived:
        own = {r.from_id for r in profile.merged}
        extra = tuple(
            Redirect(pid, profile.profile_id, provenance)
            for pid, target in sorted(retired.items())
            if target == profile.profile_id and pid not in own
        )
        kept = tuple(r for r in profile.merged if r.from_id not in live)
        profile = replace(profile, merged=kept + extra)
        store.put_profile(profile, history)
        written.append(profile)
    return Repair(tuple(old), tuple(written), retired)
