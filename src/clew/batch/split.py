"""Splitting a wrongly merged profile (``clew identity split``).

An operator says: *this identifier does not belong with the rest of this profile*. Clew then

1. records a separation between that identifier and the profile's most trusted other
   identifier (the *anchor*: lowest rule priority, then attached first), so that from now on
   no event may put the two in one profile — the live profiles stage and every later
   re-derivation honour it (the event loses its least trusted conflicting identifier);
2. re-derives the profile from its events: every event that carries any of the profile's
   identifiers, from the lake (and, for events the profiles stage has applied but the lake
   has not written yet, from the log), replayed in event-time order (ties: ``receivedAt``,
   ``messageId``) through the same identity rules and trait policy on an empty in-memory
   store, with every separation in force;
3. in one serving-store transaction, deletes the old profile and writes every re-derived one
   (identities with their provenance, traits, purchase totals, merges, recent history) and the
   separation; and announces the result on the ``changes`` topic (deleted ids, then snapshots),
   so the lake's profile tables follow.

Re-derivation sees only this profile's events: an identifier that another profile owns stays
with it, and a re-derived profile left without identifiers is dropped (its events belong to
other profiles). The serving-store transaction holds the store's write lock, so the live
profiles stage pauses for its duration; events it has not applied yet are left out of the
replay and applied by it afterwards, on top of the split, so nothing is counted twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from msgspec.structs import replace

from clew.batch._lake_events import LakeSnapshot, events_to_replay, read_lake
from clew.config import IdentitySettings, Settings
from clew.events import Event
from clew.identity.changes import ProfileDeleted, deleted, encode_change, snapshot
from clew.identity.identifiers import (
    ANONYMOUS_ID,
    EMAIL,
    PHONE,
    USER_ID,
    Identifier,
    extract,
    normalise_email,
    normalise_phone,
    placeholder_rule,
)
from clew.identity.rules import IdentityRules
from clew.identity.unifier import Unifier
from clew.log.base import Log, Message
from clew.store.base import (
    Profile,
    ProfileReader,
    ProfileStore,
    Provenance,
    Separation,
    StoredEvent,
)
from clew.store.memory import MemoryProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

if TYPE_CHECKING:
    from clew.audiences.engine import Engine

logger = logging.getLogger(__name__)

_ATTEMPTS = 3
_SCAN_PAGE = 500
_PROFILES_GROUP = "profiles"
_SPLIT_NAMESPACE = uuid.UUID("5b0f2a6e-93c1-4c7e-8d2a-61f0b3e4c9d7")


class SplitError(RuntimeError):
    """The split cannot be done; the message says why and what to do. Nothing was changed."""


class InvalidIdentifierError(SplitError, ValueError):
    """An identifier argument is not ``id_type:value`` or its value is unusable."""


class ProfileNotFoundError(SplitError):
    """No profile has the given id or identifier."""


class IdentifierNotInProfileError(SplitError):
    """The identifier to split off is not one of the profile's."""


class OnlyIdentifierError(SplitError):
    """The identifier is the profile's only one: there is nothing to split it from."""


class EventsUnavailableError(SplitError):
    """Events the profiles stage applied are in neither the lake nor the log."""

    def __init__(self, missing: int) -> None:
        super().__init__(
            f"{missing} event(s) the profiles stage has applied are not in the lake yet and no "
            "longer in the log (removed by retention or deletion), so the split cannot replay "
            "them; check that the lake stage runs (`clew serve`), or pass --force to split "
            "without them (whatever they did to this profile is lost)"
        )
        self.missing = missing


class SplitConflictError(SplitError):
    """The profile kept changing (new events) while it was being read; run again."""


