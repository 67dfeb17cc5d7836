"""The profiles stage (group ``profiles``): resolves every event of the ``events`` topic to a
profile in the serving store (identity graph, traits, purchase totals, recent history) and
announces each touched profile on the ``changes`` topic.

Each polled batch is resolved in memory: the profiles its events' identifiers reach are
loaded from the serving store in bulk into a working set, the unifier runs over that, and the
result is written back in bulk. One event at a time against the store would cost dozens of
store round trips per event.

Exactly once: the write-back of a batch is one serving-store transaction that also records,
per log partition, the last offset applied. After a crash the log redelivers from
its own committed offset, which may be behind the store's: records the store already applied
are not applied again (an order is never counted twice), only their profiles are announced
again, which consumers of snapshots absorb. Each batch reads those offsets from the store
afresh: a worker that did not hear of a partition leaving it and coming back (two rebalances
between its looks at the assignment) must not trust what it knew of the partition before.
"""

from __future__ import annotations

import atexit
import gc
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter

import msgspec

from clew.audiences.live import LiveAudiences, Produced
from clew.clock import Clock, SystemClock, to_datetime
from clew.events import Event, parse_time
from clew.identity.changes import deleted, encode_change, snapshot
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID, Extraction, extract
from clew.identity.repair import Unrepairable, repair
from clew.identity.resolver import Resolution
from clew.identity.rules import IdentityRules
from clew.identity.traits import CONTESTED, TraitPolicy
from clew.identity.unifier import Unifier
from clew.identity.working_set import WorkingSet
from clew.log.base import Consumer, Message, Record, TopicPartition
from clew.stages._counters import CounterStore
from clew.stages.base import Stage
from clew.store.base import Profile, ProfileStore
from clew.store.memory import MemoryProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

logger = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Event)
_COUNTER_FLUSH_S = 1.0
# How long objects may stay out of the cyclic garbage collector's reach (see _settle_heap).
_GC_UNFREEZE_S = 60.0


def _time_key(timestamp: str) -> datetime:
    return parse_time(timestamp).astimezone(UTC)


