"""Each profile's recent events over a Redis transaction (used by ``clew.store.redis``): a
sorted set per profile, scored by ``seq`` from one store-wide counter; appending, trimming to
the store's ``history``, reading newest first, deleting by time. Nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence

from clew.store import _redis_graph as graph
from clew.store._redis_keys import Keys, decode_event, encode_event
from clew.store._redis_tx import Tx
from clew.store.base import StoredEvent


def add_event(tx: Tx, k: Keys, profile_id: str, event: StoredEvent, keep: int) -> None:
    append(tx, k, [(graph.live(tx, k, profile_id), event)], keep)


def events(tx: Tx, k: Keys, profile_id: str, limit: int, before: int | None) -> list[StoredEvent]:
    live = graph.resolve(tx, k, profile_id, also=[(k.hist(profile_id), "zset")])
    if live is None:
        return []
    tx.fetch([(k.hist(live), "zset")])
    newest_first = sorted(tx.zset(k.hist(live)).items(), key=lambda ms: -ms[1])
    picked = [m for m, s in newest_first if before is None or s < before]
    return [decode_event(m) for m in picked[:limit]]


def delete_history(
    tx: Tx, k: Keys, profile_id: str, since_ms: int | None, until_ms: int | None
) -> int:
    live = graph.resolve(tx, k, profile_id)
    if live is None:
        return 0
    key = k.hist(live)
    tx.fetch([(key, "zset")])
    doomed = [
        member
        for member in tx.zset(key)
        if _within(decode_event(member).time_ms, since_ms, until_ms)
    ]
    if doomed:
        tx.zrem(key, doomed)
    return len(doomed)


def append(tx: Tx, k: Keys, events: Sequence[tuple[str, StoredEvent]], keep: int) -> None:
    """Append ``(live profile id, event)`` pairs, oldest first, to the histories, keeping the
    ``keep`` newest of each. Seqs come from one store-wide counter, handed out in the order
    given, so that they order every history (and histories merged later) by arrival."""
    if not events:
        return
    seq = int(tx.call("INCRBY", k.sequence, len(events))) - len(events)
    members: dict[str, dict[bytes, float]] = {}
    for pid, event in events:
        seq += 1
        members.setdefault(pid, {})[encode_event(seq, event)] = float(seq)
    for pid, new in members.items():
        tx.zadd(k.hist(pid), new)
        tx.ztrim(k.hist(pid), keep)


def _within(time_ms: int, since_ms: int | None, until_ms: int | None) -> bool:
    return (since_ms is None or time_ms >= since_ms) and (until_ms is None or time_ms < until_ms)
