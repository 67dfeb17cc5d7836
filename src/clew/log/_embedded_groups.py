"""Consumer groups of the embedded log, coordinated inside the process that opened it: the
members of a group share its partitions (range assignment) and rebalance when one joins or
leaves."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from clew.log.base import Consumer, LogError, Message, Record, TopicPartition


class ConsumerLog(Protocol):
    """What a consumer needs of the embedded log that made it."""

    def partition_count(self, topic: str) -> int: ...

    def open_reader(self) -> sqlite3.Connection: ...

    def read_from(
        self, conn: sqlite3.Connection, topic: str, partition: int, offset: int, limit: int
    ) -> list[Record]: ...

    def committed(self, group: str, topic: str) -> dict[int, int]: ...

    def commit_offsets(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        produce: Mapping[str, Sequence[Message]] | None,
    ) -> None: ...

    def wake_count(self, topics: Sequence[str]) -> int: ...

    def wait_for_append(self, timeout_s: float, topics: Sequence[str], since: int) -> None: ...


class Group:
    """In-process coordinator: range-assigns each topic's partitions to the live members."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[EmbeddedConsumer] = []
        self.generation = 0
        self.lock = threading.Lock()

    def join(self, member: EmbeddedConsumer) -> None:
        with self.lock:
            self.members.append(member)
            self.generation += 1

    def leave(self, member: EmbeddedConsumer) -> None:
        with self.lock:
            if member in self.members:
                self.members.remove(member)
                self.generation += 1

    def assignment_of(
        self, member: EmbeddedConsumer, log: ConsumerLog
    ) -> tuple[int, list[TopicPartition]]:
        with self.lock:
            out: list[TopicPartition] = []
            for topic in member.topics:
                readers = [m for m in self.members if topic in m.topics]
                n = log.partition_count(topic)
                idx = readers.index(member)
                out.extend((topic, p) for p in range(n) if p % len(readers) == idx)
            return self.generation, out


class EmbeddedConsumer(Consumer):
    def __init__(self, log: ConsumerLog, group: Group, topics: list[str]) -> None:
        self._log = log
        self._group = group
        self.topics = topics
        self._conn = log.open_reader()
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
            wakes = self._log.wake_count(self.topics)
            out: list[Record] = []
            n = len(self._assigned)
            for i in range(n):
                tp = self._assigned[(self._next_start + i) % n]
                if len(out) >= max_records:
                    break
                recs = self._log.read_from(
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
            self._log.wait_for_append(remaining, self.topics, wakes)

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        self._refresh()
        to_commit = dict(self._positions if offsets is None else offsets)
        self._log.commit_offsets(self._group.name, to_commit, produce)

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
