"""The profiles stage's working set: the profiles a batch of events can reach, in memory,
kept from one batch to the next while the serving store says nobody else wrote to it.

A batch runs inside one serving-store transaction: :meth:`WorkingSet.begin` checks the store's
:meth:`~clew.store.base.ProfileStore.version` against the one read at the end of the last
batch (any other writer, or a backend that cannot tell, empties the set) and loads the
profiles owning identifiers the set does not hold; the unifier then runs on :attr:`store`;
:meth:`result` gives what changed (only that is written back); :meth:`finish` reads the
version after the batch's writes and evicts the least recently used profiles beyond the
capacity. A batch that fails must call :meth:`clear`, since its transaction rolled back.

The set holds whole profiles (every identifier, every redirect leading to them), never the
recent-event histories: events added during a batch are kept aside for the write-back only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any

from clew.store.base import (
    Profile,
    ProfileReader,
    ProfileStore,
    Provenance,
    StoredEvent,
    Traits,
)
from clew.store.memory import MemoryProfileStore

DEFAULT_CAPACITY = 50_000
_NEVER = -(1 << 63)


class _Tracked(MemoryProfileStore):
    """An in-memory store that records, per batch, the profiles written, created and merged
    away, and keeps added events aside instead of in histories."""

    def __init__(self, history: int) -> None:
        super().__init__(history)
        self.written: set[str] = set()
        self.created: set[str] = set()
        self.merged_away: list[str] = []
        self.pending: list[tuple[str, StoredEvent]] = []
        # Identities claimed or moved to another profile.
        self.moved: set[tuple[str, str]] = set()
        # At least the last seen time of every profile held (kept across batches).
        self.newest_ms = _NEVER

    def reset(self) -> None:
        self.written, self.created, self.merged_away, self.pending = set(), set(), [], []
        self.moved = set()

    def unknown(self, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The identities of ``keys`` (``(id_type, value)``) that no held profile has."""
        with self._lock:
            held = self._state.identities
            return [key for key in keys if key not in held]

    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        self.newest_ms = max(self.newest_ms, profile.last_seen_ms)
        super().put_profile(profile, history)

    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
        moved: Collection[tuple[str, str]] | None = None,
    ) -> None:
        newest = max((p.last_seen_ms for p in profiles), default=_NEVER)
        self.newest_ms = max(self.newest_ms, newest)
        super().write_back(profiles, gone, events, moved)

    def touch(self, profile_id: str, time_ms: int) -> str:
        self.newest_ms = max(self.newest_ms, time_ms)
        if self.resolve(profile_id) is None:
            self.created.add(profile_id)
        live = super().touch(profile_id, time_ms)
        self.written.add(live)
        return live

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        self.newest_ms = max(self.newest_ms, provenance.time_ms)
        if self.resolve(profile_id) is None:
            self.created.add(profile_id)
        new = self.lookup(id_type, value) is None
        owner = super().attach(profile_id, id_type, value, provenance)
        if new:
            self.moved.add((id_type, value))
        self.written.add(owner)
        return owner

    def merge(self, into: str, from_: str, *args: Any, **kwargs: Any) -> str:
        gone = self.get(from_)
        survivor = super().merge(into, from_, *args, **kwargs)
        if gone is not None and gone.profile_id != survivor:
            self.merged_away.append(gone.profile_id)
            self.moved.update((e.id_type, e.value) for e in gone.identities)
        self.written.add(survivor)
        return survivor

    def update_traits(self, profile_id: str, update: Any) -> Traits:
        traits = super().update_traits(profile_id, update)
        self.written.add(self._live(profile_id))
        return traits

    def update_computed(self, profile_id: str, update: Any) -> Traits:
        computed = super().update_computed(profile_id, update)
        self.written.add(self._live(profile_id))
        return computed

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        self.pending.append((self._live(profile_id), event))


