"""The lake stage (group ``lake``): writes the ``events`` and ``dlq`` topics into Delta tables
in micro-batches.

Exactly once: each Delta commit carries, per log partition it covers, an application
transaction ``clew:{topic}:{partition}`` whose version is the last offset written. On (re)start
the sink seeks every partition to that version + 1, so a crash between the Delta commit and
the log commit neither loses nor duplicates rows. The log commit is still made, for lag.
An object-storage outage is one more error to retry (``OSError``, transient for the runner):
a commit is atomic, and one that landed although its answer was lost, and that deltalake
then tries again, fails on its own application transaction instead of adding rows twice.

Small files from frequent micro-batches are compacted (Delta optimize) and unreferenced files
vacuumed on a schedule; readers always see a consistent Delta snapshot meanwhile.

Before each Delta commit, the batch's identifiers and partitions go into the person index
(``clew.lake.person_index``), durably, so that a privacy deletion finds every partition
holding a person without scanning the lake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from deltalake import CommitProperties, Transaction, write_deltalake

from clew._locations import LakeLocation, TableLocation, as_location
from clew.config import LakeSettings
from clew.identity.rules import IdentityRules
from clew.lake.person_index import PersonIndex, index_path
from clew.lake.tables import TABLES_BY_TOPIC, TableDef, sink_app_id, to_arrow
from clew.log.base import Consumer, Record, TopicPartition
from clew.stages.base import Stage

logger = logging.getLogger(__name__)


class _Buffer:
    __slots__ = ("by_partition", "first_at", "last_offsets", "size")

    def __init__(self) -> None:
        self.by_partition: dict[int, list[bytes]] = {}
        self.last_offsets: dict[int, int] = {}
        self.first_at = 0.0
        self.size = 0

    def add(self, partition: int, offset: int, value: bytes) -> None:
        self.by_partition.setdefault(partition, []).append(value)
        self.last_offsets[partition] = offset
        self.size += 1

    def drop(self, partition: int) -> None:
        self.size -= len(self.by_partition.pop(partition, ()))
        self.last_offsets.pop(partition, None)

    def values(self) -> list[bytes]:
        return [v for values in self.by_partition.values() for v in values]


class LakeSinkStage(Stage):
    group = "lake"
    topics = tuple(TABLES_BY_TOPIC)

    def __init__(
        self,
        lake: Path | LakeLocation,
        settings: LakeSettings,
        rules: IdentityRules | None = None,
        index_dir: Path | None = None,
    ) -> None:
        """``lake``: the lake's root, a directory or object storage. ``rules``: the identity
        rules, whose custom id types the person index extracts (default: the default rules).
        ``index_dir``: where the person index file lives (the data directory; default: the
        parent of a local lake directory, required for a lake on object storage)."""
        self._root = as_location(lake)
        if index_dir is None:
            index_dir = self._root.local_path("a lake sink without an index_dir").parent
        self._index_dir = index_dir
        self._settings = settings
        self._rules = rules
        self._index: PersonIndex | None = None
        self._buffers = {t: _Buffer() for t in self.topics}
        # Per owned partition, the last offset written or buffered: a record at or below it
        # is one the lake has (a redelivery after a seek or a rebalance), and is skipped.
        self._last: dict[TopicPartition, int] = {}
        self._consumer: Consumer | None = None
        self._commits_since_compact = dict.fromkeys(self.topics, 0)
        self.rows_written = dict.fromkeys(self.topics, 0)

    def table_path(self, table: TableDef) -> TableLocation:
        return self._root.table(table.name)

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        """Partitions kept across a rebalance keep their buffered rows and position; rows of
        partitions gone to another member are dropped (uncommitted: it reads them again); a
        new partition resumes after the last offset in the Delta log. A new consumer (the
        runner's restart after an error) starts everything afresh."""
        if consumer is not self._consumer:
            self._consumer = consumer
            self._buffers = {t: _Buffer() for t in self.topics}
            self._last = {}
        owned = set(assignment)
        for tp in [tp for tp in self._last if tp not in owned]:
            del self._last[tp]
            self._buffers[tp[0]].drop(tp[1])
        for topic, partition in owned - self._last.keys():
            self._last[(topic, partition)] = -1
            dt = self.table_path(TABLES_BY_TOPIC[topic]).open_if_exists()
            if dt is None:
                continue
            version = dt.transaction_version(sink_app_id(topic, partition))
            if version is not None:
                self._last[(topic, partition)] = version
                consumer.seek(topic, partition, version + 1)

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        now = time.monotonic()
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset <= self._last.get(tp, -1):
                continue
            self._last[tp] = rec.offset
            buf = self._buffers[rec.topic]
            if not buf.size:
                buf.first_at = now
            buf.add(rec.partition, rec.offset, rec.value)
        for topic, buf in self._buffers.items():
            if buf.size >= self._settings.flush_rows:
                self._flush(topic, consumer)

    def tick(self, consumer: Consumer) -> None:
        now = time.monotonic()
        for topic, buf in self._buffers.items():
            if buf.size and (now - buf.first_at) * 1000 >= self._settings.flush_interval_ms:
                self._flush(topic, consumer)

    def settle(self, consumer: Consumer) -> None:
        self.close(consumer)

    def close(self, consumer: Consumer) -> None:
        for topic, buf in self._buffers.items():
            if buf.size:
                self._flush(topic, consumer)

    def _flush(self, topic: str, consumer: Consumer) -> None:
        buf = self._buffers[topic]
        table = TABLES_BY_TOPIC[topic]
        values = buf.values()
        data = to_arrow(table, values)
        txns = [Transaction(sink_app_id(topic, p), off) for p, off in buf.last_offsets.items()]
        path = self.table_path(table)
        if self._index is None:
            self._index = PersonIndex(
                index_path(self._index_dir), [self._root], self._rules, writer=True
            )
        self._index.record(table.name, values, data, topic, buf.last_offsets)
        write_deltalake(
            path.uri,
            data,
            storage_options=path.storage_options,
            mode="append",
            partition_by=[table.partition_by],
            commit_properties=CommitProperties(app_transactions=txns),
            schema_mode="merge",
        )
        consumer.commit({(topic, p): off + 1 for p, off in buf.last_offsets.items()})
        self.rows_written[topic] += len(values)
        self._buffers[topic] = _Buffer()
        self._commits_since_compact[topic] += 1
        if self._commits_since_compact[topic] >= self._settings.compact_every_commits:
            self._commits_since_compact[topic] = 0
            self.maintain(table)

    def maintain(self, table: TableDef) -> None:
        """Compact small files, checkpoint the Delta log, and vacuum files no snapshot younger
        than the retention still references."""
        maintain_table(self.table_path(table), self._settings)


def maintain_table(path: Path | TableLocation, settings: LakeSettings) -> None:
    """Compact the Delta table at ``path`` (if it exists), checkpoint its log, and vacuum
    files no snapshot younger than ``settings.vacuum_retention_hours`` still references."""
    table = path if isinstance(path, TableLocation) else TableLocation(str(path))
    dt = table.open_if_exists()
    if dt is None:
        return
    started = time.monotonic()
    metrics = dt.optimize.compact()
    dt = table.open()
    dt.create_checkpoint()
    dt.cleanup_metadata()
    removed = dt.vacuum(
        retention_hours=int(settings.vacuum_retention_hours),
        enforce_retention_duration=False,
        dry_run=False,
    )
    logger.info(
        "compacted %s: %s files removed, %s added, %d vacuumed in %.2fs",
        table.name,
        metrics.get("numFilesRemoved"),
        metrics.get("numFilesAdded"),
        len(removed),
        time.monotonic() - started,
    )
