"""Reading outside any group membership, for the Kafka log (``clew.log.kafka``): the records
of one partition (:class:`Reader`, behind ``Log.read`` and byte retention) and a group's
committed offsets (:class:`CommittedOffsets`). Imported only when confluent-kafka is
installed.
"""

from __future__ import annotations

import threading
import time
import uuid

from clew.log._kafka_driver import (
    KafkaError,
    KafkaException,
    KafkaHandle,
    RawConsumer,
    RawTopicPartition,
    raise_for,
    retrying,
    to_record,
)
from clew.log.base import LogError, Record


class Reader:
    """Reads partitions outside any group (``Log.read``) with one assign-only consumer.
    A read that continues where the previous one stopped reuses what is already fetched."""

    def __init__(self, log: KafkaHandle) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._consumer: RawConsumer | None = None
        self._next: tuple[str, int, int] | None = None

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> list[Record]:
        """Raises :class:`LogError` on a failure, after which the next read starts with a
        new client (one that met a broker restart may keep a stale view of the cluster)."""
        try:
            return self._read(topic, partition, offset, max_records)
        except LogError:
            self.close()
            raise

    def _read(self, topic: str, partition: int, offset: int, max_records: int) -> list[Record]:
        with self._lock:
            if self._consumer is None:
                self._consumer = RawConsumer(
                    {
                        **self._log.consumer_config,
                        "group.id": f"clew-reader-{uuid.uuid4().hex}",
                        "enable.auto.commit": False,
                        "enable.partition.eof": True,
                        "auto.offset.reset": "error",
                        "isolation.level": "read_committed",
                        # Reading another partition waits for the fetch in flight.
                        "fetch.wait.max.ms": 10,
                        "queued.max.messages.kbytes": 8192,
                    }
                )
            c = self._consumer
            if self._next != (topic, partition, offset):
                c.assign([RawTopicPartition(topic, partition, offset)])
            self._next = None
            out: list[Record] = []
            deadline = time.monotonic() + self._log.timeout_s
            while len(out) < max_records:
                first = c.poll(max(0.0, deadline - time.monotonic()))
                if first is None:
                    raise LogError(f"reading {topic}[{partition}] timed out")
                room = max_records - len(out) - 1
                for msg in [first, *(c.consume(room, 0) if room else [])]:
                    err = msg.error()
                    if err is None:
                        out.append(to_record(msg))
                        continue
                    if err.code() == KafkaError._PARTITION_EOF:
                        c.unassign()  # stop fetching an idle partition
                        return out
                    if err.code() not in (
                        KafkaError._AUTO_OFFSET_RESET,
                        KafkaError.OFFSET_OUT_OF_RANGE,
                    ):
                        raise_for(err, f"reading {topic}[{partition}]", topic)
                    tp = RawTopicPartition(topic, partition)
                    start, end = c.get_watermark_offsets(tp, timeout=self._log.timeout_s)
                    if offset >= end:
                        c.unassign()
                        return out
                    # Below the log start (retention): read from the oldest record kept.
                    c.assign([RawTopicPartition(topic, partition, max(offset, start))])
                    break
            self._next = (topic, partition, out[-1].offset + 1)
            return out

    def tail_start(self, topic: str, partition: int, start: int, end: int, limit: int) -> int:
        """The first offset of the newest records whose key and value bytes fit in ``limit``."""
        total, hi, chunk = 0, end, 256
        while hi > start:
            lo = max(start, hi - chunk)
            records: list[Record] = []
            at = lo
            while at < hi and (batch := self.read(topic, partition, at, hi - at)):
                records.extend(r for r in batch if r.offset < hi)
                at = batch[-1].offset + 1
            for r in reversed(records):
                total += len(r.value) + len(r.key or b"")
                if total > limit:
                    return r.offset + 1
            hi, chunk = lo, chunk * 2
        return start

    def close(self) -> None:
        with self._lock:
            consumer, self._consumer = self._consumer, None
            self._next = None
        if consumer is not None:
            consumer.close()


class CommittedOffsets:
    """Reads groups' committed offsets, each with a consumer of the group that never joins
    it: librdkafka's admin call for this crashes the process when the group coordinator
    moves (librdkafka issue 5040). Thread-safe."""

    def __init__(self, log: KafkaHandle) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._readers: dict[str, RawConsumer] = {}

    def read(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        """Stable committed offsets of ``group`` in ``topic`` (which has ``partitions``), 0
        where it never committed; waits for a transaction that commits some to finish."""
        wanted = [RawTopicPartition(topic, p) for p in range(partitions)]
        timeout_s = self._log.timeout_s

        def call() -> dict[int, int]:
            result = self._reader(group).committed(wanted, timeout=timeout_s)
            for tp in result:
                if tp.error is not None:
                    raise KafkaException(tp.error)
            return {tp.partition: max(tp.offset, 0) for tp in result}

        doing = f"reading the offsets of group {group!r}"
        try:
            return retrying(call, timeout_s, doing, topic, on_stale=lambda: self._drop(group))
        except LogError:
            self._drop(group)  # the next read starts with a client of its own
            raise

    def _reader(self, group: str) -> RawConsumer:
        with self._lock:
            reader = self._readers.get(group)
            if reader is None:
                reader = RawConsumer(
                    {
                        **self._log.consumer_config,
                        "group.id": group,
                        "enable.auto.commit": False,
                        "isolation.level": "read_committed",
                    }
                )
                self._readers[group] = reader
            return reader

    def _drop(self, group: str) -> None:
        with self._lock:
            reader = self._readers.pop(group, None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        with self._lock:
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()
