"""Deterministic identity resolution: which profile an event belongs to, creating, extending
or merging profiles in the serving store under the identity rules.

The algorithm, per event:

1. Extract the event's identifiers (blocked and unparseable values are dropped).
2. Take them most trusted first (rule priority, then the order found) and accept each one
   unless accepting it would break a rule for the profile the accepted set would form: a
   per-type limit (counted within its window of event time), the identifier cap, or the
   merge cap. An identifier owned by another profile brings that whole profile along, so a
   conflicting one is dropped rather than merged; since the most trusted identifiers are
   accepted first, the identifier dropped is always the least trusted one in the conflict.
3. The accepted profiles merge into one and the unknown identifiers are attached to it.
   Every attach and merge records the event's provenance.

A profile's id is a function of its identifiers alone: :func:`profile_id_for` of its
**canonical identifier**, the smallest under :func:`canonical_key` (rule priority, then id
type, then value). So the id never depends on arrival order, batch boundaries or which worker
resolved the event, and the speed layer and the batch rebuild give a person the same id. A
merge keeps the id of the profile holding the smaller canonical identifier (it is the
canonical identifier of the union); a profile that gains an identifier smaller than its
canonical one takes that identifier's id (a rename: the old id redirects to the new one, like
a merged-away id, and keeps resolving).

Limits use event time, never the wall clock, so a replay or a batch rebuild over the same
events gives the same profiles. Rules are checked against a snapshot of the store; the log
keys a person's events to one partition, so one worker resolves them in order. If another
writer claims an identifier between the check and the write, resolution starts over.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Literal

import msgspec

from clew.events import Event, format_time, parse_time
from clew.identity.identifiers import (
    ANONYMOUS_ID,
    USER_ID,
    Dropped,
    Extraction,
    Identifier,
    extract,
)
from clew.identity.rules import IdentityRules, RuleTable
from clew.store.base import (
    Profile,
    ProfileStore,
    Provenance,
    Separation,
    Traits,
    TraitsMerge,
    UnknownProfileError,
    keep_existing,
)

_PROFILE_NAMESPACE = uuid.UUID("0c6e4b1e-54f4-4bd6-9f0e-2b8f2d1f7a3d")
_ATTEMPTS = 5
_NO_PRIORITY = 1 << 30
_first = itemgetter(0)


def profile_id_for(identifier: Identifier) -> str:
    """The id of the profile whose canonical identifier is ``identifier``.

    >>> profile_id_for(Identifier("user_id", "u-1"))
    '6a3f6842-7bb3-518e-a48d-951318d81347'
    """
    return _profile_id(identifier.id_type, identifier.value)


@functools.lru_cache(maxsize=1 << 16)
def _profile_id(id_type: str, value: str) -> str:
    # Cached: the same canonical identifiers come back with every event of their people.
    return str(uuid.uuid5(_PROFILE_NAMESPACE, f"{id_type}:{value}"))


def canonical_key(table: RuleTable, id_type: str, value: str) -> tuple[int, str, str]:
    """The total order on identifiers that picks a profile's canonical one (the smallest):
    most trusted type first (rule priority), then id type, then value."""
    return table.priority(id_type), id_type, value


class ResolutionConflictError(RuntimeError):
    """Other writers kept changing the identities of this event's profiles; retry the event
    (the log redelivers it if the stage does not commit its offset)."""


class Resolution(msgspec.Struct, frozen=True, gc=False):
    """What resolving one event did. ``profile_id`` is ``None`` only when the event had no
    usable identifier (all dropped)."""

    profile_id: str | None
    attached: tuple[Identifier, ...] = ()
    merged_from: tuple[str, ...] = ()
    dropped: tuple[Dropped, ...] = ()
    # The part of ``dropped`` a rule refused (a limit, a cap, a separation), as opposed to
    # values extraction never took (placeholders, unparseable): a decision that can depend
    # on the order events are applied in.
    refused: tuple[Dropped, ...] = ()


@dataclass(slots=True, frozen=True)
class Explanation:
    """One reason a profile looks the way it does: an identifier attached by an event, or a
    profile merged in by an event."""

    kind: Literal["identity", "merge"]
    provenance: Provenance
    text: str
    identifier: Identifier | None = None
    merged_profile: str | None = None


@dataclass(slots=True, frozen=True)
class MergeFunctions:
    """How two profiles' traits and computed values combine (see ``ProfileStore.merge``)."""

    traits: TraitsMerge = keep_existing
    computed: TraitsMerge = keep_existing


