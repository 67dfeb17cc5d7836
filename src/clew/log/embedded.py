"""The embedded log: one SQLite database in WAL mode, no server.

Every write (appends, offset commits) goes through one writer thread that batches whatever is
queued into a single transaction and fsyncs once (group commit), so many concurrent small
appends cost one disk flush. ``synchronous=FULL`` makes a committed transaction survive power
loss; ``secure_delete`` overwrites deleted records so that physically deleted bytes are gone.

Consumer groups are coordinated inside the process that opened the log: members of a group
share its partitions (range assignment) and rebalance when one joins or leaves. Several
processes may append to the same database; only one process should consume a given group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS partitions (
    tp INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS records (
    tp INTEGER NOT NULL,
    off INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB,
    PRIMARY KEY (tp, off)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (tp, ts);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    tp INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, tp)
);
"""

_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])

_MAX_OPS_PER_TRANSACTION = 512
# How often a consumer looks for records another process appended: each hop between
# processes waits half of it on average (an event crosses two before its profile changes).
_CROSS_PROCESS_POLL_S = 0.02


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
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._topics: dict[str, TopicSpec] = {}
        self._parts: dict[TopicPartition, _Partition] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}
        self._load_metadata()
        # Changes when another connection (another process or handle) commits; offsets cached
        # in memory are then stale and must be reloaded before appending.
        self._data_version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        self._appended = threading.Condition()
        self._groups: dict[str, _Group] = {}
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
            conn.execute("BEGIN IMMEDIATE")
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
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # In-memory offsets advanced by the rolled-back ops must be reloaded.
            self._reload_offsets(conn)
            for _, fut in batch:
                if fut.running() or fut.set_running_or_notify_cancel():
                    fut.set_exception(LogError(f"log write failed: {exc}"))
            return
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        with self._appended:
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
                        _headers_encoder.encode(list(m.headers)) if m.headers else None,
                    )
                )
                positions.append(Position(p, off))
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
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

    def _reader(self) -> sqlite3.Connection:
        return _connect(self._path)

    @contextlib.contextmanager
    def _inspecting(self) -> Iterator[sqlite3.Connection]:
        """The one connection for short inspection queries (offsets, lag, `read`), so a
        metrics scrape does not open a connection per query."""
        with self._inspect_lock:
            if self._inspect is None:
                self._inspect = self._reader()
            yield self._inspect

    def _read(
        self, conn: sqlite3.Connection, topic: str, partition: int, offset: int, limit: int
    ) -> list[Record]:
        part = self._parts.get((topic, partition))
        if part is None:
            raise UnknownTopicError(topic)
        rows = conn.execute(
            "SELECT off, ts, key, value, headers FROM records WHERE tp = ? AND off >= ? "
            "ORDER BY off LIMIT ?",
            (part.tp, offset, limit),
        ).fetchall()
        return [
            Record(
                topic,
                partition,
                off,
                key,
                value,
                tuple(_headers_decoder.decode(h)) if h else (),
                ts,
            )
            for off, ts, key, value, h in rows
        ]

    def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> list[Record]:
        self._spec(topic)
        with self._inspecting() as conn:
            return self._read(conn, topic, partition, offset, max_records)

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
            grp = self._groups.setdefault(group, _Group(group))
        member = _EmbeddedConsumer(self, grp, list(topics))
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
                        removed += _trim_to_bytes(conn, tp, spec.retention_bytes)
            return removed

        removed: int = self._submit(op).result()
        if removed:
            self._checkpoint()
        return removed

    def delete_where(self, topic: str, match: Callable[[Record], bool]) -> int:
        spec = self._spec(topic)
        doomed: list[tuple[int, int]] = []
        conn = self._reader()
        try:
            for p in range(spec.partitions):
                tp = self._parts[(topic, p)].tp
                offset = 0
                while True:
                    batch = self._read(conn, topic, p, offset, 2000)
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
        conn = self._reader()
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
        self._conn.close()
        with self._inspect_lock:
            if self._inspect is not None:
                self._inspect.close()
                self._inspect = None

    # For consumers -----------------------------------------------------------------------

    def _wait_for_append(self, timeout_s: float) -> None:
        with self._appended:
            self._appended.wait(min(timeout_s, _CROSS_PROCESS_POLL_S))


