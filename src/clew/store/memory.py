"""An in-memory serving store: the batch layer (``clew rebuild``, ``clew identity split``)
re-derives profiles in it, and tests use it. Nothing survives the process.

A :meth:`~MemoryProfileStore.transaction` (and each block nested in it) copies the whole state
on entry so that it can be restored if the block raises: cheap for the small stores of a split,
not meant for a rebuild's millions of events (which does not need one).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

from clew.store import _memory_timers as timers
from clew.store._memory_state import ProfileRecord, StoreState
from clew.store.base import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    Separation,
    StoreClosedError,
    StoredEvent,
    StoreError,
    Traits,
    TraitsMerge,
    TraitsUpdate,
    UnknownProfileError,
    keep_existing,
)


class MemoryProfileStore(ProfileStore):
    def __init__(self, history: int = 100, *, share: MemoryProfileStore | None = None) -> None:
        """A new empty store, or (``share``) another handle on the state of an open one."""
        if share is not None:
            self._s: StoreState | None = share._state
            self._lock: threading.RLock = share._lock
        else:
            self._s = StoreState()
            self._lock = threading.RLock()
        self.history = history

    @property
    def _state(self) -> StoreState:
        if self._s is None:
            raise StoreClosedError("the profile store is closed")
        return self._s

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            # Every level keeps its own copy: a nested block that raises undoes only itself.
            saved = copy.deepcopy(self._state)
            try:
                yield
            except BaseException:
                self._restore(saved)
                raise

    def version(self) -> int:
        with self._lock:
            return self._state.version

    def _restore(self, saved: StoreState) -> None:
        # In place, so that other handles sharing the state see the rollback too.
        state = self._state
        for name in StoreState.__dataclass_fields__:
            setattr(state, name, getattr(saved, name))

    def _resolve(self, profile_id: str) -> str | None:
        s = self._state
        current = profile_id
        while current not in s.profiles:
            hop = s.redirects.get(current)
            if hop is None:
                return None
            current = hop[0]
        return current

    def _live(self, profile_id: str) -> str:
        live = self._resolve(profile_id)
        if live is None:
            raise UnknownProfileError(profile_id)
        return live

    def _widen(self, profile_id: str, first_ms: int, last_ms: int) -> ProfileRecord:
        rec = self._state.profiles.get(profile_id)
        if rec is None:
            rec = self._state.profiles[profile_id] = ProfileRecord(first_ms, last_ms)
        else:
            rec.first_ms = min(rec.first_ms, first_ms)
            rec.last_ms = max(rec.last_ms, last_ms)
        return rec

    def _chain(self, live: str) -> list[str]:
        s, out, todo = self._state, [], [live]
        while todo:
            for from_id in s.redirects_into.get(todo.pop(), ()):
                out.append(from_id)
                todo.append(from_id)
        return out

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        with self._lock:
            return {(t, p): o for (g, t, p), o in self._state.offsets.items() if g == group}

    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._lock:
            for (t, p), o in offsets.items():
                self._state.offsets[(group, t, p)] = o

    def touch(self, profile_id: str, time_ms: int) -> str:
        with self._lock:
            self._state.version += 1
            live = self._resolve(profile_id) or profile_id
            self._widen(live, time_ms, time_ms)
            return live

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        with self._lock:
            self._state.version += 1
            s = self._state
            live = self._resolve(profile_id) or profile_id
            owner = s.identities.get((id_type, value))
            if owner is not None and owner[0] != live:
                return owner[0]
            rec = self._widen(live, provenance.time_ms, provenance.time_ms)
            if owner is None:
                s.identities[(id_type, value)] = (live, provenance)
                rec.ids.add((id_type, value))
                rec.edges = None
            return live

    def detach(self, id_type: str, value: str) -> str | None:
        with self._lock:
            self._state.version += 1
            owner = self._state.identities.pop((id_type, value), None)
            if owner is None:
                return None
            rec = self._state.profiles[owner[0]]
            rec.ids.discard((id_type, value))
            rec.edges = None
            return owner[0]

    def lookup(self, id_type: str, value: str) -> str | None:
        with self._lock:
            owner = self._state.identities.get((id_type, value))
            return None if owner is None else owner[0]

    def resolve(self, profile_id: str) -> str | None:
        with self._lock:
            return self._resolve(profile_id)

    def get(self, profile_id: str) -> Profile | None:
        with self._lock:
            live = self._resolve(profile_id)
            return None if live is None else self._snapshot(live)

    def _snapshot(self, live: str) -> Profile:
        s = self._state
        rec = s.profiles[live]
        owners = s.identities
        identities = rec.edges
        if identities is None:
            rec.edges = identities = tuple(
                [IdentityEdge(t, v, owners[t, v][1]) for t, v in sorted(rec.ids)]
            )
        merged = rec.merged
        if merged is None:
            chain = [Redirect(f, *s.redirects[f]) for f in self._chain(live)]
            chain.sort(key=lambda r: (r.provenance.time_ms, r.from_id))
            rec.merged = merged = tuple(chain)
        return Profile(
            live,
            rec.first_ms,
            rec.last_ms,
            identities,
            dict(rec.traits),
            merged,
            dict(rec.computed),
        )

    def peek(self, profile_id: str) -> tuple[int, Traits] | None:
        """The last seen time (ms) and the computed values of the profile ``profile_id``
        resolves to, without copying anything (the caller must not change them); ``None``
        for an unknown id. For a hot loop that reads one profile's state per event."""
        with self._lock:
            live = self._resolve(profile_id)
            if live is None:
                return None
            rec = self._state.profiles[live]
            return rec.last_ms, rec.computed

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._lock:
            self._state.version += 1
            rec = self._state.profiles[self._live(profile_id)]
            rec.traits = _checked(update(dict(rec.traits)))
            return dict(rec.traits)

    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._lock:
            self._state.version += 1
            rec = self._state.profiles[self._live(profile_id)]
            rec.computed = _checked(update(dict(rec.computed)))
            return dict(rec.computed)

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        with self._lock:
            self._state.version += 1
            rec = self._state.profiles[self._live(profile_id)]
            self._append(rec, [event])

    def _append(self, rec: ProfileRecord, events: Sequence[StoredEvent]) -> None:
        for event in events:
            self._state.seq += 1
            rec.history.append(
                StoredEvent(self._state.seq, event.message_id, event.time_ms, event.body)
            )
        while len(rec.history) > self.history:
            rec.history.popleft()

    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        with self._lock:
            live = self._resolve(profile_id)
            if live is None:
                return []
            newest_first = reversed(self._state.profiles[live].history)
            picked = [e for e in newest_first if before is None or e.seq < before]
            return picked[:limit]

    def scan(self, after: str | None, limit: int) -> list[Profile]:
        with self._lock:
            ids = sorted(pid for pid in self._state.profiles if after is None or pid > after)
            return [self._snapshot(pid) for pid in ids[:limit]]

    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        pid = profile.profile_id
        with self._lock:
            self._state.version += 1
            s = self._state
            for edge in profile.identities:
                owner = s.identities.get((edge.id_type, edge.value))
                if owner is not None and owner[0] != pid:
                    raise StoreError(
                        f"{edge.id_type}:{edge.value} belongs to profile {owner[0]}; delete or "
                        f"detach it before writing profile {pid}"
                    )
            if pid in s.profiles:
                self._erase(pid)
            # A merged-away id written as a profile of its own no longer leads to its survivor.
            self._unredirect(pid)
            rec = s.profiles[pid] = ProfileRecord(
                profile.first_seen_ms,
                profile.last_seen_ms,
                dict(profile.traits),
                dict(profile.computed),
            )
            for edge in profile.identities:
                key = (edge.id_type, edge.value)
                s.identities[key] = (pid, edge.provenance)
                rec.ids.add(key)
            for r in profile.merged:
                self._redirect(r.from_id, r.into_id, r.provenance)
            self._append(rec, history)

    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        with self._lock:
            owners = dict.fromkeys(
                owner[0]
                for key in identities
                if (owner := self._state.identities.get(key)) is not None
            )
            return [self._snapshot(pid) for pid in owners]

    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
        moved: Collection[tuple[str, str]] | None = None,
    ) -> None:
        for profile in profiles:
            _checked(profile.traits)
            _checked(profile.computed)
        with self._lock:
            self._state.version += 1
            s = self._state
            for from_id, into in gone.items():
                lost = s.profiles.pop(from_id, None)
                if lost is not None:
                    target = s.profiles.setdefault(into, ProfileRecord(lost.first_ms, lost.last_ms))
                    target.history.extend(lost.history)
            for p in profiles:
                rec = s.profiles.get(p.profile_id)
                if rec is None:
                    rec = s.profiles[p.profile_id] = ProfileRecord(p.first_seen_ms, p.last_seen_ms)
                rec.first_ms, rec.last_ms = p.first_seen_ms, p.last_seen_ms
                rec.merged = None
                rec.traits, rec.computed = dict(p.traits), dict(p.computed)
                for edge in p.identities:
                    key = (edge.id_type, edge.value)
                    old = s.identities.get(key)
                    if old is not None and old[0] != p.profile_id and old[0] in s.profiles:
                        s.profiles[old[0]].ids.discard(key)
                        s.profiles[old[0]].edges = None
                    s.identities[key] = (p.profile_id, old[1] if old else edge.provenance)
                    rec.ids.add(key)
                rec.edges = None
                for r in p.merged:
                    self._redirect(r.from_id, r.into_id, r.provenance)
            by_profile: dict[str, list[StoredEvent]] = {}
            for pid, event in events:
                by_profile.setdefault(pid, []).append(event)
            for pid, new in by_profile.items():
                self._append(s.profiles[self._live(pid)], new)
            for pid in gone.values():
                rec = s.profiles.get(pid)
                if rec is not None:
                    ordered = sorted(rec.history, key=lambda e: e.seq)
                    rec.history = deque(ordered[-self.history :] if self.history else [])
            for from_id in gone:
                s.timers.pop(from_id, None)

    def _redirect(self, from_id: str, into_id: str, provenance: Provenance) -> None:
        s = self._state
        self._unredirect(from_id)
        s.redirects[from_id] = (into_id, provenance)
        s.redirects_into.setdefault(into_id, []).append(from_id)
        self._chain_changed(into_id)

    def _unredirect(self, from_id: str) -> None:
        s = self._state
        old = s.redirects.pop(from_id, None)
        if old is not None:
            s.redirects_into[old[0]].remove(from_id)
            self._chain_changed(old[0])

    def _chain_changed(self, into_id: str) -> None:
        """A redirect into ``into_id`` came or went: the redirects leading to the profile it
        resolves to must be read again."""
        root = self._resolve(into_id)
        if root is not None:
            self._state.profiles[root].merged = None

    def add_separation(self, separation: Separation) -> None:
        with self._lock:
            self._state.separations.setdefault((separation.a, separation.b), separation)

    def separations(self) -> list[Separation]:
        with self._lock:
            return list(self._state.separations.values())

    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
        computed: TraitsMerge = keep_existing,
    ) -> str:
        with self._lock:
            self._state.version += 1
            s = self._state
            survivor, gone = self._live(into), self._live(from_)
            if survivor == gone:
                return survivor
            keep, lose = s.profiles[survivor], s.profiles[gone]
            new_traits = _checked(traits(dict(keep.traits), dict(lose.traits)))
            new_computed = _checked(computed(dict(keep.computed), dict(lose.computed)))
            keep.traits, keep.computed = new_traits, new_computed
            keep.first_ms = min(keep.first_ms, lose.first_ms)
            keep.last_ms = max(keep.last_ms, lose.last_ms)
            for key in lose.ids:
                s.identities[key] = (survivor, s.identities[key][1])
            keep.ids |= lose.ids
            keep.edges = None
            keep.merged = None
            moved = sorted([*keep.history, *lose.history], key=lambda e: e.seq)
            keep.history = deque(moved[-self.history :] if self.history else [])
            del s.profiles[gone]
            self._redirect(gone, survivor, provenance)
            s.timers.pop(gone, None)
            return survivor

    def _erase(self, live: str) -> None:
        s = self._state
        # Every redirect of the chain points at the profile or at another id of the chain.
        for from_id in self._chain(live):
            s.redirects.pop(from_id, None)
            s.redirects_into.pop(from_id, None)
        s.redirects_into.pop(live, None)
        rec = s.profiles.pop(live)
        for key in rec.ids:
            del s.identities[key]

    def delete_profile(self, profile_id: str) -> bool:
        with self._lock:
            self._state.version += 1
            live = self._resolve(profile_id)
            if live is None:
                return False
            for pid in (live, *self._chain(live)):
                self._state.timers.pop(pid, None)
            self._erase(live)
            return True

    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        with self._lock:
            self._state.version += 1
            live = self._resolve(profile_id)
            if live is None:
                return 0
            rec = self._state.profiles[live]
            kept = deque(e for e in rec.history if not _within(e.time_ms, since_ms, until_ms))
            removed = len(rec.history) - len(kept)
            rec.history = kept
            return removed

    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        wanted = set(identities)
        with self._lock:
            seps = self._state.separations
            doomed = [k for k in seps if k[0] in wanted or k[1] in wanted]
            for key in doomed:
                del seps[key]
            return len(doomed)

    def set_timers(self, due: Mapping[str, int | None]) -> None:
        with self._lock:
            timers.set_timers(self._state.timers, due)

    def due_timers(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        with self._lock:
            return timers.due(self._state.timers, now_ms, limit)

    def next_timer(self) -> int | None:
        with self._lock:
            return min(self._state.timers.values(), default=None)

    def outbox_put(self, group: str, payload: bytes) -> int:
        with self._lock:
            return timers.put(self._state.outbox, self._state.outbox_seq, group, payload)

    def outbox_pending(self, group: str, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._lock:
            return timers.pending(self._state.outbox, group, limit)

    def outbox_ack(self, group: str, seq: int) -> None:
        with self._lock:
            timers.ack(self._state.outbox, group, seq)

    def close(self) -> None:
        with self._lock:
            self._s = None


def _within(time_ms: int, since_ms: int | None, until_ms: int | None) -> bool:
    return (since_ms is None or time_ms >= since_ms) and (until_ms is None or time_ms < until_ms)


def _checked(traits: Traits) -> Traits:
    if not isinstance(traits, dict):
        raise StoreError(f"traits must be a dict, got {type(traits).__name__}")
    return traits