MergePolicy = Callable[[Profile, Profile], MergeFunctions]
"""Given the surviving and the merged-away profile, the functions that combine them."""


@dataclass(slots=True)
class _Plan:
    """The profiles and new identifiers accepted so far, with running tallies of what the
    rules count over them (kept as each is accepted, rather than recounted per candidate;
    the window is the event's, the same for the whole plan)."""

    profiles: dict[str, Profile]
    new: list[Identifier]
    dropped: list[Dropped]
    # Identifiers per limited type, within its window (as ``IdentityResolver._counts``).
    counts: dict[str, int] = field(default_factory=dict)
    identifiers: int = 0
    merges: int = 0


class IdentityResolver:
    """Resolves events to profiles in ``store`` under ``rules`` (defaults if omitted)."""

    def __init__(
        self,
        store: ProfileStore,
        rules: IdentityRules | None = None,
        merge: MergePolicy | None = None,
    ) -> None:
        self._store = store
        self._rules = rules if rules is not None else IdentityRules()
        self._table = self._rules.table()
        self._merge = merge
        self._apart: dict[Identifier, set[Identifier]] = {}

    def set_separations(self, separations: Sequence[Separation]) -> None:
        """Identifier pairs that must never share a profile (an operator split them): an
        event that would join them loses its least trusted conflicting identifier."""
        apart: dict[Identifier, set[Identifier]] = {}
        for sep in separations:
            a, b = Identifier(*sep.a), Identifier(*sep.b)
            apart.setdefault(a, set()).add(b)
            apart.setdefault(b, set()).add(a)
        self._apart = apart

    def resolve(
        self, event: Event, extraction: Extraction | None = None, *, time_ms: int | None = None
    ) -> Resolution:
        """Attach the event's identifiers to its profile, merging profiles where the rules
        allow; returns what changed and what was dropped, with reasons.

        ``extraction``, if given, is ``extract(event, rules)`` already computed by the caller
        (with the default ``previous_id_type``); it is recomputed when an alias's
        ``previousId`` turns out to be of another type. ``time_ms``, if given, is the event's
        time in epoch milliseconds, already parsed by the caller.

        Idempotent: resolving the same event again changes nothing further. Raises
        :class:`ResolutionConflictError` if concurrent writers keep invalidating the plan."""
        if time_ms is None:
            time_ms = int(parse_time(event.timestamp).timestamp() * 1000)
        previous_id_type = self._previous_id_type(event)
        if extraction is None or (event.type == "alias" and previous_id_type != USER_ID):
            extraction = extract(
                event, self._rules, previous_id_type=previous_id_type, table=self._table
            )
        found = extraction.identifiers
        link = extraction.link
        if link is not None and link not in found:
            found = (*found, link)
        lookup = self._store.lookup
        owners = [lookup(i.id_type, i.value) for i in found]
        owner = owners[0] if owners else None
        if owner is not None and all(o == owner for o in owners):
            # Every identifier already belongs to one profile: nothing to attach or merge,
            # so no rule can be broken (a plan would only confirm this, at a higher cost).
            return Resolution(self._store.touch(owner, time_ms), dropped=extraction.dropped)
        provenance = Provenance(event.message_id, event.source_id, time_ms, extraction.match_weight)
        priority = self._table.priority
        order = sorted(range(len(found)), key=lambda k: priority(found[k].id_type))
        candidates = [found[k] for k in order]
        looked_up = [owners[k] for k in order]
        merged_from: list[str] = []
        for attempt in range(_ATTEMPTS):
            plan = self._plan(candidates, time_ms, link, looked_up if attempt == 0 else None)
            dropped = (*extraction.dropped, *plan.dropped)
            refused = tuple(plan.dropped)
            if not plan.profiles and not plan.new:
                return Resolution(None, dropped=dropped, refused=refused)
            try:
                done = self._apply(plan, event, provenance, merged_from)
            except UnknownProfileError:
                continue
            if done is not None:
                profile_id, attached = done
                return Resolution(profile_id, attached, tuple(merged_from), dropped, refused)
        raise ResolutionConflictError(
            f"event {event.message_id!r}: its identifiers kept moving between profiles "
            f"during {_ATTEMPTS} attempts; redeliver the event"
        )

    def explain(self, profile_id: str) -> list[Explanation]:
        """Why the profile ``profile_id`` resolves to holds each identifier, and which
        profiles were merged into it by which events; oldest first. Raises
        :class:`UnknownProfileError` if the id does not resolve."""
        profile = self._store.get(profile_id)
        if profile is None:
            raise UnknownProfileError(profile_id)
        lines: list[Explanation] = []
        for edge in profile.identities:
            ident = Identifier(edge.id_type, edge.value)
            lines.append(
                Explanation(
                    "identity",
                    edge.provenance,
                    f"{ident} attached by {_describe(edge.provenance)}",
                    identifier=ident,
                )
            )
        for redirect in profile.merged:
            lines.append(
                Explanation(
                    "merge",
                    redirect.provenance,
                    f"profile {redirect.from_id} merged into {redirect.into_id} by "
                    f"{_describe(redirect.provenance)}",
                    merged_profile=redirect.from_id,
                )
            )
        lines.sort(key=lambda e: (e.provenance.time_ms, e.kind != "identity", e.text))
        return lines

    def _previous_id_type(self, event: Event) -> str:
        if self._rules.previous_id_type is not None:
            return self._rules.previous_id_type
        if event.type != "alias" or event.previous_id is None:
            return USER_ID
        known = self._store.lookup(USER_ID, event.previous_id.strip()) is not None
        return USER_ID if known else ANONYMOUS_ID

    def _plan(
        self,
        candidates: Sequence[Identifier],
        time_ms: int,
        link: Identifier | None = None,
        owners: Sequence[str | None] | None = None,
    ) -> _Plan:
        """Accept or drop each of ``candidates``, most trusted first; ``owners``, if given,
        are their owners as just looked up (in the same order)."""
        plan = _Plan({}, [], [])
        for k, ident in enumerate(candidates):
            if owners is not None:
                owner = owners[k]
            else:
                owner = self._store.lookup(ident.id_type, ident.value)
            if owner is not None and owner in plan.profiles:
                continue
            if owner is None and ident == link:
                # The matched profile is gone (deleted or split): the record stands alone.
                continue
            joining = self._store.get(owner) if owner is not None else None
            if joining is None:
                added = self._counts((), [ident], time_ms)
            else:
                added = self._counts((joining,), [], time_ms)
            reason = self._violation(plan, ident, joining, added)
            if reason is not None:
                plan.dropped.append(Dropped(ident.id_type, ident.value, reason))
                continue
            counts = plan.counts
            for id_type, extra in added.items():
                counts[id_type] = counts.get(id_type, 0) + extra
            if joining is not None:
                plan.profiles[joining.profile_id] = joining
                plan.identifiers += len(joining.identities)
                plan.merges += len(joining.merged)
            else:
                plan.new.append(ident)
                plan.identifiers += 1
        return plan

    def _violation(
        self, plan: _Plan, ident: Identifier, joining: Profile | None, added: dict[str, int]
    ) -> str | None:
        """Why accepting ``ident`` (and the profile ``joining`` that owns it, whose counted
        identifiers are ``added``) would break a rule, or ``None``. Only what the addition
        increases is checked, so a profile that already exceeds a lowered limit keeps
        working."""
        if self._apart:
            reason = self._separated(plan, ident, joining)
            if reason is not None:
                return reason
        for id_type, extra in sorted(added.items()):
            rule = self._table.rule(id_type)
            after = plan.counts.get(id_type, 0) + extra
            if rule.limit is not None and after > rule.limit:
                window = f" per {_duration(rule.window_s)}" if rule.window_s else ""
                return (
                    f"{_adding(ident, joining)} would give one profile {after} {id_type} "
                    f"identifiers (limit {rule.limit}{window})"
                )
        total_after = plan.identifiers + (len(joining.identities) if joining else 1)
        if total_after > self._rules.max_identifiers_per_profile:
            return (
                f"{_adding(ident, joining)} would give one profile {total_after} identifiers "
                f"(max_identifiers_per_profile {self._rules.max_identifiers_per_profile})"
            )
        if joining is not None and plan.profiles:
            merges = plan.merges + len(joining.merged) + len(plan.profiles)
            if merges > self._rules.max_merges_per_profile:
                return (
                    f"{_adding(ident, joining)} would make {merges} merges into one profile "
                    f"(max_merges_per_profile {self._rules.max_merges_per_profile})"
                )
        return None

    def _separated(self, plan: _Plan, ident: Identifier, joining: Profile | None) -> str | None:
        adding = (
            [Identifier(e.id_type, e.value) for e in joining.identities] if joining else [ident]
        )
        held = set(plan.new)
        for profile in plan.profiles.values():
            held.update(Identifier(e.id_type, e.value) for e in profile.identities)
        for new in adding:
            clash = self._apart.get(new, set()) & held
            if clash:
                other = min(clash, key=str)
                return f"{new} was split apart from {other} by an operator (clew identity split)"
        return None

    def _counts(
        self, profiles: Iterable[Profile], new: list[Identifier], time_ms: int
    ) -> dict[str, int]:
        """Identifiers per type (within each type's window) of the profiles plus ``new``,
        for the types that have a limit."""
        rule = self._table.rule
        counts: dict[str, int] = {}
        for i in new:
            id_type = i.id_type
            if rule(id_type).limit is not None:
                counts[id_type] = counts.get(id_type, 0) + 1
        for profile in profiles:
            for edge in profile.identities:
                id_type = edge.id_type
                type_rule = rule(id_type)
                if type_rule.limit is None:
                    continue
                window_s = type_rule.window_s
                if window_s is None or edge.provenance.time_ms > time_ms - window_s * 1000:
                    counts[id_type] = counts.get(id_type, 0) + 1
        return counts

    def _canonical(self, profile: Profile) -> tuple[int, str, str]:
        key = canonical_key
        table = self._table
        return min(
            (key(table, e.id_type, e.value) for e in profile.identities),
            default=(_NO_PRIORITY, "", profile.profile_id),
        )

    def _apply(
        self, plan: _Plan, event: Event, provenance: Provenance, merged_from: list[str]
    ) -> tuple[str, tuple[Identifier, ...]] | None:
        """Carry out the plan; ``None`` if another writer got in the way (plan again)."""
        store = self._store
        keyed = sorted(((self._canonical(p), p) for p in plan.profiles.values()), key=_first)
        ranked = [p for _, p in keyed]
        best_new = min(
            (canonical_key(self._table, i.id_type, i.value) for i in plan.new), default=None
        )
        if keyed and (best_new is None or keyed[0][0] < best_new):
            _, id_type, value = keyed[0][0]
        else:
            assert best_new is not None
            _, id_type, value = best_new
        target = _profile_id(id_type, value)
        into = ranked[0] if ranked else None
        if into is not None:
            survivor = into.profile_id
        elif store.resolve(target) is None:
            survivor = target
        else:
            # The id is taken by another profile (only after an operator's split moved the
            # identifier away): a new id from the event, still the same on a replay.
            survivor = str(uuid.uuid5(_PROFILE_NAMESPACE, f"{event.message_id}/{target}"))
        if into is not None and survivor != target and store.resolve(target) is None:
            # The profile's canonical identifier changed: it takes that identifier's id.
            store.touch(target, provenance.time_ms)
            survivor = store.merge(target, survivor, provenance, _take_from, _take_from)
            merged_from.append(into.profile_id)
            if self._merge is not None:
                into = store.get(survivor) or into
        for other in ranked[1:]:
            assert into is not None
            how = self._merge(into, other) if self._merge is not None else MergeFunctions()
            survivor = store.merge(survivor, other.profile_id, provenance, how.traits, how.computed)
            merged_from.append(other.profile_id)
            if self._merge is not None and other is not ranked[-1]:
                into = store.get(survivor) or into
        attached: list[Identifier] = []
        for ident in plan.new:
            owner = store.attach(survivor, ident.id_type, ident.value, provenance)
            if owner != survivor and store.resolve(survivor) != owner:
                return None
            survivor = owner
            attached.append(ident)
        if not plan.new:
            survivor = store.touch(survivor, provenance.time_ms)
        return survivor, tuple(attached)


def _adding(ident: Identifier, joining: Profile | None) -> str:
    """What accepting ``ident`` does, for a rule's refusal."""
    if joining is None:
        return f"adding {ident}"
    return f"{ident} belongs to profile {joining.profile_id}; merging it"


def _take_from(_into: Traits, from_: Traits) -> Traits:
    """A rename moves a profile into a new, empty one: its values are kept as they are."""
    return from_


def _describe(provenance: Provenance) -> str:
    when = format_time(_from_ms(provenance.time_ms))
    return f"event {provenance.message_id} from source {provenance.source_id} at {when}"


def _from_ms(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC)


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" if count == 1 else f"{count} {unit}s"
    return f"{seconds} s"