class ProfilesStage(Stage):
    group = "profiles"
    topics = (EVENTS_TOPIC,)
    # Polls return what is there, so batches are small when the stage keeps up; under load
    # a larger one spreads the transaction's commit over more events, and a profile that
    # several of its events touch is evaluated for audiences once. 5,000 against 2,000 took
    # 12-20% less CPU per event with 20 traits and 20 audiences (bench/audiences.py).
    max_poll_records = 5000

    def __init__(
        self,
        store: ProfileStore,
        rules: IdentityRules | None = None,
        traits: TraitPolicy | None = None,
        clock: Clock | None = None,
        counter_store: CounterStore | None = None,
        audiences: LiveAudiences | None = None,
    ) -> None:
        self._store = store
        self._counter_store = counter_store
        self._unflushed: Counter[str] = Counter()
        self._last_flush = 0.0
        self._last_unfreeze = time.monotonic()
        self._unfreeze_at_exit = False
        self._rules = rules if rules is not None else IdentityRules()
        self._traits = traits if traits is not None else TraitPolicy()
        self._clock = clock if clock is not None else SystemClock()
        self.audiences = audiences if audiences is not None else LiveAudiences(None, self._clock)
        self.counts: Counter[str] = Counter()
        self._table = self._rules.table()
        self._work = WorkingSet(store.history)

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        self._work.clear()
        # Change records an earlier run committed to the store but may not have produced.
        self._produce(consumer, LiveAudiences.unsent(self._store))
        # The definitions must be live before the first batch, or its events would miss them.
        reloaded = self.audiences.reload(self._store, self._rules, self._offsets, force=True)
        if reloaded is not None:
            self._produce(consumer, reloaded)

    def _offsets(self) -> dict[tuple[str, int], int]:
        """The offsets every worker of the stage has applied, as the store has them."""
        return self._store.load_offsets(self.group)

    def tick(self, consumer: Consumer) -> None:
        live = self.audiences
        reloaded = live.reload(self._store, self._rules, self._offsets)
        if reloaded is not None:
            self._produce(consumer, reloaded)
        fired = live.due(self._store, self._work)
        if fired is not None:
            _, after, produced = fired
            now = to_datetime(live.now_ms())
            snapshots = [
                Message(value=encode_change(snapshot(p, now)), key=p.profile_id.encode())
                for p in after
            ]
            self._produce(
                consumer,
                Produced(snapshots + produced.messages, produced.outbox_seq, produced.outbox_seqs),
            )
        # Entries this worker produced that another worker's unsent entry held back.
        live.acknowledge(self._store, Produced([]))
        for name, n in live.counts.items():
            self.counts[f"audience_{name}"] += n
            self._unflushed[f"audience_{name}"] += n
        live.counts.clear()
        if time.monotonic() - self._last_flush > _COUNTER_FLUSH_S:
            self._flush_counters()
        if time.monotonic() - self._last_unfreeze > _GC_UNFREEZE_S:
            gc.unfreeze()
            self._last_unfreeze = time.monotonic()

    def _produce(self, consumer: Consumer, produced: Produced) -> None:
        if produced.messages:
            consumer.commit({}, produce={CHANGES_TOPIC: produced.messages})
        self.audiences.acknowledge(self._store, produced)

    def close(self, consumer: Consumer) -> None:
        self._flush_counters()
        gc.unfreeze()

    def _flush_counters(self) -> None:
        if self._counter_store is not None and self._unflushed:
            self._counter_store.add(self.group, self._unflushed)
        self._unflushed = Counter()
        self._last_flush = time.monotonic()

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        if not records:
            return
        started = time.perf_counter_ns()
        counts: Counter[str] = Counter()
        progress, batch, times = _decode_batch(records, counts)

        # The batch is loaded, resolved in memory and written back with the offsets inside
        # one store transaction, so that no other writer (a split, a deletion) can commit in
        # between and be overwritten by a stale working set.
        touched: dict[str, None] = {}
        seeds: set[str] = set()
        # What the store has applied, read for each batch: another worker may have applied
        # records of these partitions since this one last owned them, and its log commit may
        # not have followed (it died in between). Applying them again would count an order
        # twice, and saving this batch's offsets would move the store's back.
        applied = self._store.load_offsets(self.group)
        fresh = {tp: off for tp, off in progress.items() if off > applied.get(tp, -1)}
        live = self.audiences
        work = self._work
        extractions, keys = self._extract(batch)
        try:
            with self._store.transaction():
                now_ms = live.now_ms()
                now = to_datetime(now_ms)
                work.begin(self._store, keys)
                unifier = Unifier(work.store, self._rules, self._traits, engine=live.engine)
                # Separations change only when an operator splits a profile.
                unifier.resolver.set_separations(self._store.separations())
                for (rec, event), extraction, time_ms in zip(
                    batch, extractions, times, strict=True
                ):
                    if rec.offset <= applied.get((rec.topic, rec.partition), -1):
                        pid = unifier.profile_of(event)
                        counts["already_applied"] += 1
                    else:
                        pid = _apply_event(
                            work, unifier, (rec, event, time_ms), extraction, counts, touched, seeds
                        )
                    if pid is not None:
                        touched[pid] = None
                profiles, gone, history = work.result(touched)
                heirs = set(gone.values())
                profiles, produced = live.evaluate(
                    self._store, profiles, touched, gone, now_ms, heirs=heirs
                )
                work.adopt(profiles)
                self._store.write_back(profiles, gone, history, work.moved)
                if seeds:
                    replaced, written, more = self._repair(seeds, counts, now_ms)
                    profiles = [p for p in profiles if p.profile_id not in replaced] + written
                    touched.update(dict.fromkeys(replaced))
                    touched.update(dict.fromkeys(p.profile_id for p in written))
                    produced = _combined(produced, more)
                if fresh:
                    self._store.save_offsets(self.group, fresh)
                if seeds:
                    # A repair rewrote profiles in the store directly.
                    work.clear()
                else:
                    work.finish(self._store)
        except BaseException:
            # The transaction rolled back: the working set is ahead of the store.
            work.clear()
            raise
        self._count(counts, started)
        # After a repair, the store knows best where a merged-away id leads.
        known = {} if seeds else gone
        messages = self._announce(touched, self._store, profiles, known, now) + produced.messages
        consumer.commit(
            {tp: off + 1 for tp, off in progress.items()}, produce={CHANGES_TOPIC: messages}
        )
        self.audiences.acknowledge(self._store, produced)
        if not self._unfreeze_at_exit:
            # The interpreter's last collection must see every object again.
            atexit.register(gc.unfreeze)
            self._unfreeze_at_exit = True
        _settle_heap()

    def _count(self, counts: Counter[str], started_ns: int) -> None:
        counts["batches"] += 1
        counts["batch_us"] += (time.perf_counter_ns() - started_ns) // 1000
        self.counts.update(counts)
        self._unflushed.update(counts)

    def _repair(
        self, seeds: set[str], counts: Counter[str], now_ms: int
    ) -> tuple[set[str], list[Profile], Produced]:
        """Re-derive the contested components ``seeds`` reach, in event-time order (see
        :mod:`clew.identity.repair`), inside the batch's transaction; returns the ids of the
        profiles replaced, the re-derived profiles (evaluated for audiences) and their
        audience records."""
        replaced: set[str] = set()
        written: list[Profile] = []
        produced = Produced([])
        live = self.audiences
        for seed in sorted(seeds):
            if seed in replaced:
                continue
            try:
                done = repair(self._store, [seed], self._rules, self._traits, live.engine, now_ms)
            except Unrepairable as exc:
                counts["repairs_skipped"] += 1
                logger.info("profile %s keeps its arrival-order identity: %s", seed, exc)
                continue
            counts["repairs"] += 1
            replaced.update(p.profile_id for p in done.replaced)
            replaced.update(done.retired)
            heirs = {p.profile_id for p in done.written}
            after, more = live.evaluate(
                self._store, done.written, heirs, done.retired, now_ms, heirs=heirs
            )
            if live.engine is not None:
                self._store.write_back(after, {}, [])
            ids = {p.profile_id for p in after}
            written = [p for p in written if p.profile_id not in ids] + after
            produced = _combined(produced, more)
        return replaced, written, produced

    def _extract(
        self, batch: list[tuple[Record, Event]]
    ) -> tuple[list[Extraction], set[tuple[str, str]]]:
        """Each event's identifiers, and every identifier the batch may look up."""
        keys: set[tuple[str, str]] = set()
        extractions: list[Extraction] = []
        table = self._table
        for _, event in batch:
            found = extract(event, self._rules, table=table)
            extractions.append(found)
            keys.update((i.id_type, i.value) for i in found.identifiers)
            if found.link is not None:
                keys.add((found.link.id_type, found.link.value))
            if event.type == "alias" and event.previous_id:
                keys.add((USER_ID, event.previous_id.strip()))
                keys.add((ANONYMOUS_ID, event.previous_id.strip()))
        return extractions, keys

    def _announce(
        self,
        touched: dict[str, None],
        store: ProfileStore,
        profiles: list[Profile],
        gone: dict[str, str],
        now: datetime,
    ) -> list[Message]:
        """Snapshots of the touched profiles, stamped with the time taken inside the batch's
        transaction (so a later writer's changes are always stamped later)."""
        by_id = {p.profile_id: p for p in profiles}
        messages: list[Message] = []
        for pid in touched:
            profile = by_id.get(pid)
            if profile is None:
                into = gone[pid] if pid in gone else store.resolve(pid)
                change = encode_change(deleted(pid, into, now))
                messages.append(Message(value=change, key=pid.encode()))
            else:
                change = encode_change(snapshot(profile, now))
                messages.append(Message(value=change, key=pid.encode()))
        return messages


