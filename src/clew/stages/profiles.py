"""The profiles stage (group ``profiles``): resolves every event of the ``events`` topic to a
profile in the serving store (identity graph, traits, purchase totals, recent history) and
announces each touched profile on the ``changes`` topic.

Exactly once: each polled batch is applied in one serving-store transaction that also
records, per log partition, the last offset applied. After a crash the log redelivers from
its own committed offset, which may be behind the store's: records the store already applied
are not applied again (an order is never counted twice), only their profiles are announced
again, which consumers of snapshots absorb.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from clew.events import Event, parse_time
from clew.identity.changes import deleted, encode_change, snapshot
from clew.identity.unifier import Unifier
from clew.log.base import Consumer, Message, Record, TopicPartition
from clew.log.factory import CHANGES_TOPIC, EVENTS_TOPIC
from clew.stages.base import Stage
from clew.store.base import ProfileStore

logger = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Event)


def _now() -> datetime:
    return datetime.now(UTC)


def _time_key(timestamp: str) -> datetime:
    return parse_time(timestamp).astimezone(UTC)


class ProfilesStage(Stage):
    group = "profiles"
    topics = (EVENTS_TOPIC,)
    max_poll_records = 500

    def __init__(
        self, store: ProfileStore, unifier: Unifier, clock: Callable[[], datetime] = _now
    ) -> None:
        self._store = store
        self._unifier = unifier
        self._clock = clock
        self._applied: dict[tuple[str, int], int] = {}
        self.counts: Counter[str] = Counter()

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        self._applied = self._store.load_offsets(self.group)

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        if not records:
            return
        # Separations change only when an operator splits a profile; reloading them per batch
        # makes a split effective from the next batch on.
        self._unifier.refresh_separations()
        touched: dict[str, None] = {}
        progress: dict[tuple[str, int], int] = {}
        counts: Counter[str] = Counter()
        batch: list[tuple[Record, Event]] = []
        for rec in records:
            tp = (rec.topic, rec.partition)
            progress[tp] = max(rec.offset, progress.get(tp, -1))
            try:
                batch.append((rec, _decoder.decode(rec.value)))
            except msgspec.DecodeError as exc:
                logger.error("skipping undecodable event at %s/%d@%d: %s", *tp, rec.offset, exc)
                counts["undecodable"] += 1
        # A poll interleaves partitions; applying its events in event-time order (ties in
        # arrival order) brings the speed layer closer to the batch layer's order.
        batch.sort(key=lambda item: _time_key(item[1].timestamp))
        with self._store.transaction():
            for rec, event in batch:
                tp = (rec.topic, rec.partition)
                if rec.offset <= self._applied.get(tp, -1):
                    pid = self._unifier.profile_of(event)
                    counts["already_applied"] += 1
                else:
                    outcome = self._unifier.apply(event, rec.value)
                    pid = outcome.profile_id
                    counts["applied"] += 1
                    counts["merges"] += len(outcome.resolution.merged_from)
                    counts["dropped_identifiers"] += len(outcome.resolution.dropped)
                    touched.update(dict.fromkeys(outcome.resolution.merged_from))
                    if pid is None:
                        counts["unresolved"] += 1
                if pid is not None:
                    touched[pid] = None
            fresh = {tp: off for tp, off in progress.items() if off > self._applied.get(tp, -1)}
            if fresh:
                self._store.save_offsets(self.group, fresh)
            messages = self._announce(touched)
        self._applied.update(fresh)
        self.counts.update(counts)
        consumer.commit(
            {tp: off + 1 for tp, off in progress.items()}, produce={CHANGES_TOPIC: messages}
        )

    def _announce(self, touched: dict[str, None]) -> list[Message]:
        now = self._clock()
        messages: list[Message] = []
        for pid in touched:
            live = self._store.resolve(pid)
            if live != pid:
                change = encode_change(deleted(pid, live, now))
                messages.append(Message(value=change, key=pid.encode()))
                continue
            profile = self._store.get(pid)
            if profile is not None:
                change = encode_change(snapshot(profile, now))
                messages.append(Message(value=change, key=pid.encode()))
        return messages
