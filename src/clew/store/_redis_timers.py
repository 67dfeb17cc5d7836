"""Timers and outboxes of the Redis serving store (used by ``clew.store.redis``), over one
transaction (nothing here commits). Keys: ``clew.store._redis_keys``.

A timer is kept twice, written together: in the store-wide sorted set that finds due timers,
and in a string under the profile's hash tag. ``due`` reads the candidates from the sorted set
without watching it (every writer adds to it) and then watches each candidate's string, so a
block that works a timer fails whole if another writer replaced or worked that timer first:
two workers never both commit one timer's work.

An outbox's sequence counter is read and watched, not incremented outside the transaction, so
that payloads of one group commit in sequence order: a payload never appears below a sequence
number already acknowledged. Blocks putting to one group at once therefore conflict; a group
per writer avoids that. Pending payloads are read without watching (one reader per group).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from clew.store._redis_keys import Keys, decode_outbox, encode_outbox
from clew.store._redis_tx import Tx


def set_timers(tx: Tx, k: Keys, due: Mapping[str, int | None]) -> None:
    for pid, ms in due.items():
        if ms is not None:
            tx.set(k.timer(pid), b"%d" % ms)
    tx.zadd(k.timers, {pid.encode(): float(ms) for pid, ms in due.items() if ms is not None})
    drop(tx, k, [pid for pid, ms in due.items() if ms is None])


def drop(tx: Tx, k: Keys, profile_ids: Collection[str]) -> None:
    """Remove the timers of ``profile_ids`` (those they have)."""
    for pid in profile_ids:
        tx.delete(k.timer(pid))
    tx.zrem(k.timers, [pid.encode() for pid in profile_ids])


def due(tx: Tx, k: Keys, now_ms: int, limit: int) -> list[tuple[str, int]]:
    ids = [m.decode() for m, _ in tx.score_range(k.timers, now_ms, limit)]
    tx.fetch([(k.timer(pid), "str") for pid in ids])
    out = []
    for pid in ids:
        # The string is the watched truth: the sorted set was read earlier, unwatched.
        raw = tx.string(k.timer(pid))
        if raw is not None and int(raw) <= now_ms:
            out.append((int(raw), pid))
    return [(pid, ms) for ms, pid in sorted(out)]


def earliest(tx: Tx, k: Keys) -> int | None:
    first = tx.score_range(k.timers, None, 1)
    return int(first[0][1]) if first else None


def put(tx: Tx, k: Keys, group: str, payload: bytes) -> int:
    key = k.outbox_seq(group)
    tx.fetch([(key, "str")])
    seq = int(tx.string(key) or 0) + 1
    tx.set(key, b"%d" % seq)
    tx.zadd(k.outbox(group), {encode_outbox(seq, payload): float(seq)})
    return seq


def pending(tx: Tx, k: Keys, group: str, limit: int) -> list[tuple[int, bytes]]:
    return [decode_outbox(m) for m, _ in tx.score_range(k.outbox(group), None, limit)]


def ack(tx: Tx, k: Keys, group: str, seq: int) -> None:
    tx.zcut(k.outbox(group), seq)