def _settle_heap() -> None:
    """After a batch: move every object alive now out of the cyclic garbage collector's
    generations. The working set keeps up to tens of thousands of profiles alive (millions of
    objects) from batch to batch, and the collector rescanned them all again and again (a
    third of the stage's time, measured). They are still freed by reference counting; only
    cyclic garbage made before this call waits until :meth:`ProfilesStage.tick` gives the
    objects back to the collector (every minute)."""
    gc.freeze()


def _decode_batch(
    records: list[Record], counts: Counter[str]
) -> tuple[dict[tuple[str, int], int], list[tuple[Record, Event]], list[int]]:
    """The last offset of each partition in the poll, its events decoded, in event-time
    order (an undecodable one is logged, counted and skipped), and their times (epoch ms)."""
    progress: dict[tuple[str, int], int] = {}
    decoded: list[tuple[datetime, Record, Event]] = []
    for rec in records:
        tp = (rec.topic, rec.partition)
        progress[tp] = max(rec.offset, progress.get(tp, -1))
        try:
            event = _decoder.decode(rec.value)
        except msgspec.DecodeError as exc:
            logger.error("skipping undecodable event at %s/%d@%d: %s", *tp, rec.offset, exc)
            counts["undecodable"] += 1
            continue
        decoded.append((_time_key(event.timestamp), rec, event))
    # A poll interleaves partitions; applying its events in event-time order (ties in
    # arrival order) brings the speed layer closer to the batch layer's order.
    decoded.sort(key=itemgetter(0))
    batch = [(rec, event) for _, rec, event in decoded]
    return progress, batch, [int(at.timestamp() * 1000) for at, _, _ in decoded]