def _trim_to_bytes(conn: sqlite3.Connection, tp: int, limit: int) -> int:
    total = 0
    cutoff: int | None = None
    for off, size in conn.execute(
        "SELECT off, length(value) + coalesce(length(key), 0) FROM records WHERE tp = ? "
        "ORDER BY off DESC",
        (tp,),
    ):
        total += size
        if total > limit:
            cutoff = off
            break
    if cutoff is None:
        return 0
    return conn.execute("DELETE FROM records WHERE tp = ? AND off <= ?", (tp, cutoff)).rowcount


class _Group:
    """In-process coordinator: range-assigns each topic's partitions to the live members."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[_EmbeddedConsumer] = []
        self.generation = 0
        self.lock = threading.Lock()

    def join(self, member: _EmbeddedConsumer) -> None:
        with self.lock:
            self.members.append(member)
            self.generation += 1

    def leave(self, member: _EmbeddedConsumer) -> None:
        with self.lock:
            if member in self.members:
                self.members.remove(member)
                self.generation += 1

    def assignment_of(
        self, member: _EmbeddedConsumer, log: EmbeddedLog
    ) -> tuple[int, list[TopicPartition]]:
        with self.lock:
            out: list[TopicPartition] = []
            for topic in member.topics:
                readers = [m for m in self.members if topic in m.topics]
                n = log._topics[topic].partitions
                idx = readers.index(member)
                out.extend((topic, p) for p in range(n) if p % len(readers) == idx)
            return self.generation, out


class _EmbeddedConsumer(Consumer):
    def __init__(self, log: EmbeddedLog, group: _Group, topics: list[str]) -> None:
        self._log = log
        self._group = group
        self.topics = topics
        self._conn = log._reader()
        self._generation = -1
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._next_start = 0
        self._closed = False

    def _refresh(self) -> None:
        if self._generation == self._group.generation:
            return
        self._generation, self._assigned = self._group.assignment_of(self, self._log)
        committed: dict[TopicPartition, int] = {}
        for topic in self.topics:
            for p, off in self._log.committed(self._group.name, topic).items():
                committed[(topic, p)] = off
        self._positions = {tp: committed.get(tp, 0) for tp in self._assigned}

    def assignment(self) -> list[TopicPartition]:
        self._refresh()
        return list(self._assigned)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if self._closed:
            raise LogError("this consumer is closed")
        deadline = time.monotonic() + timeout_s
        while True:
            self._refresh()
            out: list[Record] = []
            n = len(self._assigned)
            for i in range(n):
                tp = self._assigned[(self._next_start + i) % n]
                if len(out) >= max_records:
                    break
                recs = self._log._read(
                    self._conn, tp[0], tp[1], self._positions[tp], max_records - len(out)
                )
                if recs:
                    self._positions[tp] = recs[-1].offset + 1
                    out.extend(recs)
            if n:
                self._next_start = (self._next_start + 1) % n
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            self._log._wait_for_append(remaining)

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        self._refresh()
        to_commit = dict(self._positions if offsets is None else offsets)
        for topic in produce or {}:
            self._log._spec(topic)
        self._log._submit(self._log._commit_op(self._group.name, to_commit, produce)).result()

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._refresh()
        if (topic, partition) not in self._positions:
            raise LogError(f"{topic}[{partition}] is not assigned to this consumer")
        self._positions[(topic, partition)] = offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._group.leave(self)
        self._conn.close()


def open_log(path: Path) -> EmbeddedLog:
    """Open (or create) the embedded log at ``path``."""
    return EmbeddedLog(Path(os.fspath(path)))
