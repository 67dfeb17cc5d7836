"""Profiles workers sharing one change outbox (several workers on Kafka): a worker only
acknowledges what it produced, so another worker's stored-but-unsent records survive until
that worker sends them, or until a restart or rebalance re-sends them."""

from __future__ import annotations

from clew.audiences.live import OUTBOX, LiveAudiences, Produced
from clew.clock import ManualClock
from clew.log.base import Message
from clew.store.memory import MemoryProfileStore


def put(store: MemoryProfileStore, live: LiveAudiences, text: bytes) -> Produced:
    return live._stash(store, [Message(value=text, key=b"p")])


def pending(store: MemoryProfileStore) -> list[int]:
    return [seq for seq, _ in store.outbox_pending(OUTBOX)]


def test_a_worker_never_acknowledges_what_another_has_not_sent() -> None:
    store = MemoryProfileStore()
    a, b = LiveAudiences(None, ManualClock()), LiveAudiences(None, ManualClock())
    from_a = put(store, a, b"a1")
    from_b = put(store, b, b"b1")
    b.acknowledge(store, from_b)  # b sent its record; a's is stored but not sent yet
    assert pending(store) == [from_a.outbox_seq, from_b.outbox_seq]
    a.acknowledge(store, from_a)
    assert pending(store) == [from_b.outbox_seq]
    b.acknowledge(store, Produced([]))  # b's next look (the stage does it every tick)
    assert pending(store) == []


def test_a_dead_workers_records_are_resent_by_the_next_start() -> None:
    store = MemoryProfileStore()
    dead, other = LiveAudiences(None, ManualClock()), LiveAudiences(None, ManualClock())
    put(store, dead, b"lost?")
    sent = put(store, other, b"ok")
    other.acknowledge(store, sent)
    assert len(pending(store)) == 2
    resent = LiveAudiences.unsent(store)
    assert [m.value for m in resent.messages] == [b"lost?", b"ok"]
    other.acknowledge(store, resent)
    assert pending(store) == []