@dataclass(slots=True, frozen=True)
class SplitResult:
    """What a split did. ``profiles``: every re-derived profile as written. ``retired``: old
    ids (the profile's and those merged into it) that are no longer a profile of their own,
    with where they lead now (``into`` ``None``: nowhere). ``events_from_log``: replayed
    events read from the log because the lake did not hold them yet; ``events_pending``:
    events of the profile in the lake that the profiles stage had not applied yet (left for
    it); ``events_missing``: events that could not be read (``--force`` only).
    ``unplaced``: identifiers of the old profile that no re-derived profile holds (every
    event carrying them lost them to a rule or a separation)."""

    old_profile_id: str
    identifier: Identifier
    anchor: Identifier
    separation: Separation
    profiles: tuple[Profile, ...]
    retired: tuple[ProfileDeleted, ...]
    events_replayed: int
    events_from_log: int = 0
    events_pending: int = 0
    events_missing: int = 0
    unplaced: tuple[Identifier, ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


def _audience_engine(settings: Settings) -> Engine | None:
    """The live audience definitions, so a split re-derives each part's audience state."""
    from clew.audiences.definitions import DefinitionError
    from clew.audiences.engine import Engine
    from clew.audiences.repository import open_repository

    try:
        catalog = open_repository(settings).catalog()
    except DefinitionError as exc:
        logger.warning("splitting without audience definitions: %s", exc)
        return None
    return Engine(catalog) if catalog.definitions() else None


def parse_split_identifier(text: str, rules: IdentityRules) -> Identifier:
    """``id_type:value`` as an identifier, normalised like the events' (emails lower-cased,
    phones in E.164). Raises :class:`InvalidIdentifierError`.

    >>> parse_split_identifier("email: Ada@Shop.test", IdentityRules())
    Identifier(id_type='email', value='ada@shop.test')
    """
    id_type, sep, value = text.partition(":")
    id_type, value = id_type.strip(), value.strip()
    if not sep or not id_type or not value:
        raise InvalidIdentifierError(
            f"{text!r} is not an identifier; write it as id_type:value, "
            "e.g. email:ada@shop.test or anonymous_id:4f1c2b"
        )
    if id_type == EMAIL:
        value = normalise_email(value)
    elif id_type == PHONE:
        try:
            value = normalise_phone(value, rules.phone_region)
        except ValueError as exc:
            raise InvalidIdentifierError(
                f"{value!r} is not a usable phone number ({exc}); write it in E.164 form, "
                "e.g. phone:+442079460958"
            ) from None
    return Identifier(id_type, value)


def find_profile(store: ProfileReader, ref: str, rules: IdentityRules) -> str:
    """The live profile id ``ref`` names: a profile id (an old, merged-away one too) or an
    identifier as ``id_type:value``. Raises :class:`ProfileNotFoundError`."""
    live = store.resolve(ref)
    if live is not None:
        return live
    if ":" in ref:
        ident = parse_split_identifier(ref, rules)
        owner = store.lookup(ident.id_type, ident.value)
        if owner is not None:
            return owner
        blocked_by = placeholder_rule(ident, rules)
        if blocked_by is not None:
            raise ProfileNotFoundError(
                f"{ident} is a placeholder ({blocked_by}): never an identifier, so events "
                "carrying it are resolved without it and no profile holds it; look the person "
                "up by another identifier"
            )
        raise ProfileNotFoundError(
            f"no profile holds the identifier {ident} (nor is {ref!r} a profile id); check "
            "the id type and value, e.g. with `clew sql` over the events table"
        )
    raise ProfileNotFoundError(
        f"no profile has the id {ref!r} (never created, deleted, or split away); give a "
        "profile id or an identifier as id_type:value, e.g. email:ada@shop.test"
    )


def identifiers_of(profile: Profile) -> frozenset[Identifier]:
    return frozenset(Identifier(e.id_type, e.value) for e in profile.identities)


def choose_anchor(profile: Profile, identifier: Identifier, rules: IdentityRules) -> Identifier:
    """The identifier ``identifier`` is kept apart from: the profile's most trusted other one
    (lowest rule priority, then the earliest attached). Raises
    :class:`IdentifierNotInProfileError` or :class:`OnlyIdentifierError`."""
    held = identifiers_of(profile)
    pid = profile.profile_id
    if identifier not in held:
        listed = ", ".join(sorted(map(str, held)))
        raise IdentifierNotInProfileError(
            f"{identifier} is not an identifier of profile {pid} (it holds {listed}); "
            f"see why with `clew identity explain {pid}`"
        )
    others = [e for e in profile.identities if Identifier(e.id_type, e.value) != identifier]
    if not others:
        raise OnlyIdentifierError(
            f"{identifier} is the only identifier of profile {pid}: there is nothing to "
            "split it from"
        )
    best = min(
        others, key=lambda e: (rules.priority(e.id_type), e.provenance.time_ms, e.id_type, e.value)
    )
    return Identifier(best.id_type, best.value)


def split_profile(
    settings: Settings,
    profile_ref: str,
    identifier: Identifier,
    operator: str,
    *,
    force: bool = False,
    store: ProfileStore | None = None,
    log: Log | None = None,
    clock: Callable[[], datetime] = _now,
) -> SplitResult:
    """Split ``identifier`` (normalised, see :func:`parse_split_identifier`) off the profile
    ``profile_ref`` names, as described in the module docstring, on behalf of ``operator``.

    ``store`` and ``log`` default to the data directory's, opened and closed here (this
    works while ``clew serve`` runs). Raises a :class:`SplitError` subclass, having changed
    nothing, when the profile or identifier is wrong, when events it needs are unavailable
    (unless ``force``), or when the profile kept changing while being read."""
    opened: list[Callable[[], None]] = []
    try:
        if store is None:
            from clew.backends import open_store

            store = open_store(settings)
            opened.append(store.close)
        if log is None:
            from clew.backends import open_log

            log = open_log(settings)
            opened.append(log.close)
        splitter = _Splitter(settings, store, log, clock)
        return splitter.run(profile_ref, identifier, operator, force)
    finally:
        for close in reversed(opened):
            close()


_Derived = tuple[Profile, list[StoredEvent]]


class _Splitter:
    def __init__(
        self, settings: Settings, store: ProfileStore, log: Log, clock: Callable[[], datetime]
    ) -> None:
        self.identity: IdentitySettings = settings.identity
        self.rules = settings.identity.rules
        self.lake_path = settings.lake_location
        self.cold_path = settings.cold_location
        self.store = store
        self.log = log
        self.clock = clock
        self.engine = _audience_engine(settings)

    def run(self, ref: str, identifier: Identifier, operator: str, force: bool) -> SplitResult:
        partitions = sorted(self.log.end_offsets(EVENTS_TOPIC))
        for _ in range(_ATTEMPTS):
            profile = self.store.get(find_profile(self.store, ref, self.rules))
            if profile is None:
                continue
            choose_anchor(profile, identifier, self.rules)
            # The lake is read before taking the store's write lock (it may take a while);
            # the snapshot records which log offsets it covers, so it is reconciled with what
            # the profiles stage has applied once the lock is held.
            lake = read_lake(self.lake_path, partitions, identifiers_of(profile), self.cold_path)
            with self.store.transaction():
                now = self.store.get(find_profile(self.store, ref, self.rules))
                if now is None or (
                    now.profile_id != profile.profile_id
                    or identifiers_of(now) != identifiers_of(profile)
                ):
                    continue
                return self._split(now, identifier, operator, lake, force)
        raise SplitConflictError(
            f"the profile {ref!r} kept changing while it was read ({_ATTEMPTS} attempts: new "
            "events attached identifiers or merged profiles); run the command again"
        )

    def _split(
        self,
        profile: Profile,
        identifier: Identifier,
        operator: str,
        lake: LakeSnapshot,
        force: bool,
    ) -> SplitResult:
        store, old_id = self.store, profile.profile_id
        anchor = choose_anchor(profile, identifier, self.rules)
        when = self.clock()
        separation = Separation(
            (identifier.id_type, identifier.value),
            (anchor.id_type, anchor.value),
            Provenance(
                f"split/{old_id}/{identifier}",
                f"operator:{operator}",
                int(when.timestamp() * 1000),
            ),
        )
        held = identifiers_of(profile)
        applied = store.load_offsets(_PROFILES_GROUP)
        chosen = events_to_replay(lake, applied, self.log, lambda e: self._carries(e, held))
        if chosen.missing and not force:
            raise EventsUnavailableError(chosen.missing)
        derived = self._replay(chosen.events, [*store.separations(), separation])
        kept = self._reconcile(profile, derived)
        store.delete_profile(old_id)
        for new, history in kept:
            store.put_profile(new, history)
        store.add_separation(separation)
        if self.engine is not None:
            # Due at once: the profiles stage evaluates their audiences on its next look.
            store.set_timers({new.profile_id: 0 for new, _ in kept})
        written = tuple(p for p in (store.get(new.profile_id) for new, _ in kept) if p is not None)
        live = {p.profile_id for p in written}
        old_ids = sorted({old_id, *(r.from_id for r in profile.merged)} - live)
        retired = tuple(deleted(pid, store.resolve(pid), when) for pid in old_ids)
        messages = [Message(encode_change(c), key=c.profile_id.encode()) for c in retired]
        messages += [
            Message(encode_change(snapshot(p, when)), key=p.profile_id.encode()) for p in written
        ]
        # Appended before the store commits: if the append fails, nothing changed.
        self.log.append_sync(CHANGES_TOPIC, messages)
        placed = {i for p in written for i in identifiers_of(p)}
        return SplitResult(
            old_profile_id=old_id,
            identifier=identifier,
            anchor=anchor,
            separation=separation,
            profiles=written,
            retired=retired,
            events_replayed=len(chosen.events),
            events_from_log=chosen.from_log,
            events_pending=chosen.pending,
            events_missing=chosen.missing,
            unplaced=tuple(sorted(held - placed, key=str)),
        )

    def _carries(self, event: Event, held: Collection[Identifier]) -> bool:
        found = extract(event, self.rules)
        idents = set(found.identifiers)
        if found.link is not None:
            idents.add(found.link)
        if event.type == "alias" and event.previous_id:
            # Its type depends on the store at the time (user id if known as one).
            value = event.previous_id.strip()
            idents.update((Identifier(USER_ID, value), Identifier(ANONYMOUS_ID, value)))
        return not idents.isdisjoint(held)

    def _replay(
        self, events: Sequence[tuple[Event, bytes]], separations: Sequence[Separation]
    ) -> list[_Derived]:
        memory = MemoryProfileStore(history=self.identity.history)
        unifier = Unifier(
            memory, self.rules, self.identity.traits, keep_history=True, engine=self.engine
        )
        unifier.resolver.set_separations(separations)
        for event, body in events:
            unifier.apply(event, body)
        out: list[_Derived] = []
        after: str | None = None
        while page := memory.scan(after, _SCAN_PAGE):
            for p in page:
                history = memory.events(p.profile_id, memory.history) if memory.history else []
                out.append((p, history[::-1]))
            after = page[-1].profile_id
        return out

    def _reconcile(self, old: Profile, derived: list[_Derived]) -> list[_Derived]:
        """The re-derived profiles as they can be written next to the store's other
        profiles: identifiers another profile owns are left with it (a profile left with
        none is dropped), an id or merged-away id another profile uses is not taken over."""
        store, old_id = self.store, old.profile_id

        def free(pid: str) -> bool:
            return store.resolve(pid) in (None, old_id)

        staged: list[tuple[Profile, list[StoredEvent]]] = []
        renamed: dict[str, str] = {}
        for profile, history in derived:
            edges = tuple(
                e for e in profile.identities if store.lookup(e.id_type, e.value) in (None, old_id)
            )
            if not edges:
                continue
            if not free(profile.profile_id):
                new_id = str(uuid.uuid5(_SPLIT_NAMESPACE, f"{old_id}/{profile.profile_id}"))
                renamed[profile.profile_id] = new_id
            staged.append((replace(profile, identities=edges), history))
        out: list[_Derived] = []
        for profile, history in staged:
            merged = tuple(
                replace(r, into_id=renamed.get(r.into_id, r.into_id))
                for r in profile.merged
                if free(r.from_id)
            )
            pid = renamed.get(profile.profile_id, profile.profile_id)
            out.append((replace(profile, profile_id=pid, merged=merged), history))
        return out
