"""The log contract, shaped after Kafka so a Kafka backend is a thin adapter.

- A topic has a fixed number of partitions. A record with a key always lands in the same
  partition (``partition_for``), in append order; a record without a key is spread round-robin.
- ``append`` resolves only once every record is durable; the result gives each record's
  (partition, offset).
- Consumers belong to a group. The group's committed offset per partition is durable; a new
  consumer of the group resumes at the committed offset (or the log start), so delivery is
  at-least-once. ``Consumer.commit`` can also append records atomically with the commit
  (Kafka's transactional ``send_offsets_to_transaction``), which lets a stage that reads one
  topic and writes another have exactly-once effects.
- Retention removes records older than a topic's time limit or beyond its size limit;
  ``delete_where`` physically removes records that match (privacy).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import msgspec


class LogError(RuntimeError):
    """The log cannot do what was asked; the message says why."""


class UnknownTopicError(LogError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist; create it with Log.create_topic first")
        self.topic = topic


class LogClosedError(LogError):
    """The log was closed; no more appends are accepted."""


@dataclass(slots=True, frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int | None = None
    retention_bytes: int | None = None


class Message(msgspec.Struct, frozen=True, gc=False):
    """A record to append. ``timestamp_ms`` defaults to the append time."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None


class Record(msgspec.Struct, frozen=True, gc=False):
    """A record read from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(slots=True, frozen=True)
class Position:
    partition: int
    offset: int


TopicPartition = tuple[str, int]


@dataclass(slots=True)
class Lag:
    """Per partition: the next offset to be written, and the group's committed offset."""

    end: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(max(0, e - self.committed.get(p, 0)) for p, e in self.end.items())


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed record; stable across processes, machines and versions."""
    return zlib.crc32(key) % partitions


class Consumer(ABC):
    """A member of a consumer group. Not thread-safe: use it from one thread."""

    #: Records skipped since the reader last reset this to 0 because they are unreadable by
    #: design (crypto-shredded: their data key was destroyed); their offsets still count for
    #: the position. Always 0 on a log that does not shred (capability, see :class:`Log`).
    shredded: int = 0

    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records from the assigned partitions, waiting up to
        ``timeout_s`` for the first. Advances the in-memory position, not the committed one."""

    @abstractmethod
    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        """Durably commit ``offsets`` (next offset to read per partition; default: the current
        positions) and, in the same atomic step, append ``produce`` records. Either all of it
        is durable when this returns, or none of it."""

    @abstractmethod
    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on the next poll."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """The partitions this member reads now (changes when members join or leave)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; its partitions move to the remaining members. Uncommitted
        progress is not committed."""


class Log(ABC):
    """A set of partitioned, durable topics with consumer groups.

    Besides the operations, a log states its *capabilities*: what a caller may need to know
    of the backend behind it, asked instead of its class or the configured backend name
    (docs/architecture.md, "Contracts and their backends"). The defaults here are the
    embedded log's; each backend overrides what differs, and the contract suite checks each
    backend's values."""

    @property
    def encrypts_per_person(self) -> bool:
        """Whether records are sealed under data keys shared by a person's records
        (crypto-shredding, :class:`clew.log.shredding.ShreddingLog`): a person is then erased
        by destroying keys and checked by decrypting, not by :meth:`delete_where` and reading
        stored bytes."""
        return False

    @property
    def shares_groups_across_processes(self) -> bool:
        """Whether members of one consumer group may live in different processes, the log
        sharing the group's partitions among them (Kafka). When not, a group is coordinated
        only inside the process that opened the log, so at most one process may run a stage
        of a data directory at a time."""
        return False

    @abstractmethod
    def create_topic(self, spec: TopicSpec) -> None:
        """Create the topic, or update its retention if it exists. Partition count is fixed
        once created; asking for a different count raises :class:`LogError`."""

    @abstractmethod
    def topics(self) -> dict[str, TopicSpec]: ...

    @abstractmethod
    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        """Append ``messages``; the future resolves once all are durable (or fails)."""

    def append_sync(self, topic: str, messages: Sequence[Message]) -> list[Position]:
        return self.append(topic, messages).result()

    @abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        """Join ``group`` reading ``topics``."""

    @abstractmethod
    def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> list[Record]:
        """Records of one partition from ``offset`` on, outside any group (for inspection)."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""

    @abstractmethod
    def start_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset of the oldest retained record."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the group's committed offset (0 when it never committed)."""

    def lag(self, group: str, topic: str) -> Lag:
        return Lag(end=self.end_offsets(topic), committed=self.committed(group, topic))

    @abstractmethod
    def enforce_retention(self, now_ms: int) -> int:
        """Remove records past each topic's retention; returns how many were removed."""

    @abstractmethod
    def delete_where(self, topic: str, match: Callable[[Record], bool]) -> int:
        """Physically remove every record of ``topic`` for which ``match`` is true, so that
        its bytes no longer exist in storage. Offsets of other records do not change."""

    @abstractmethod
    def close(self) -> None:
        """Finish pending appends and release resources."""
