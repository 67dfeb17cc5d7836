"""The embedded log: one SQLite database in WAL mode, no server.

Every write (appends, offset commits) goes through one writer thread that batches whatever is
queued into a single transaction and fsyncs once (group commit), so many concurrent small
appends cost one disk flush. ``synchronous=FULL`` makes a committed transaction survive power
loss; ``secure_delete`` overwrites deleted records so that physically deleted bytes are gone.

Consumer groups are coordinated inside the process that opened the log: members of a group
share its partitions (range assignment) and rebalance when one joins or leaves
(``_embedded_groups``). Several processes may append to the same database; only one process
should consume a given group. The tables are in ``_embedded_tables``.

A waiting consumer wakes as soon as a transaction that appended records commits: through a
condition variable when the writer is its own handle's, through the doorbell
(``_doorbell``, a UNIX datagram socket per handle with consumers) when it is another
process's or another handle's.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from clew._sqlite import transaction
from clew.log._doorbell import POLL_WITHOUT_DOORBELL_S, SAFETY_NET_POLL_S, Doorbell
from clew.log._embedded_groups import EmbeddedConsumer, Group
from clew.log._embedded_tables import SCHEMA, encode_headers, read_records, trim_to_bytes
from clew.log._queue import batches
from clew.log.base import (
    Consumer,
    Log,
    LogClosedError,
    LogError,
    Message,
    Position,
    Record,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    partition_for,
)

_MAX_OPS_PER_TRANSACTION = 512


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


class _Partition:
    __slots__ = ("next_offset", "partition", "topic", "tp")

    def __init__(self, tp: int, topic: str, partition: int, next_offset: int) -> None:
        self.tp = tp
        self.topic = topic
        self.partition = partition
        self.next_offset = next_offset


_Op = Callable[[sqlite3.Connection], Any]


class EmbeddedLog(Log):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._conn = _connect(path)
        self._inspect: sqlite3.Connection | None = None
        self._inspect_lock = threading.Lock()
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._topics: dict[str, TopicSpec] = {}
        self._parts: dict[TopicPartition, _Partition] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}
        self._load_metadata()
        # Changes when another connection (another process or handle) commits; offsets cached
        # in memory are then stale and must be reloaded before appending.
        self._data_version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        # Wake-ups of waiting consumers, counted by topic, so that a consumer that read
        # nothing does not sleep through one that came while it was reading; "" counts those
        # of every topic.
        self._appended = threading.Condition()
        self._wakes: Counter[str] = Counter()
        self._doorbell = Doorbell(path, self._wake)
        self._touched: set[str] = set()  # the writer thread's: topics this transaction appended
        self._groups: dict[str, Group] = {}
        self._ops: queue.SimpleQueue[tuple[_Op, Future[Any]] | None] = queue.SimpleQueue()
        self._closing = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(
            target=self._write_loop, name="clew-log-writer", daemon=True
        )
        self._writer.start()

    # -- metadata -------------------------------------------------------------------------

    def _load_metadata(self) -> None:
        for name, n, rms, rbytes in self._conn.execute("SELECT * FROM topics"):
            self._topics[name] = TopicSpec(name, n, rms, rbytes)
            self._round_robin[name] = itertools.cycle(range(n))
        for tp, topic, partition, next_offset in self._conn.execute("SELECT * FROM partitions"):
            self._parts[(topic, partition)] = _Partition(tp, topic, partition, next_offset)

    def create_topic(self, spec: TopicSpec) -> None:
        if spec.partitions < 1:
            raise LogError(f"topic {spec.name!r} needs at least one partition")

        def op(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
            row = conn.execute(
                "SELECT partitions FROM topics WHERE name = ?", (spec.name,)
            ).fetchone()
            if row is not None and row[0] != spec.partitions:
                raise LogError(
                    f"topic {spec.name!r} has {row[0]} partitions; it cannot change to "
                    f"{spec.partitions}"
                )
            conn.execute(
                "INSERT INTO topics VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "retention_ms = excluded.retention_ms, retention_bytes = excluded.retention_bytes",
                (spec.name, spec.partitions, spec.retention_ms, spec.retention_bytes),
            )
            for p in range(spec.partitions):
                conn.execute(
                    "INSERT OR IGNORE INTO partitions (topic, partition) VALUES (?, ?)",
                    (spec.name, p),
                )
            return conn.execute(
                "SELECT tp, partition, next_offset FROM partitions WHERE topic = ?", (spec.name,)
            ).fetchall()

        rows = self._submit(op).result()
        # Add to the metadata in place: the writer thread reads it without the lock, and the
        # existing partitions carry offsets that may be ahead of what was read above.
        with self._lock:
            for tp, p, next_offset in rows:
                self._parts.setdefault((spec.name, p), _Partition(tp, spec.name, p, next_offset))
            self._round_robin.setdefault(spec.name, itertools.cycle(range(spec.partitions)))
            self._topics[spec.name] = spec

    def topics(self) -> dict[str, TopicSpec]:
        with self._lock:
            return dict(self._topics)

    def _spec(self, topic: str) -> TopicSpec:
        try:
            return self._topics[topic]
        except KeyError:
            raise UnknownTopicError(topic) from None

    # -- writing --------------------------------------------------------------------------

    def _submit(self, op: _Op) -> Future[Any]:
        fut: Future[Any] = Future()
        # Under the lock so no op can be queued behind the writer's stop marker and hang.
        with self._closing:
            if self._closed:
                fut.set_exception(LogClosedError("the log is closed"))
                return fut
            self._ops.put((op, fut))
        return fut

    def _write_loop(self) -> None:
        conn = self._conn
        for batch in batches(self._ops, _MAX_OPS_PER_TRANSACTION):
            self._run_transaction(conn, batch)

    def _run_transaction(
        self, conn: sqlite3.Connection, batch: list[tuple[_Op, Future[Any]]]
    ) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            self._touched = set()
            with transaction(conn):
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != self._data_version:
                    self._data_version = version
                    self._reload_offsets(conn)
                for op, fut in batch:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append((fut, True, op(conn)))
                        conn.execute("RELEASE op")
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        self._reload_offsets(conn)
                        results.append((fut, False, exc))
        except Exception as exc:
            # In-memory offsets advanced by the rolled-back ops must be reloaded.
            self._reload_offsets(conn)
            for _, fut in batch:
                if fut.running() or fut.set_running_or_notify_cancel():
                    fut.set_exception(LogError(f"log write failed: {exc}"))
            return
        if self._touched:
            self._wake(self._touched)
            self._doorbell.ring(self._touched)
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _wake(self, topics: Collection[str] | None) -> None:
        """Wake the consumers of ``topics`` (None: of every topic)."""
        with self._appended:
            self._wakes.update(topics if topics is not None else ("",))
            self._appended.notify_all()

    def _reload_offsets(self, conn: sqlite3.Connection) -> None:
        by_tp = {part.tp: part for part in list(self._parts.values())}
        for tp, next_offset in conn.execute("SELECT tp, next_offset FROM partitions"):
            if tp in by_tp:
                by_tp[tp].next_offset = next_offset

    def _append_op(self, topic: str, messages: Sequence[Message]) -> _Op:
        def op(conn: sqlite3.Connection) -> list[Position]:
            spec = self._spec(topic)
            now = _now_ms()
            rows = []
            positions = []
            touched: dict[int, _Partition] = {}
            rr = self._round_robin[topic]
            for m in messages:
                p = partition_for(m.key, spec.partitions) if m.key is not None else next(rr)
                part = self._parts[(topic, p)]
                off = part.next_offset
                part.next_offset = off + 1
                touched[part.tp] = part
                rows.append(
                    (
                        part.tp,
                        off,
                        m.timestamp_ms if m.timestamp_ms is not None else now,
                        m.key,
                        m.value,
                        encode_headers(m.headers),
                    )
                )
                positions.append(Position(p, off))
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._touched.add(topic)
            conn.executemany(
                "UPDATE partitions SET next_offset = ? WHERE tp = ?",
                [(part.next_offset, tp) for tp, part in touched.items()],
            )
            return positions

        return op

    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        if topic not in self._topics:
            fut: Future[list[Position]] = Future()
            fut.set_exception(UnknownTopicError(topic))
            return fut
        return self._submit(self._append_op(topic, messages))

    def _commit_op(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        produce: Mapping[str, Sequence[Message]] | None,
    ) -> _Op:
        appends = [self._append_op(t, ms) for t, ms in (produce or {}).items() if ms]

        def op(conn: sqlite3.Connection) -> None:
            for append in appends:
                append(conn)
            conn.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (grp, tp) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                [(group, self._parts[tp].tp, off) for tp, off in offsets.items()],
            )

        return op

    # -- reading --------------------------------------------------------------------------

    def open_reader(self) -> sqlite3.Connection:
        return _connect(self._path)

    @contextlib.contextmanager
    def _inspecting(self) -> Iterator[sqlite3.Connection]:
        """The one connection for short inspection queries (offsets, lag, `read`), so a
        metrics scrape does not open a connection per query."""
        with self._inspect_lock:
            if self._inspect is None:
                self._inspect = self.open_reader()
            yield self._inspect

    def read_from(
        self, conn: sqlite3.Connection, topic: str, partition: int, offset: int, limit: int
    ) -> list[Record]:
        """Up to ``limit`` records of ``topic``/``partition`` from ``offset``, read on
        ``conn`` (a connection of :meth:`open_reader`)."""
        part = self._parts.get((topic, partition))
        if part is None:
            raise UnknownTopicError(topic)
        return read_records(conn, part.tp, topic, partition, offset, limit)

    def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> list[Record]:
        self._spec(topic)
        with self._inspecting() as conn:
            return self.read_from(conn, topic, partition, offset, max_records)

    def _query_offsets(self, sql: str, topic: str, *args: Any) -> dict[int, int]:
        spec = self._spec(topic)
        with self._inspecting() as conn:
            out = {p: 0 for p in range(spec.partitions)}
            for p, off in conn.execute(sql, (*args, topic)):
                out[p] = off
            return out

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self._query_offsets(
            "SELECT partition, next_offset FROM partitions WHERE topic = ?", topic
        )

    def start_offsets(self, topic: str) -> dict[int, int]:
        ends = self.end_offsets(topic)
        with self._inspecting() as conn:
            out = {}
            for p, end in ends.items():
                (first,) = conn.execute(
                    "SELECT MIN(off) FROM records WHERE tp = ?", (self._parts[(topic, p)].tp,)
                ).fetchone()
                out[p] = end if first is None else first
            return out

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self._query_offsets(
            "SELECT p.partition, o.next_offset FROM offsets o JOIN partitions p ON p.tp = o.tp "
            "WHERE o.grp = ? AND p.topic = ?",
            topic,
            group,
        )

    # -- groups ---------------------------------------------------------------------------

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        for t in topics:
            self._spec(t)
        with self._lock:
            grp = self._groups.setdefault(group, Group(group))
        # Before the consumer's first read, so that no append after it goes unnoticed.
        self._doorbell.listen()
        member = EmbeddedConsumer(self, grp, list(topics))
        grp.join(member)
        return member

    # -- retention and deletion -----------------------------------------------------------

    def enforce_retention(self, now_ms: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            removed = 0
            # A snapshot: create_topic may add a topic while this runs on the writer thread.
            for spec in list(self._topics.values()):
                tps = [self._parts[(spec.name, p)].tp for p in range(spec.partitions)]
                for tp in tps:
                    if spec.retention_ms is not None:
                        cur = conn.execute(
                            "DELETE FROM records WHERE tp = ? AND ts < ?",
                            (tp, now_ms - spec.retention_ms),
                        )
                        removed += cur.rowcount
                    if spec.retention_bytes is not None:
                        removed += trim_to_bytes(conn, tp, spec.retention_bytes)
            return removed

        removed: int = self._submit(op).result()
        if removed:
            self._checkpoint()
        return removed

    def delete_where(self, topic: str, match: Callable[[Record], bool]) -> int:
        spec = self._spec(topic)
        doomed: list[tuple[int, int]] = []
        conn = self.open_reader()
        try:
            for p in range(spec.partitions):
                tp = self._parts[(topic, p)].tp
                offset = 0
                while True:
                    batch = self.read_from(conn, topic, p, offset, 2000)
                    if not batch:
                        break
                    doomed.extend((tp, r.offset) for r in batch if match(r))
                    offset = batch[-1].offset + 1
        finally:
            conn.close()

        def op(c: sqlite3.Connection) -> int:
            c.executemany("DELETE FROM records WHERE tp = ? AND off = ?", doomed)
            return len(doomed)

        n: int = self._submit(op).result()
        # Even when nothing matched: a retry after a failed checkpoint must finish the job.
        if not self._checkpoint():
            raise LogError(
                f"deleted {n} records of {topic!r}, but another connection kept reading "
                f"{self._path} so their bytes may remain in its write-ahead log; call "
                "delete_where again once long-running readers have finished"
            )
        return n

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it, so deleted bytes leave the WAL.
        False when a reader kept it from completing."""
        self._submit(lambda c: None).result()
        conn = self.open_reader()
        try:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return bool(busy == 0)
        finally:
            conn.close()

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._ops.put(None)
        self._writer.join()
        self._doorbell.close()
        self._conn.close()
        with self._inspect_lock:
            if self._inspect is not None:
                self._inspect.close()
                self._inspect = None

    # For consumers (clew.log._embedded_groups) -----------------------------------------

    def partition_count(self, topic: str) -> int:
        return self._topics[topic].partitions

    def commit_offsets(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        produce: Mapping[str, Sequence[Message]] | None,
    ) -> None:
        """Store ``group``'s offsets, appending ``produce`` in the same transaction."""
        for topic in produce or {}:
            self._spec(topic)
        self._submit(self._commit_op(group, offsets, produce)).result()

    def wake_count(self, topics: Sequence[str]) -> int:
        """Grows whenever records of ``topics`` may have been appended; read it before
        looking for them and hand it to :meth:`wait_for_append`."""
        wakes = self._wakes
        return wakes[""] + sum(wakes[t] for t in topics)

    def wait_for_append(self, timeout_s: float, topics: Sequence[str], since: int) -> None:
        """Return once ``wake_count(topics)`` is no longer ``since``, or after ``timeout_s``,
        or after a short poll interval when appends of other processes cannot wake this one."""
        poll_s = SAFETY_NET_POLL_S if self._doorbell.listening else POLL_WITHOUT_DOORBELL_S
        with self._appended:
            self._appended.wait_for(
                lambda: self.wake_count(topics) != since, min(timeout_s, poll_s)
            )
