"""The profiles-lake stage (group ``profiles-lake``): keeps the lake tables
``customer_profiles`` (one row per live profile) and ``identities`` (one row per identifier,
with its provenance) within seconds of the serving store, from the snapshots the profiles
stage announces on the ``changes`` topic; and adds each audience and trait change announced
there to the history table ``audience_changes``, once.

Changes are buffered for the lake's flush interval (or until ``flush_rows`` of them wait),
collapsed to the last state per profile id, and upserted with Delta MERGE, one commit per
table; the log offsets are committed after both commits. A snapshot replaces its profile's
row and that profile's identity rows; a ``profile_deleted`` removes them. An identifier that
moved to another profile is in that profile's snapshot, and the upsert by
``(id_type, value)`` moves its row.

Exactly-once effects without offsets in Delta: a row is replaced only by a state at least as
new (``updated_at`` is the change's ``changed_at``), and each profile's changes are keyed to
one log partition, in order. So a redelivered batch, snapshots of different profiles read out
of order across partitions, or a replay of the whole topic all end in the same tables (a
replay may show older states while it catches up).

``audience_changes`` is kept exactly once the same way, without offsets: its rows are
inserted with a MERGE on ``change_id`` that inserts only the changes the table lacks. Delta
application transactions per log partition (as the lake stage uses) would drop a redelivered
batch, but not a copy of a change at a new offset, which the profiles stage produces when it
re-sends its outbox after a crash. A change and its copies share ``changed_at``, so the MERGE
reads only the ``changed_date`` partitions of the batch, and it rewrites no file.

A MERGE rewrites the files holding the rows it changes; to bound that cost, the stage waits at
least twice as long as its last flush took before flushing again, and compacts and vacuums
the tables as the lake stage does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow as pa

from clew._locations import LakeLocation, TableLocation, as_location
from clew.audiences.changes import KINDS as AUDIENCE_KINDS
from clew.audiences.changes import decode as decode_audience_change
from clew.config import LakeSettings
from clew.events import parse_time
from clew.identity.changes import ProfileChange, ProfileDeleted, decode_change
from clew.identity.traits import LAST_PURCHASE, LIFETIME_VALUE, ORDERS_COUNT
from clew.lake._change_rows import AudienceChangeColumns
from clew.lake._profile_rows import IdentityColumns, ProfileColumns
from clew.lake.tables import (
    AUDIENCE_CHANGES,
    CUSTOMER_PROFILES,
    HISTORY_TABLES,
    IDENTITIES,
    STATE_TABLES,
    HistoryTable,
    StateTable,
)
from clew.log.base import Consumer, Record, TopicPartition
from clew.stages.base import Stage
from clew.stages.lake_sink import maintain_table
from clew.topics import CHANGES_TOPIC

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_DELETED = "_deleted"


def iso_ms(value: str) -> int:
    """Epoch milliseconds of an ISO-8601 time (exact, no float rounding)."""
    return (parse_time(value) - _EPOCH) // _ONE_MS


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _merged_away(changes: Sequence[ProfileChange | ProfileDeleted]) -> list[ProfileDeleted]:
    """Tombstones for the ids the snapshots say were merged into them and that have no change
    of their own in the batch: a merged-away profile's row goes in the same flush as its
    survivor's row is written, although its own ``profile_deleted`` is keyed to another
    partition and may be read later. A tombstone is as new as the snapshot that names it, so
    a later state of that id (a split that gives it back) still wins."""
    own = {c.profile_id for c in changes}
    gone: dict[str, ProfileDeleted] = {}
    for change in changes:
        if isinstance(change, ProfileDeleted):
            continue
        for old in change.merged_ids:
            held = gone.get(old)
            if old not in own and (
                held is None or iso_ms(held.changed_at) < iso_ms(change.changed_at)
            ):
                gone[old] = ProfileDeleted(
                    profile_id=old, into=change.profile_id, changed_at=change.changed_at
                )
    return list(gone.values())


class _Kind(msgspec.Struct):
    kind: str | None = None


_kind_decoder = msgspec.json.Decoder(_Kind)


class ProfilesSinkStage(Stage):
    group = "profiles-lake"
    topics = (CHANGES_TOPIC,)

    def __init__(self, lake_path: Path | LakeLocation, settings: LakeSettings) -> None:
        self._root = as_location(lake_path)
        self._settings = settings
        self._pending: dict[str, ProfileChange | ProfileDeleted] = {}
        self._audience = AudienceChangeColumns()
        self._offsets: dict[TopicPartition, int] = {}
        self._first_at = 0.0
        self._last_flush_s = 0.0
        self._commits_since_compact = 0
        self.profiles_written = 0
        self.audience_changes_written = 0
        self.flushes = 0

    def table_path(self, table: StateTable | HistoryTable) -> TableLocation:
        return self._root.table(table.name)

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        # Uncommitted changes are redelivered to whoever owns their partition now.
        self._pending = {}
        self._audience = AudienceChangeColumns()
        self._offsets = {}
        for table in STATE_TABLES:
            path = self.table_path(table)
            if not path.exists():
                path.create(table.schema, mode="ignore")
        for history in HISTORY_TABLES:
            path = self.table_path(history)
            if not path.exists():
                path.create(history.schema, partition_by=[history.partition_by], mode="ignore")

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        if not self._offsets:
            self._first_at = time.monotonic()
        for rec in records:
            self._offsets[(rec.topic, rec.partition)] = rec.offset
            try:
                change = decode_change(rec.value)
                if change is None:
                    self._add_audience_change(rec.value)
            except ValueError as exc:  # msgspec.DecodeError, or a bad time
                logger.error(
                    "skipping malformed change at %s/%d@%d: %s",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    exc,
                )
                continue
            if change is not None:
                # A profile's changes share a partition, so the last one read is the newest.
                self._pending[change.profile_id] = change
        if len(self._pending) + len(self._audience) >= self._settings.flush_rows:
            self._flush(consumer)

    def _add_audience_change(self, data: bytes) -> None:
        """Buffer the audience or trait change in ``data``; ignore another kind of record.
        Raises ``ValueError`` for a malformed audience or trait change."""
        audience = decode_audience_change(data)
        if audience is not None:
            self._audience.add(audience)
        elif _kind_decoder.decode(data).kind in AUDIENCE_KINDS:
            # decode() tells a malformed change from another kind only by returning None.
            raise ValueError("not a valid audience or trait change record")

    def tick(self, consumer: Consumer) -> None:
        if not self._offsets:
            return
        if not self._pending and not self._audience:
            # Only other kinds of records (volume alerts): nothing to write, just move on.
            self._commit(consumer)
            return
        wait_s = max(self._settings.flush_interval_ms / 1000, 2 * self._last_flush_s)
        if time.monotonic() - self._first_at >= wait_s:
            self._flush(consumer)

    def settle(self, consumer: Consumer) -> None:
        self.close(consumer)

    def close(self, consumer: Consumer) -> None:
        if self._pending or self._audience:
            self._flush(consumer)
        elif self._offsets:
            self._commit(consumer)

    def _commit(self, consumer: Consumer) -> None:
        consumer.commit({tp: off + 1 for tp, off in self._offsets.items()})
        self._offsets = {}

    def _flush(self, consumer: Consumer) -> None:
        started = time.monotonic()
        changes = list(self._pending.values())
        if changes:
            self._merge_profiles(changes)
            self._merge_identities(changes)
        if self._audience:
            self._merge_audience_changes(self._audience)
        self._commit(consumer)
        self.profiles_written += len(changes)
        self.audience_changes_written += len(self._audience)
        self.flushes += 1
        self._pending = {}
        self._audience = AudienceChangeColumns()
        self._commits_since_compact += 1
        if self._commits_since_compact >= self._settings.compact_every_commits:
            self._commits_since_compact = 0
            for table in (*STATE_TABLES, *HISTORY_TABLES):
                maintain_table(self.table_path(table), self._settings)
        self._last_flush_s = time.monotonic() - started

    def _merge_profiles(self, changes: list[ProfileChange | ProfileDeleted]) -> None:
        rows = ProfileColumns()
        deleted: list[bool] = []
        for change in [*changes, *_merged_away(changes)]:
            updated = iso_ms(change.changed_at)
            if isinstance(change, ProfileDeleted):
                # A tombstone: only the key and version matter.
                rows.add_identity(change.profile_id, (), {}, ())
                rows.add_activity(updated, updated, 0.0, 0, None, updated)
                deleted.append(True)
                continue
            c = change.computed
            last_purchase = c.get(LAST_PURCHASE)
            rows.add_identity(
                change.profile_id,
                ((i.type, i.value) for i in change.identities),
                change.traits,
                change.merged_ids,
            )
            rows.add_activity(
                iso_ms(change.first_seen),
                iso_ms(change.last_seen),
                float(c.get(LIFETIME_VALUE) or 0.0),
                int(c.get(ORDERS_COUNT) or 0),
                iso_ms(last_purchase) if isinstance(last_purchase, str) else None,
                updated,
            )
            deleted.append(False)
        source = rows.table().append_column(_DELETED, pa.array(deleted, pa.bool_()))
        dt = self.table_path(CUSTOMER_PROFILES).open()
        (
            dt.merge(source, "t.profile_id = s.profile_id", source_alias="s", target_alias="t")
            .when_matched_delete(f"s.{_DELETED} AND s.updated_at >= t.updated_at")
            .when_matched_update_all(
                f"NOT s.{_DELETED} AND s.updated_at >= t.updated_at", except_cols=[_DELETED]
            )
            .when_not_matched_insert_all(f"NOT s.{_DELETED}", except_cols=[_DELETED])
            .execute()
        )

    def _merge_identities(self, changes: list[ProfileChange | ProfileDeleted]) -> None:
        # One row per identifier: the same one can be in two snapshots of a batch (read out
        # of order across partitions); the newer state owns it.
        newest: dict[tuple[str, str], tuple[int, str, str, str, str, float | None]] = {}
        for change in changes:
            if isinstance(change, ProfileDeleted):
                continue
            updated = iso_ms(change.changed_at)
            for i in change.identities:
                held = newest.get((i.type, i.value))
                if held is None or updated >= held[0]:
                    newest[(i.type, i.value)] = (
                        updated,
                        change.profile_id,
                        i.message_id,
                        i.source_id,
                        i.time,
                        i.match_weight,
                    )
        rows = IdentityColumns()
        for (id_type, value), (updated, pid, mid, source_id, when, weight) in newest.items():
            rows.add(id_type, value, pid, mid, source_id, iso_ms(when), weight, updated)
        touched = ", ".join(_sql_string(c.profile_id) for c in [*changes, *_merged_away(changes)])
        dt = self.table_path(IDENTITIES).open()
        (
            dt.merge(
                rows.table(),
                "t.id_type = s.id_type AND t.value = s.value",
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update_all("s.updated_at >= t.updated_at")
            .when_not_matched_insert_all()
            # A touched profile's snapshot lists all its identifiers (a deleted one has
            # none): its other rows are gone, or moved to a profile not in this batch yet.
            .when_not_matched_by_source_delete(f"t.profile_id IN ({touched})")
            .execute()
        )

    def _merge_audience_changes(self, rows: AudienceChangeColumns) -> None:
        # The literal dates let Delta skip every other partition; the join on the partition
        # column alone would not.
        table = AUDIENCE_CHANGES
        day, key = table.partition_by, table.key
        dates = ", ".join(f"DATE {_sql_string(d)}" for d in rows.dates())
        dt = self.table_path(table).open()
        (
            dt.merge(
                rows.table(),
                f"t.{day} IN ({dates}) AND t.{day} = s.{day} AND t.{key} = s.{key}",
                source_alias="s",
                target_alias="t",
            )
            .when_not_matched_insert_all()
            .execute()
        )