class WorkingSet:
    """At most ``capacity`` profiles (least recently used go first) of a serving store whose
    recent histories keep ``history`` events."""

    def __init__(self, history: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self._history = history
        self._capacity = capacity
        self.store = _Tracked(history)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._token: Hashable | None = None
        self._results: dict[str, Profile] = {}

    def __len__(self) -> int:
        return len(self._recent)

    def clear(self) -> None:
        """Forget everything (the next batch loads what it needs from the store)."""
        self.store = _Tracked(self._history)
        self._recent = OrderedDict()
        self._token = None

    def begin(self, store: ProfileStore, keys: Collection[tuple[str, str]]) -> None:
        """Inside the batch's transaction on ``store``: make sure every profile owning one of
        ``keys`` (``(id_type, value)``) is held, as the store has it."""
        token = store.version()
        if token is None or token != self._token:
            self.clear()
        held = self.store
        missing = held.unknown(keys)
        loaded = store.load(missing) if missing else []
        if any(held.resolve(p.profile_id) is not None for p in loaded):
            # A profile held but missing an identifier the store gives it: not a copy of the
            # store any more (cannot happen while versions are honest); start afresh.
            self.clear()
            held = self.store
            loaded = store.load(keys)
        for profile in loaded:
            held.put_profile(profile)
            self._recent[profile.profile_id] = None
        held.reset()

    def may_be_late(self, time_ms: int) -> bool:
        """Whether a held profile may have seen an event later than ``time_ms`` (if not, an
        event at ``time_ms`` is late for none of them)."""
        return time_ms < self.store.newest_ms

    def known(self, profile_id: str) -> bool:
        """Whether the store held the profile before this batch (not created by it)."""
        return profile_id not in self.store.created

    def result(
        self, touched: Iterable[str]
    ) -> tuple[list[Profile], dict[str, str], list[tuple[str, StoredEvent]]]:
        """What to write back: the live profiles the batch wrote or ``touched`` (by id), the
        profiles the store held that were merged away (into their survivor), and the events
        added (``(profile id, event)``, oldest first)."""
        held = self.store
        ids = {pid for pid in (*held.written, *touched) if held.resolve(pid) == pid}
        profiles = [p for pid in sorted(ids) if (p := held.get(pid)) is not None]
        self._results = {p.profile_id: p for p in profiles}
        gone: dict[str, str] = {}
        for pid in held.merged_away:
            live = held.resolve(pid)
            if live is not None and pid not in held.created:
                gone[pid] = live
        events: list[tuple[str, StoredEvent]] = []
        for pid, event in held.pending:
            live = held.resolve(pid)
            if live is not None:
                events.append((live, event))
        return profiles, gone, events

    @property
    def moved(self) -> set[tuple[str, str]]:
        """The identities this batch claimed or moved between profiles (for ``write_back``)."""
        return self.store.moved

    def adopt(self, profiles: Iterable[Profile]) -> None:
        """Take the computed values of ``profiles`` (evaluated after :meth:`result`)."""
        results = self._results
        self._take_computed(p for p in profiles if results.get(p.profile_id) is not p)

    def reader(self, store: ProfileStore) -> ProfileReader:
        """Inside a transaction on ``store`` (a timer's): the held profiles, with the store
        behind them for the others, while the store's version says they are current; else
        the store (and the set empties)."""
        token = store.version()
        if token is None or token != self._token:
            self.clear()
            return store
        return _Layered(self.store, store)

    def settle(self, store: ProfileStore, profiles: Iterable[Profile]) -> None:
        """Inside that transaction, after ``profiles`` were written back as given (a timer's
        evaluation): take their computed values and note the store's version."""
        self._take_computed(profiles)
        self._token = store.version()

    def _take_computed(self, profiles: Iterable[Profile]) -> None:
        """Copy the computed values of ``profiles`` onto the held ones (not merged away)."""
        held = self.store
        for profile in profiles:
            computed = profile.computed
            if held.resolve(profile.profile_id) == profile.profile_id:
                held.update_computed(profile.profile_id, lambda _, c=computed: dict(c))

    def finish(self, store: ProfileStore) -> None:
        """Inside the batch's transaction, after its writes: note the store's version and
        evict the least recently used profiles beyond the capacity."""
        held = self.store
        recent = self._recent
        for pid in held.merged_away:
            recent.pop(pid, None)
        for pid in held.written:
            if pid in recent:
                recent.move_to_end(pid)
            elif held.resolve(pid) == pid:
                recent[pid] = None
        while len(recent) > self._capacity:
            pid, _ = recent.popitem(last=False)
            if held.resolve(pid) == pid:
                held.delete_profile(pid)
        held.reset()
        self._results = {}
        self._token = store.version()


class _Layered:
    """Reads from the held profiles, and from the store for the ones not held."""

    def __init__(self, held: MemoryProfileStore, store: ProfileReader) -> None:
        self._held = held
        self._store = store

    def lookup(self, id_type: str, value: str) -> str | None:
        owner = self._held.lookup(id_type, value)
        return owner if owner is not None else self._store.lookup(id_type, value)

    def resolve(self, profile_id: str) -> str | None:
        live = self._held.resolve(profile_id)
        return live if live is not None else self._store.resolve(profile_id)

    def get(self, profile_id: str) -> Profile | None:
        if self._held.resolve(profile_id) is not None:
            return self._held.get(profile_id)
        return self._store.get(profile_id)
