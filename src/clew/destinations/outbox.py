"""The outbox (``data_dir/destinations.db``): per destination, the records waiting to be sent,
the batch being sent, the history of finished deliveries, the dead letters, the destinations
stage's log offsets and the counters behind ``/metrics``.

Several threads and processes use the file at once (the stage, one sender per destination,
`clew destinations` commands); each opens its own :class:`Outbox`. Every change is one SQLite
transaction, so the state never tears: a record is either waiting, in exactly one batch, or in
the dead-letter store.

Batches: a sender forms a batch from the oldest waiting records of its destination and gives
it a delivery id, then tries it until it is delivered or dead-lettered. A batch keeps its
records and its id across retries and restarts (and across ``replay``), so a receiver can drop
a repeat by the ``X-Clew-Delivery`` header.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from clew._sqlite import open_sqlite, transaction
from clew.destinations._schema import SCHEMA

# Finished deliveries kept per destination for `clew destinations deliveries`.
HISTORY_ROWS = 1000

DELIVERED = "delivered"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
OUTBOX_FULL = "outbox_full"

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
# Free texts that may quote a receiver's answer: (table, column, key column).
_TEXTS = (
    ("batches", "last_error", "delivery_id"),
    ("deliveries", "error", "seq"),
    ("dead_letters", "reason", "delivery_id"),
)
_FORGOTTEN = "(removed: it named a person who was erased)"


@dataclass(slots=True, frozen=True)
class Batch:
    """A batch being delivered: its records stay in the outbox until it is finished."""

    delivery_id: str
    dest: str
    events: int
    attempts: int
    first_attempt_ms: int | None
    next_attempt_ms: int
    last_status: int | None = None
    last_error: str | None = None


@dataclass(slots=True, frozen=True)
class Delivery:
    delivery_id: str
    dest: str
    events: int
    outcome: str
    status: int | None
    attempts: int
    error: str | None
    first_attempt_ms: int | None
    finished_ms: int


@dataclass(slots=True, frozen=True)
class UndeliverableBatch:
    """A batch the destination refused or that expired, kept in the outbox's ``dead_letters``
    table until it is redriven or purged. Not a :class:`clew.dlq.records.DeadLetter` (an event
    Clew itself refused)."""

    delivery_id: str
    dest: str
    events: int
    reason: str
    status: int | None
    attempts: int
    failed_ms: int


def join_array(payloads: Sequence[bytes]) -> bytes:
    """The JSON array of ``payloads`` (each already a JSON document)."""
    return b"[" + b",".join(payloads) + b"]"


class Outbox:
    """One connection to the outbox file; use it from one thread."""

    def __init__(self, path: Path) -> None:
        self._db = open_sqlite(path, SCHEMA)
        # Delivered and forgotten records are zeroed in the file, not left in free pages.
        self._db.execute("PRAGMA secure_delete = ON")
        # Per destination, an upper bound of its outbox size as this connection last saw it
        # plus what it added since: senders only ever shrink an outbox, so the bound is safe,
        # and the real count (a scan of the backlog) is needed only near the limit.
        self._size_bound: dict[str, int] = {}

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    def _count(self, dest: str, deltas: Mapping[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (dest, name) "
            "DO UPDATE SET value = value + excluded.value",
            [(dest, name, n) for name, n in deltas.items() if n],
        )

    # The destinations stage.

    def since(self, names: Iterable[str], now_ms: int) -> dict[str, int]:
        """Per destination, when the stage first saw it (``now_ms`` for one it sees now)."""
        names = list(names)
        with self._tx() as db:
            db.executemany(
                "INSERT INTO destinations VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                [(n, now_ms) for n in names],
            )
            rows = db.execute("SELECT name, since_ms FROM destinations").fetchall()
        wanted = set(names)
        return {n: s for n, s in rows if n in wanted}

    def known(self) -> dict[str, int]:
        """Per destination the stage has picked up, since when (ms)."""
        return dict(self._db.execute("SELECT name, since_ms FROM destinations").fetchall())

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the next offset the stage has not yet enqueued."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM offsets")
        return {(t, p): o for t, p, o in rows}

    def enqueue(
        self,
        items: Mapping[str, Sequence[bytes]],
        offsets: Mapping[tuple[str, int], int],
        counts: Mapping[tuple[str, str], int],
        limits: Mapping[str, int],
        now_ms: int,
    ) -> dict[str, int]:
        """Add records to destinations' outboxes, record the stage's ``offsets`` and add to
        the ``counts`` (destination, counter), in one transaction. Records beyond a
        destination's ``limits`` go to its dead-letter store (reason ``outbox_full``) so that a
        stuck destination holds up nobody; returns how many per destination."""
        spilled: dict[str, int] = {}
        with self._tx() as db:
            for dest, payloads in items.items():
                if not payloads:
                    continue
                waiting = self._size_bound.get(dest)
                if waiting is None or waiting + len(payloads) > limits[dest]:
                    (waiting,) = db.execute(
                        "SELECT count(*) FROM items WHERE dest = ?", (dest,)
                    ).fetchone()
                room = max(0, limits[dest] - waiting)
                self._size_bound[dest] = waiting + min(room, len(payloads))
                db.executemany(
                    "INSERT INTO items (dest, batch, enqueued_ms, payload) VALUES (?, NULL, ?, ?)",
                    [(dest, now_ms, p) for p in payloads[:room]],
                )
                spill = payloads[room:]
                if spill:
                    spilled[dest] = len(spill)
                    reason = (
                        f"outbox full: {limits[dest]} events were already waiting; once the "
                        f"destination keeps up, `clew destinations replay {dest}` sends these"
                    )
                    db.execute(
                        "INSERT INTO dead_letters (delivery_id, dest, events, items, reason, "
                        "status, attempts, failed_ms) VALUES (?, ?, ?, ?, ?, NULL, 0, ?)",
                        (str(uuid.uuid4()), dest, len(spill), join_array(spill), reason, now_ms),
                    )
                    self._count(
                        dest,
                        {"deliveries:" + OUTBOX_FULL: 1, "events:" + DEAD_LETTERED: len(spill)},
                    )
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                [(t, p, o) for (t, p), o in offsets.items()],
            )
            db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (dest, name) "
                "DO UPDATE SET value = value + excluded.value",
                [(dest, name, n) for (dest, name), n in counts.items() if n],
            )
        return spilled

    # A destination's sender.

    def head(self, dest: str) -> Batch | None:
        """The batch ``dest`` is delivering (the oldest unfinished one), if any."""
        row = self._db.execute(
            "SELECT delivery_id, dest, events, attempts, first_attempt_ms, next_attempt_ms, "
            "last_status, last_error FROM batches WHERE dest = ? ORDER BY seq LIMIT 1",
            (dest,),
        ).fetchone()
        return Batch(*row) if row else None

    def form_batch(self, dest: str, size: int, max_wait_ms: int, now_ms: int) -> Batch | int | None:
        """A new batch of the oldest waiting records of ``dest`` when ``size`` of them wait or
        the oldest has waited ``max_wait_ms``; otherwise the time (ms) at which the oldest will
        have waited that long, or None when nothing waits."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, enqueued_ms FROM items WHERE dest = ? AND batch IS NULL "
                "ORDER BY id LIMIT ?",
                (dest, size),
            ).fetchall()
            if not rows:
                return None
            due = rows[0][1] + max_wait_ms
            if len(rows) < size and due > now_ms:
                return int(due)
            delivery_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO batches (delivery_id, dest, events, created_ms) VALUES (?, ?, ?, ?)",
                (delivery_id, dest, len(rows), now_ms),
            )
            db.execute(
                "UPDATE items SET batch = ? WHERE dest = ? AND batch IS NULL AND id <= ?",
                (delivery_id, dest, rows[-1][0]),
            )
        return Batch(delivery_id, dest, len(rows), 0, None, 0)

    def payloads(self, batch: Batch) -> list[bytes]:
        rows = self._db.execute(
            "SELECT payload FROM items WHERE dest = ? AND batch = ? ORDER BY id",
            (batch.dest, batch.delivery_id),
        )
        return [bytes(p) for (p,) in rows]

    def retry_later(
        self,
        batch: Batch,
        first_attempt_ms: int,
        next_attempt_ms: int,
        status: int | None,
        error: str,
    ) -> None:
        """One more failed attempt of ``batch``; the next is due at ``next_attempt_ms``."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE batches SET attempts = attempts + 1, first_attempt_ms = ?, "
                "next_attempt_ms = ?, last_status = ?, last_error = ? WHERE delivery_id = ?",
                (first_attempt_ms, next_attempt_ms, status, error, batch.delivery_id),
            )
            if cur.rowcount:
                self._count(batch.dest, {"deliveries:" + RETRIED: 1})

    def finish(
        self,
        batch: Batch,
        outcome: str,
        first_attempt_ms: int,
        status: int | None,
        error: str | None,
        now_ms: int,
    ) -> bool:
        """Close ``batch`` as ``delivered`` (its records leave the outbox) or
        ``dead_lettered`` (they move to the dead-letter store with ``error`` as the reason).
        False when the batch was no longer there (its destination was removed meanwhile)."""
        attempts = batch.attempts + 1
        key = (batch.dest, batch.delivery_id)
        with self._tx() as db:
            cur = db.execute("DELETE FROM batches WHERE delivery_id = ?", (batch.delivery_id,))
            if not cur.rowcount:
                return False
            payloads: list[bytes] = []
            if outcome == DEAD_LETTERED:
                payloads = [
                    bytes(p)
                    for (p,) in db.execute(
                        "SELECT payload FROM items WHERE dest = ? AND batch = ? ORDER BY id", key
                    )
                ]
            events = db.execute("DELETE FROM items WHERE dest = ? AND batch = ?", key).rowcount
            if outcome == DEAD_LETTERED:
                db.execute(
                    "INSERT INTO dead_letters (delivery_id, dest, events, items, reason, status, "
                    "attempts, failed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        batch.delivery_id,
                        batch.dest,
                        events,
                        join_array(payloads),
                        error or "refused",
                        status,
                        attempts,
                        now_ms,
                    ),
                )
            db.execute(
                "INSERT INTO deliveries (delivery_id, dest, events, outcome, status, attempts, "
                "error, first_attempt_ms, finished_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.delivery_id,
                    batch.dest,
                    events,
                    outcome,
                    status,
                    attempts,
                    error,
                    first_attempt_ms,
                    now_ms,
                ),
            )
            db.execute(
                "DELETE FROM deliveries WHERE dest = ? AND seq <= (SELECT seq FROM deliveries "
                "WHERE dest = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (batch.dest, batch.dest, HISTORY_ROWS),
            )
            self._count(batch.dest, {"deliveries:" + outcome: 1, "events:" + outcome: events})
        return True

    # `clew destinations` and /metrics.

    def waiting(self) -> dict[str, int]:
        """Records in each destination's outbox (waiting or in the batch being sent)."""
        return dict(self._db.execute("SELECT dest, count(*) FROM items GROUP BY dest"))

    def counters(self) -> dict[tuple[str, str], int]:
        rows = self._db.execute("SELECT dest, name, value FROM counters")
        return {(d, n): v for d, n, v in rows}

    def deliveries(self, dest: str, limit: int = 20) -> list[Delivery]:
        """The latest finished deliveries of ``dest``, newest first."""
        rows = self._db.execute(
            "SELECT delivery_id, dest, events, outcome, status, attempts, error, "
            "first_attempt_ms, finished_ms FROM deliveries WHERE dest = ? "
            "ORDER BY seq DESC LIMIT ?",
            (dest, limit),
        )
        return [Delivery(*r) for r in rows]

    def dead_letters(self, dest: str | None = None) -> list[UndeliverableBatch]:
        """Dead letters (of ``dest``, or all), oldest first."""
        query = (
            "SELECT delivery_id, dest, events, reason, status, attempts, failed_ms "
            "FROM dead_letters"
        )
        rows = (
            self._db.execute(query + " WHERE dest = ? ORDER BY seq", (dest,))
            if dest is not None
            else self._db.execute(query + " ORDER BY seq")
        )
        return [UndeliverableBatch(*r) for r in rows]

    def dead_letter_body(self, delivery_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT items FROM dead_letters WHERE delivery_id = ?", (delivery_id,)
        ).fetchone()
        return bytes(row[0]) if row else None

    def replay(self, dest: str, now_ms: int, delivery_id: str | None = None) -> tuple[int, int]:
        """Move ``dest``'s dead letters (or only ``delivery_id``) back into its outbox as
        batches with their original delivery ids, sent after the batch in flight; returns
        (batches, records)."""
        batches = records = 0
        with self._tx() as db:
            query = "SELECT delivery_id, items FROM dead_letters WHERE dest = ?"
            params: tuple[str, ...] = (dest,)
            if delivery_id is not None:
                query += " AND delivery_id = ?"
                params = (dest, delivery_id)
            for did, blob in db.execute(query + " ORDER BY seq", params).fetchall():
                payloads = [bytes(r) for r in _raw_list.decode(blob)]
                db.execute(
                    "INSERT INTO batches (delivery_id, dest, events, created_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (did, dest, len(payloads), now_ms),
                )
                db.executemany(
                    "INSERT INTO items (dest, batch, enqueued_ms, payload) VALUES (?, ?, ?, ?)",
                    [(dest, did, now_ms, p) for p in payloads],
                )
                db.execute("DELETE FROM dead_letters WHERE delivery_id = ?", (did,))
                batches += 1
                records += len(payloads)
        return batches, records

    def purge(self, dest: str) -> int:
        """Forget ``dest`` and drop its outbox (waiting records and the batch in flight);
        returns how many records were dropped. Its history and dead letters stay."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM items WHERE dest = ?", (dest,))
            db.execute("DELETE FROM batches WHERE dest = ?", (dest,))
            db.execute("DELETE FROM destinations WHERE name = ?", (dest,))
        return cur.rowcount

    def forget(
        self,
        match: Callable[[bytes], bool],
        mentions: Callable[[str], bool],
        *,
        dry_run: bool = False,
    ) -> list[str]:
        """Remove every record (waiting, in a batch being sent, or dead-lettered) for which
        ``match(payload)`` is true, and blank every delivery error or dead-letter reason for
        which ``mentions(text)`` is (a receiver's answer may quote what it was sent). Returns
        where each was, without its content; ``dry_run`` only looks. A batch left empty is
        dropped; a sender still sending it records nothing for it."""
        where: list[str] = []
        with self._tx() as db:
            doomed: Counter[str] = Counter()
            ids = []
            for id_, dest, batch, payload in db.execute(
                "SELECT id, dest, batch, payload FROM items"
            ).fetchall():
                if match(bytes(payload)):
                    ids.append((id_,))
                    where.append(f"outbox of {dest}, item {id_}")
                    if batch is not None:
                        doomed[batch] += 1
            dead: list[tuple[str, list[bytes], int]] = []
            for did, dest, blob in db.execute(
                "SELECT delivery_id, dest, items FROM dead_letters"
            ).fetchall():
                records = [bytes(r) for r in _raw_list.decode(blob)]
                kept = [r for r in records if not match(r)]
                if len(kept) < len(records):
                    dead.append((did, kept, len(records) - len(kept)))
                    where.append(f"dead letters of {dest}, delivery {did}")
            texts = [
                (table, column, key, rowid)
                for table, column, key in _TEXTS
                for rowid, text in db.execute(
                    f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL"
                ).fetchall()
                if mentions(text)
            ]
            where.extend(f"{table}.{column} of {rowid}" for table, column, _, rowid in texts)
            if dry_run:
                return where
            db.executemany("DELETE FROM items WHERE id = ?", ids)
            for batch, n in doomed.items():
                db.execute(
                    "UPDATE batches SET events = events - ? WHERE delivery_id = ?", (n, batch)
                )
            db.execute("DELETE FROM batches WHERE events <= 0")
            for did, kept, n in dead:
                if kept:
                    db.execute(
                        "UPDATE dead_letters SET items = ?, events = events - ? "
                        "WHERE delivery_id = ?",
                        (join_array(kept), n, did),
                    )
                else:
                    db.execute("DELETE FROM dead_letters WHERE delivery_id = ?", (did,))
            for table, column, key, rowid in texts:
                db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (_FORGOTTEN, rowid))
        self._size_bound.clear()
        return where

    def purge_dead_letters(self, dest: str) -> int:
        with self._tx() as db:
            cur = db.execute("DELETE FROM dead_letters WHERE dest = ?", (dest,))
        return cur.rowcount
