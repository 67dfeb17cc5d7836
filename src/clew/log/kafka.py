"""The Kafka log: the log contract on Apache Kafka through confluent-kafka (librdkafka).

Topics, partitions, consumer groups and rebalancing are Kafka's own; this module maps the
contract onto them and says where Kafka differs:

- ``append`` uses one idempotent producer (``acks=all``): a future resolves once every record
  is acknowledged by all in-sync replicas, which is Kafka's durability (replication, not an
  fsync per record). If one record of a batch fails, the future fails and the others may
  still have been appended. Keyed records go to ``partition_for(key)`` and keyless ones
  round-robin, chosen here rather than by librdkafka, so both backends place records alike.
- Consumers use the classic group protocol with the cooperative-sticky assignor: a member
  that stays keeps its partitions and its position while others join or leave. Offsets are
  committed only when asked. ``commit(produce=...)`` is a Kafka transaction: the records and
  the offsets (``send_offsets_to_transaction``) commit together or not at all, and the call
  returns once both are visible to read-committed readers.
- ``enforce_retention`` trims each topic declared through this handle at record granularity
  with ``DeleteRecords``; Kafka also applies ``retention.ms``/``retention.bytes`` itself,
  whole segments at a time.
- ``delete_where`` raises :class:`UnsupportedOperationError`: Kafka can drop a partition's
  prefix or compact by key, never one record in the middle (see docs/scale-out.md).
- librdkafka reads a timestamp of 0 as "now", so a record stamped at the epoch carries a
  reserved header (``clew.epoch``) that ``read`` and ``poll`` turn back into timestamp 0.

confluent-kafka is an optional extra: this module imports without it, and :class:`KafkaLog`
then raises :class:`KafkaUnavailableError` naming the command that installs it.

This module holds the handle (topics, appends, retention); its parts are private modules:
``_kafka_driver`` (the driver's import, error mapping, record conversion), ``_kafka_admin``
(topics and offsets through the admin API), ``_kafka_reader`` (reading outside any group)
and ``_kafka_consumer`` (:class:`KafkaConsumer`, re-exported here).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, cast

from clew.log._kafka_driver import EPOCH_HEADER, check_messages, missing, raise_for
from clew.log.base import (
    Log,
    LogClosedError,
    LogError,
    Message,
    Position,
    Record,
    TopicSpec,
    UnknownTopicError,
    partition_for,
)

if missing is None:
    from clew.log._kafka_admin import Admin
    from clew.log._kafka_consumer import KafkaConsumer
    from clew.log._kafka_driver import (
        KafkaError,
        Producer,
        RawMessage,
        RawTopicPartition,
        admin,
    )
    from clew.log._kafka_reader import CommittedOffsets, Reader

__all__ = [
    "EPOCH_HEADER",
    "INSTALL_HINT",
    "ConfigValue",
    "KafkaConsumer",
    "KafkaLog",
    "KafkaUnavailableError",
    "UnsupportedOperationError",
]

INSTALL_HINT = "pip install 'clew[kafka]'"

ConfigValue = str | int | float | bool

logger = logging.getLogger(__name__)


class KafkaUnavailableError(LogError):
    """confluent-kafka is not installed; the message names the command that installs it."""


class UnsupportedOperationError(LogError):
    """This backend cannot do what was asked; the message says what to do instead."""


class _PendingAppend:
    """Collects the delivery reports of one ``append``; only the delivery thread calls it."""

    __slots__ = ("future", "on_fatal", "positions", "remaining", "topic")

    def __init__(
        self,
        future: Future[list[Position]],
        topic: str,
        count: int,
        on_fatal: Callable[[], None],
    ) -> None:
        self.future = future
        self.topic = topic
        self.positions = [Position(-1, -1)] * count
        self.remaining = count
        self.on_fatal = on_fatal

    def delivered(self, index: int, err: KafkaError | None, msg: RawMessage) -> None:
        if err is not None and err.fatal():
            self.on_fatal()
        if self.future.done():
            return
        if err is not None:
            try:
                raise_for(err, f"appending to {self.topic!r}", self.topic)
            except LogError as exc:
                self.future.set_exception(exc)
            return
        self.positions[index] = Position(cast(int, msg.partition()), cast(int, msg.offset()))
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.positions)


class KafkaLog(Log):
    """A handle on a Kafka cluster. Thread-safe; the consumers it creates are not.

    ``client`` holds librdkafka properties for every client (security, SASL, ...);
    ``producer`` and ``consumer`` add properties for those clients only. ``timeout_s``
    bounds each request to the cluster (transient errors are retried within it); past it
    the call raises :class:`LogError`.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        replication_factor: int | None = None,
        client: Mapping[str, ConfigValue] | None = None,
        producer: Mapping[str, ConfigValue] | None = None,
        consumer: Mapping[str, ConfigValue] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if missing is not None:
            raise KafkaUnavailableError(
                f"the Kafka log backend needs confluent-kafka: {INSTALL_HINT}"
            ) from missing
        self.timeout_s = timeout_s
        self._replication = -1 if replication_factor is None else replication_factor
        base: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, **(client or {})}
        # The admin client's failures come back as errors of its requests; its own lines
        # (one per reconnection attempt while a broker is down) would go straight to stderr.
        self._admin = Admin({**base, "log_level": 2}, timeout_s)
        self.producer_config: dict[str, Any] = {
            **base,
            "logger": logger,
            # A collector request waits for its append: keep batching waits short.
            "linger.ms": 1,
            **(producer or {}),
            "enable.idempotence": True,
            "acks": "all",
        }
        self.consumer_config: dict[str, Any] = {
            **base,
            "logger": logger,
            "heartbeat.interval.ms": 1000,
            # A member that could not leave its group (the broker was away when its stage
            # replaced it) holds its partitions until this passes after the coordinator is
            # back: librdkafka's 45 s default would hold a stage up that long.
            "session.timeout.ms": 10000,
            **(consumer or {}),
        }
        self._producer = Producer(self.producer_config)
        self._producer_failed = False
        self._retired: list[Producer] = []
        self._partitions: dict[str, int] = {}
        self._declared: dict[str, TopicSpec] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._spare_transactional_ids: dict[str, list[str]] = {}
        self._closed = False
        self._drain_until = 0.0
        self._reader = Reader(self)
        self._committed = CommittedOffsets(self)
        self._deliveries = threading.Thread(
            target=self._serve_deliveries, name="clew-kafka-deliveries", daemon=True
        )
        self._deliveries.start()

    @property
    def shares_groups_across_processes(self) -> bool:
        """Kafka's group coordinator shares a group's partitions among every member."""
        return True

    # -- topics ---------------------------------------------------------------------------

    def create_topic(self, spec: TopicSpec) -> None:
        if spec.partitions < 1:
            raise LogError(f"topic {spec.name!r} needs at least one partition")
        self._check_open()
        self._admin.create_topic(spec, self._replication)
        with self._lock:
            self._partitions[spec.name] = spec.partitions
            self._declared[spec.name] = spec

    def topics(self) -> dict[str, TopicSpec]:
        """Every topic of the cluster but Kafka's internal ones, with its retention."""
        self._check_open()
        counts = self._refresh_partitions()
        names = {name: n for name, n in counts.items() if not name.startswith("__")}
        if not names:
            return {}
        return self._admin.specs(names)

    def _refresh_partitions(self) -> dict[str, int]:
        counts = self._admin.partition_counts()
        self._partitions.update(counts)
        return counts

    def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``; raises :class:`UnknownTopicError` if it does not exist."""
        n = self._partitions.get(topic)
        if n is None:
            self._check_open()
            n = self._refresh_partitions().get(topic)
            if n is None:
                raise UnknownTopicError(topic)
        return n

    # -- appending ------------------------------------------------------------------------

    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        fut: Future[list[Position]] = Future()
        fut.set_running_or_notify_cancel()  # an append cannot be called back
        try:
            self._check_open()
            n = self.partition_count(topic)
            check_messages(messages)
            pending = _PendingAppend(fut, topic, len(messages), self._producer_fatal)
            if not messages:
                fut.set_result([])
            with self._lock:
                self._check_open()
                if self._producer_failed:
                    self._renew_producer()
                for i, m in enumerate(messages):
                    delivered = functools.partial(pending.delivered, i)
                    self.produce(self._producer, topic, n, m, delivered)
        except LogError as exc:
            fut.set_exception(exc)
        return fut

    def _producer_fatal(self) -> None:
        """A delivery report said the idempotent producer hit a fatal error (librdkafka's
        producer is then unusable for good); the next append replaces it."""
        self._producer_failed = True

    def _renew_producer(self) -> None:
        """Replace the failed producer (under ``_lock``); what it still held fails (those
        appends were not acknowledged, so their senders retry them)."""
        old, self._producer = self._producer, Producer(self.producer_config)
        self._producer_failed = False
        logger.warning("the Kafka producer failed for good; appending through a new one")
        old.purge()
        old.poll(0)
        # Closed with the log: the delivery thread may be polling it right now.
        self._retired.append(old)

    def produce(
        self,
        producer: Producer,
        topic: str,
        partitions: int,
        m: Message,
        on_delivery: Callable[[KafkaError | None, RawMessage], None],
    ) -> None:
        """Hand ``m`` to ``producer`` for the partition the contract chooses. When librdkafka's
        queue is full, wait for deliveries to make room (served by this handle's delivery
        thread for its own producer, by ``producer.poll`` for any other)."""
        if m.key is not None:
            p = partition_for(m.key, partitions)
        else:
            counter = self._round_robin.get(topic)
            if counter is None:
                counter = self._round_robin.setdefault(topic, itertools.count())
            p = next(counter) % partitions
        headers: list[tuple[str, str | bytes | None]] = list(m.headers)
        if m.timestamp_ms == 0:
            headers.append((EPOCH_HEADER, b""))
        while True:
            try:
                producer.produce(
                    topic,
                    m.value,
                    m.key,
                    partition=p,
                    on_delivery=on_delivery,
                    timestamp=m.timestamp_ms or 0,
                    headers=headers or None,
                )
                return
            except BufferError:
                if producer is self._producer:
                    time.sleep(0.001)
                else:
                    producer.poll(0.01)

    def _serve_deliveries(self) -> None:
        """Runs delivery reports (resolving append futures) until closed and drained."""
        while True:
            try:
                self._producer.poll(0.1)
            except Exception:  # one bad callback must not stop every later append
                logger.exception("a callback of a Kafka append failed")
            if self._closed and (len(self._producer) == 0 or time.monotonic() > self._drain_until):
                return

    # -- reading --------------------------------------------------------------------------

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaConsumer:
        """Returns once the member has joined ``group`` (see :class:`KafkaConsumer`)."""
        self._check_open()
        for topic in topics:
            self.partition_count(topic)
        return KafkaConsumer(self, group, list(topics))

    def transactional_id(self, group: str) -> str:
        """A transactional id for a member of ``group``: one a closed member of this handle
        gave back, else a new one. A member that replaces one whose transaction failed (the
        stage runner closes a failed consumer and opens another) so fences the producer left
        behind, and the broker aborts that producer's open transaction at once instead of
        after ``transaction.timeout.ms``: until then no read-committed consumer reads past it."""
        with self._lock:
            if spare := self._spare_transactional_ids.get(group):
                return spare.pop()
        return f"clew-{group}-{uuid.uuid4()}"

    def release_transactional_id(self, group: str, transactional_id: str) -> None:
        """Give back an id from :meth:`transactional_id` that no open member uses any more."""
        with self._lock:
            self._spare_transactional_ids.setdefault(group, []).append(transactional_id)

    def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> list[Record]:
        """Committed records only (read-committed, like the consumers)."""
        self._check_open()
        if not 0 <= partition < self.partition_count(topic):
            raise UnknownTopicError(topic)
        return self._reader.read(topic, partition, offset, max_records)

    def list_offsets(self, topic: str, spec: Any, committed_only: bool = False) -> dict[int, int]:
        """Per partition of ``topic``, the offset that the ``OffsetSpec`` asks for (-1 when
        there is none); ``committed_only`` gives the last stable offset instead of the end."""
        self._check_open()
        return self._admin.list_offsets(topic, self.partition_count(topic), spec, committed_only)

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self.list_offsets(topic, admin.OffsetSpec.latest())

    def start_offsets(self, topic: str) -> dict[int, int]:
        return self.list_offsets(topic, admin.OffsetSpec.earliest())

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Stable committed offsets (waits for a transaction that commits some to finish).
        Read by a consumer of ``group`` that never joins it (see :class:`CommittedOffsets`)."""
        self._check_open()
        return self._committed.read(group, topic, self.partition_count(topic))

    # -- retention and deletion -----------------------------------------------------------

    def enforce_retention(self, now_ms: int) -> int:
        """Trims the topics declared through this handle (``create_topic``): the records older
        than ``retention_ms`` at the head of each partition, then the oldest records beyond
        ``retention_bytes`` (key + value bytes, read from the tail, so this costs up to
        ``retention_bytes`` of reading per partition). Returns the offsets removed."""
        with self._lock:
            declared = list(self._declared.values())
        cuts: list[RawTopicPartition] = []
        removed = 0
        for spec in declared:
            if spec.retention_ms is None and spec.retention_bytes is None:
                continue
            # Ends before timestamps: a record appended in between must not count as expired.
            starts, ends = self.start_offsets(spec.name), self.end_offsets(spec.name)
            keep = dict(starts)
            if spec.retention_ms is not None:
                cutoff = admin.OffsetSpec.for_timestamp(now_ms - spec.retention_ms)
                for p, first in self.list_offsets(spec.name, cutoff).items():
                    keep[p] = max(keep[p], ends[p] if first < 0 else first)
            if spec.retention_bytes is not None:
                for p in keep:
                    tail = self._reader.tail_start(
                        spec.name, p, starts[p], ends[p], spec.retention_bytes
                    )
                    keep[p] = max(keep[p], tail)
            for p, first in keep.items():
                if first > starts[p]:
                    cuts.append(RawTopicPartition(spec.name, p, first))
                    removed += first - starts[p]
        if cuts:
            self._admin.delete_records(cuts)
        return removed

    def delete_where(self, topic: str, match: Callable[[Record], bool]) -> int:
        """Always raises :class:`UnsupportedOperationError` (after checking that ``topic``
        exists): Kafka cannot remove single records from the middle of a partition."""
        self.partition_count(topic)
        raise UnsupportedOperationError(
            f"the Kafka log cannot physically delete single records of {topic!r}: Kafka only "
            "drops a partition's oldest records (retention, DeleteRecords) or older records of "
            "the same key (compaction). Erase the person's data from the stores downstream and "
            "let retention expire the log, or run the embedded log; see docs/scale-out.md"
        )

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the log is closed")

    def close(self) -> None:
        """Waits up to ``timeout_s`` for pending appends; those still unacknowledged then fail
        with :class:`LogClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drain_until = time.monotonic() + self.timeout_s
        self._deliveries.join()
        if len(self._producer):
            self._producer.purge()
            self._producer.poll(0)
        self._producer.close()
        for retired in self._retired:
            retired.close()
        self._reader.close()
        self._committed.close()
        # librdkafka's admin client has no close; dropping it ends its reconnect attempts.
        del self._admin
