"""The lake stage (group ``lake``): writes the ``events`` and ``dlq`` topics into Delta tables
in micro-batches.

Exactly once: each Delta commit carries, per log partition it covers, an application
transaction ``clew:{topic}:{partition}`` whose version is the last offset written. On (re)start
the sink seeks every partition to that version + 1, so a crash between the Delta commit and
the log commit neither loses nor duplicates rows. The log commit is still made, for lag.

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

from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from clew.config import LakeSettings
from clew.identity.rules import IdentityRules
from clew.lake.person_index import PersonIndex, index_path
from clew.lake.tables import TABLES_BY_TOPIC, TableDef, to_arrow
from clew.log.base import Consumer, Record, TopicPartition
from clew.stages.base import Stage

logger = logging.getLogger(__name__)


def app_id(topic: str, partition: int) -> str:
    return f"clew:{topic}:{partition}"


class _Buffer:
    __slots__ = ("first_at", "last_offsets", "values")

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.last_offsets: dict[int, int] = {}
        self.first_at = 0.0


class LakeSinkStage(Stage):
    group = "lake"
    topics = tuple(TABLES_BY_TOPIC)

    def __init__(
        self, lake_path: Path, settings: LakeSettings, rules: IdentityRules | None = None
    ) -> None:
        """``rules``: the identity rules, whose custom id types the person index extracts
        (default: the default rules)."""
        self._root = lake_path
        self._settings = settings
        self._rules = rules
        self._index: PersonIndex | None = None
        self._buffers = {t: _Buffer() for t in self.topics}
        self._commits_since_compact = dict.fromkeys(self.topics, 0)
        self.rows_written = dict.fromkeys(self.topics, 0)

    def table_path(self, table: TableDef) -> Path:
        return self._root / table.name

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        self._buffers = {t: _Buffer() for t in self.topics}
        for topic, partition in assignment:
            path = self.table_path(TABLES_BY_TOPIC[topic])
            if not DeltaTable.is_deltatable(str(path)):
                continue
            version = DeltaTable(str(path)).transaction_version(app_id(topic, partition))
            if version is not None:
                consumer.seek(topic, partition, version + 1)

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        now = time.monotonic()
        for rec in records:
            buf = self._buffers[rec.topic]
            if not buf.values:
                buf.first_at = now
            buf.values.append(rec.value)
            buf.last_offsets[rec.partition] = rec.offset
        for topic, buf in self._buffers.items():
            if len(buf.values) >= self._settings.flush_rows:
                self._flush(topic, consumer)

    def tick(self, consumer: Consumer) -> None:
        now = time.monotonic()
        for topic, buf in self._buffers.items():
            if buf.values and (now - buf.first_at) * 1000 >= self._settings.flush_interval_ms:
                self._flush(topic, consumer)

    def close(self, consumer: Consumer) -> None:
        for topic, buf in self._buffers.items():
            if buf.values:
                self._flush(topic, consumer)

    def _flush(self, topic: str, consumer: Consumer) -> None:
        buf = self._buffers[topic]
        table = TABLES_BY_TOPIC[topic]
        data = to_arrow(table, buf.values)
        txns = [Transaction(app_id(topic, p), off) for p, off in buf.last_offsets.items()]
        path = self.table_path(table)
        if self._index is None:
            self._index = PersonIndex(
                index_path(self._root.parent), [self._root], self._rules, writer=True
            )
        self._index.record(table.name, buf.values, data, topic, buf.last_offsets)
        write_deltalake(
            str(path),
            data,
            mode="append",
            partition_by=[table.partition_by],
            commit_properties=CommitProperties(app_transactions=txns),
            schema_mode="merge",
        )
        consumer.commit({(topic, p): off + 1 for p, off in buf.last_offsets.items()})
        self.rows_written[topic] += len(buf.values)
        self._buffers[topic] = _Buffer()
        self._commits_since_compact[topic] += 1
        if self._commits_since_compact[topic] >= self._settings.compact_every_commits:
            self._commits_since_compact[topic] = 0
            self.maintain(table)

    def maintain(self, table: TableDef) -> None:
        """Compact small files, checkpoint the Delta log, and vacuum files no snapshot younger
        than the retention still references."""
        maintain_table(self.table_path(table), self._settings)


def maintain_table(path: Path, settings: LakeSettings) -> None:
    """Compact the Delta table at ``path`` (if it exists), checkpoint its log, and vacuum
    files no snapshot younger than ``settings.vacuum_retention_hours`` still references."""
    if not DeltaTable.is_deltatable(str(path)):
        return
    started = time.monotonic()
    dt = DeltaTable(str(path))
    metrics = dt.optimize.compact()
    dt = DeltaTable(str(path))
    dt.create_checkpoint()
    dt.cleanup_metadata()
    removed = dt.vacuum(
        retention_hours=int(settings.vacuum_retention_hours),
        enforce_retention_duration=False,
        dry_run=False,
    )
    logger.info(
        "compacted %s: %s files removed, %s added, %d vacuumed in %.2fs",
        path.name,
        metrics.get("numFilesRemoved"),
        metrics.get("numFilesAdded"),
        len(removed),
        time.monotonic() - started,
    )