def _apply_event(
    work: WorkingSet,
    unifier: Unifier,
    item: tuple[Record, Event, int],
    extraction: Extraction,
    counts: Counter[str],
    touched: dict[str, None],
    seeds: set[str],
) -> str | None:
    """Apply one event not applied before to the working set: its profile id (None when
    unresolved); the profiles it merged away go to ``touched``, and the profiles whose
    identity arrival order may have decided to ``seeds``."""
    rec, event, time_ms = item
    owners: set[str] = set()
    late = False
    if work.may_be_late(time_ms):
        owners = _owners(work.store, event, extraction)
        late = any((seen := work.store.peek(o)) is not None and seen[0] > time_ms for o in owners)
    outcome = unifier.apply(event, rec.value, extraction, time_ms=time_ms)
    pid = outcome.profile_id
    if late and _contested(work.store, owners, pid, outcome.resolution):
        # Its identity may have been decided by arrival order: re-derive the profiles
        # involved in event-time order after the batch.
        seeds.update(owners)
        if pid is not None:
            seeds.add(pid)
    counts["applied"] += 1
    counts["merges"] += len(outcome.resolution.merged_from)
    counts["dropped_identifiers"] += len(outcome.resolution.dropped)
    # A profile created and merged away within this batch was never seen outside it:
    # nothing to announce.
    touched.update(dict.fromkeys(m for m in outcome.resolution.merged_from if work.known(m)))
    if pid is None:
        counts["unresolved"] += 1
    return pid


def _owners(store: MemoryProfileStore, event: Event, extraction: Extraction) -> set[str]:
    """The profiles that own any identifier the event carries (an alias's ``previousId`` as
    either type)."""
    keys = [(i.id_type, i.value) for i in extraction.identifiers]
    if extraction.link is not None:
        keys.append((extraction.link.id_type, extraction.link.value))
    if event.type == "alias" and event.previous_id:
        value = event.previous_id.strip()
        keys += [(USER_ID, value), (ANONYMOUS_ID, value)]
    return {o for key in keys if (o := store.lookup(*key)) is not None}


def _contested(
    store: MemoryProfileStore, owners: set[str], pid: str | None, resolution: Resolution
) -> bool:
    """Whether a rule refused one of the event's identifiers, or a profile it reached is
    contested: then the order it arrived in may have decided its identity."""
    if resolution.refused:
        return True
    for o in (*owners, pid):
        seen = store.peek(o) if o is not None else None
        if seen is not None and seen[1].get(CONTESTED):
            return True
    return False


def _combined(a: Produced, b: Produced) -> Produced:
    seqs = tuple(
        seq
        for p in (a, b)
        for seq in (p.outbox_seqs or ((p.outbox_seq,) if p.outbox_seq is not None else ()))
    )
    return Produced(a.messages + b.messages, seqs[-1] if seqs else None, seqs)
