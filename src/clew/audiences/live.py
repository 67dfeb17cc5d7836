"""Audiences in the profiles stage: which definitions are live, evaluation of the profiles a
batch touched, timers that fire without new events, and backfill of new definitions.

Everything here runs on the stage's thread and inside its serving-store transactions, so a
membership, its timer and the record announcing it are committed together: a change record
is first stored in the store's outbox (same transaction), then produced to ``changes``, then
acknowledged. A crash in between re-sends it (same ``change_id``) instead of losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from msgspec.structs import replace

from clew.audiences.changes import pack, records, unpack
from clew.audiences.definitions import AudienceCatalog, DefinitionError
from clew.audiences.engine import STATE, Engine
from clew.audiences.repository import DefinitionRepository
from clew.audiences.status import BACKFILL_GROUP, backfill_key
from clew.clock import Clock
from clew.events import Event, parse_time
from clew.identity.identifiers import extract
from clew.identity.rules import IdentityRules, RuleTable
from clew.log.base import Message
from clew.store.base import OutboxStore, Profile, ProfileReader, ProfileStore

logger = logging.getLogger(__name__)

OUTBOX = "profiles"
_RELOAD_EVERY_S = 1.0
_TIMER_EVERY_S = 0.1
_TIMER_BATCH = 500
_SCAN_PAGE = 1000


class History(Protocol):
    """Past events for a backfill: those the profiles stage has applied (``applied``: its
    last applied offset per ``(topic, partition)``) that ``keep`` selects, in event-time
    order."""

    def events(
        self, applied: Mapping[tuple[str, int], int], keep: Callable[[Event], bool]
    ) -> Iterable[Event]: ...


class HeldProfiles(Protocol):
    """Profiles a caller keeps in memory between its store transactions (the profiles
    stage's working set), which timers may read instead of the store and must keep up to
    date. Each method is called inside the timers' transaction."""

    def reader(self, store: ProfileStore) -> ProfileReader:
        """Where to read profiles: the held ones if the store still agrees with them."""
        ...

    def settle(self, store: ProfileStore, profiles: Sequence[Profile]) -> None:
        """``profiles`` were written back as given (after the caller's writes)."""
        ...

    def clear(self) -> None:
        """The transaction failed: forget what is held."""
        ...


@dataclass(slots=True)
class Produced:
    """Records to produce after the store transaction, and the outbox entry they came from."""

    messages: list[Message]
    outbox_seq: int | None = None
    # Every outbox entry the messages came from, when more than one.
    outbox_seqs: tuple[int, ...] = ()


class LiveAudiences:
    """The live definitions and what they need each batch. ``engine`` is None while no
    definition exists, so a deployment without audiences pays nothing."""

    def __init__(
        self,
        repository: DefinitionRepository | None,
        clock: Clock,
        history: History | None = None,
        catalog: AudienceCatalog | None = None,
    ) -> None:
        self._repo = repository
        self._clock = clock
        self._history = history
        self._version: object = None
        self._last_reload = 0.0
        self._last_timers = 0.0
        self.engine: Engine | None = Engine(catalog) if catalog else None
        self.counts: dict[str, int] = {}
        self._produced: set[int] = set()

    def now_ms(self) -> int:
        return self._clock.now_ms()

    # -- per batch ------------------------------------------------------------------------

    def evaluate(
        self,
        store: ProfileStore,
        profiles: Sequence[Profile],
        touched: Iterable[str],
        gone: Iterable[str],
        now_ms: int,
        cause: str = "event",
        heirs: Collection[str] = (),
    ) -> tuple[list[Profile], Produced]:
        """``profiles`` with the touched ones evaluated at ``now_ms``; their timers are set and
        their change records put in the outbox (call inside the store transaction).
        ``heirs``: the touched profiles that took over the ids in ``gone``; their memberships
        and computed traits are announced again under their own id
        (:meth:`Engine.inherited`)."""
        engine = self.engine
        if engine is None:
            return list(profiles), Produced([])
        wanted = set(touched)
        timers: dict[str, int | None] = dict.fromkeys(gone)
        out: list[Profile] = []
        messages: list[Message] = []
        for profile in profiles:
            if profile.profile_id not in wanted:
                out.append(profile)
                continue
            result = engine.evaluate(profile.traits, profile.computed, now_ms)
            if profile.profile_id in heirs:
                result = engine.inherited(result)
            evaluated = replace(profile, computed=result.computed)
            out.append(evaluated)
            timers[profile.profile_id] = result.next_due_ms
            messages += records(evaluated, result.changes, now_ms, cause)
        store.set_timers(timers)
        return out, self._stash(store, messages)

    def _stash(self, store: OutboxStore, messages: list[Message]) -> Produced:
        if not messages:
            return Produced([])
        self.counts["changes"] = self.counts.get("changes", 0) + len(messages)
        return Produced(messages, store.outbox_put(OUTBOX, pack(messages)))

    def acknowledge(self, store: OutboxStore, produced: Produced) -> None:
        """Forget outbox entries once produced. Several profiles workers share the outbox (on
        Kafka), and acknowledging removes every entry up to a number: only entries this worker
        has produced are acknowledged, up to the first one another worker has not produced
        yet (the rest go at a later acknowledgement, or are re-sent after a restart or a
        rebalance, which is harmless: same ``change_id``)."""
        if produced.outbox_seq is not None:
            self._produced.update(produced.outbox_seqs or (produced.outbox_seq,))
        if not self._produced:
            return
        upto: int | None = None
        for seq, _ in store.outbox_pending(OUTBOX):
            if seq not in self._produced:
                break
            upto = seq
        if upto is not None:
            store.outbox_ack(OUTBOX, upto)
            self._produced = {seq for seq in self._produced if seq > upto}

    @staticmethod
    def unsent(store: OutboxStore) -> Produced:
        """What is stored but may not have been produced (sent again on start and on every
        rebalance: a worker that died leaves its entries to the others)."""
        pending = store.outbox_pending(OUTBOX)
        messages = [m for _, payload in pending for m in unpack(payload)]
        seqs = tuple(seq for seq, _ in pending)
        return Produced(messages, seqs[-1] if seqs else None, seqs)

    # -- timers ---------------------------------------------------------------------------

    def due(
        self, store: ProfileStore, held: HeldProfiles | None = None
    ) -> tuple[list[Profile], list[Profile], Produced] | None:
        """Evaluate the profiles whose timers are due, in one store transaction. Returns (old
        snapshots, evaluated profiles written back, records), or None when no timer was due;
        looks at most every 100 ms. ``held``: profiles the caller keeps in memory, read
        instead of the store where they are current, and told what was written."""
        if self.engine is None or time.monotonic() - self._last_timers < _TIMER_EVERY_S:
            return None
        self._last_timers = time.monotonic()
        now = self.now_ms()
        earliest = store.next_timer()
        if earliest is None or earliest > now:
            return None
        try:
            with store.transaction():
                fired = self._fire(store, now, held.reader(store) if held else store)
                if held is not None and fired is not None:
                    held.settle(store, fired[1])
                return fired
        except BaseException:
            if held is not None:
                held.clear()
            raise

    def _fire(
        self, store: ProfileStore, now: int, reader: ProfileReader
    ) -> tuple[list[Profile], list[Profile], Produced] | None:
        due = store.due_timers(now, _TIMER_BATCH)
        if not due:
            return None
        profiles: dict[str, Profile] = {}
        stale: list[str] = []
        for pid, _ in due:
            profile = reader.get(pid)
            if profile is None:
                stale.append(pid)
            else:
                if profile.profile_id != pid:
                    stale.append(pid)
                profiles[profile.profile_id] = profile
        before = list(profiles.values())
        after, produced = self.evaluate(store, before, profiles, stale, now, cause="timer")
        store.write_back(after, {}, [])
        self.counts["timers_fired"] = self.counts.get("timers_fired", 0) + len(due)
        return before, after, produced

    # -- definitions ----------------------------------------------------------------------

    def reload(
        self,
        store: ProfileStore,
        rules: IdentityRules,
        applied: Callable[[], Mapping[tuple[str, int], int]],
        *,
        force: bool = False,
    ) -> Produced | None:
        """Pick up changed definitions (checked at most once a second): backfill the new ones
        from history, then make them live. Returns the backfill's records, or None when
        nothing changed. A broken definitions directory leaves the live set as it was.
        ``applied`` reads the stage's applied offsets from ``store``: the backfill calls it
        inside its transaction, so that it covers every event any worker of the stage has
        applied, and a worker applying more meanwhile makes the backfill conflict and run
        again rather than overwrite that worker's effects. ``force``: look now (a stage does
        before its first batch)."""
        if self._repo is None:
            return None
        if not force and time.monotonic() - self._last_reload < _RELOAD_EVERY_S:
            return None
        self._last_reload = time.monotonic()
        version = self._repo.version()
        if version == self._version:
            return None
        try:
            catalog = self._repo.catalog()
        except DefinitionError as exc:
            logger.error("audience definitions not reloaded: %s", exc)
            self._version = version
            return None
        # Marked as loaded only once the backfill committed: one that conflicted with
        # another worker is tried again on the next call.
        produced = self._backfill(store, rules, applied, catalog)
        self._version = version
        self.engine = None if not catalog.definitions() else Engine(catalog)
        # Without anything new to backfill (a removal, or a restart) nothing is evaluated
        # now: each profile is on its next event or timer.
        return produced or Produced([])

    def _backfill(
        self,
        store: ProfileStore,
        rules: IdentityRules,
        applied: Callable[[], Mapping[tuple[str, int], int]],
        catalog: AudienceCatalog,
    ) -> Produced | None:
        done = store.load_offsets(BACKFILL_GROUP)
        marks = {backfill_key(d) for d in catalog.definitions()}
        new = [d for d in catalog.definitions() if backfill_key(d) not in done]
        if not new:
            return None
        started = time.perf_counter()
        sub = Engine(
            AudienceCatalog(
                traits=tuple(d for d in catalog.traits if d in new),
                audiences=tuple(d for d in catalog.audiences if d in new),
            )
        )
        engine = Engine(catalog)
        fresh_keys = sub.state_keys
        states: dict[str, dict[str, object]] = {}
        seen = 0
        table = rules.table()
        with store.transaction():
            upto = applied()
            history = self._history.events(upto, sub.relevant) if self._history else ()
            for event in history:
                seen += 1
                pid = _owner(store, rules, table, event)
                if pid is None:
                    continue
                time_ms = int(parse_time(event.timestamp).timestamp() * 1000)
                current = states.get(pid, {})
                states[pid] = sub.observe(current, event, time_ms) or current
            now = self.now_ms()
            timers: dict[str, int | None] = {}
            messages: list[Message] = []
            after: str | None = None
            while page := store.scan(after, _SCAN_PAGE):
                after = page[-1].profile_id
                updated = []
                for profile in page:
                    computed = _with_states(
                        profile.computed, fresh_keys, states.get(profile.profile_id, {})
                    )
                    result = engine.evaluate(profile.traits, computed, now)
                    evaluated = replace(profile, computed=result.computed)
                    updated.append(evaluated)
                    timers[profile.profile_id] = result.next_due_ms
                    messages += records(evaluated, result.changes, now, "backfill")
                store.write_back(updated, {}, [])
            store.set_timers(timers)
            store.save_offsets(BACKFILL_GROUP, {mark: now for mark in marks if mark not in done})
            produced = self._stash(store, messages)
        logger.info(
            "backfilled %s from %d events in %.1f s",
            ", ".join(d.name for d in new),
            seen,
            time.perf_counter() - started,
        )
        self.counts["backfilled_events"] = self.counts.get("backfilled_events", 0) + seen
        return produced


def _owner(
    store: ProfileReader, rules: IdentityRules, table: RuleTable, event: Event
) -> str | None:
    for ident in extract(event, rules, table=table).identifiers:
        owner = store.lookup(ident.id_type, ident.value)
        if owner is not None:
            return owner
    return None


def _with_states(
    computed: dict[str, object], keys: set[str], states: Mapping[str, object]
) -> dict[str, object]:
    """``computed`` with the engine states under ``keys`` replaced by those in ``states``
    (the backfilled ones; a key absent there is cleared)."""
    old = computed.get(STATE)
    current = old if isinstance(old, dict) else {}
    fresh = states.get(STATE)
    fresh_state = fresh if isinstance(fresh, dict) else {}
    merged: dict[str, object] = dict(current)
    for part in ("t", "f"):
        mine = current.get(part)
        bucket = {
            k: v for k, v in (mine if isinstance(mine, dict) else {}).items() if k not in keys
        }
        theirs = fresh_state.get(part)
        bucket.update(theirs if isinstance(theirs, dict) else {})
        merged[part] = bucket
    return {**computed, STATE: merged}
