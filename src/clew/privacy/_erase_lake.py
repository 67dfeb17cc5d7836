"""Deleting a person from the lake's Delta tables, warm and cold (used by
``clew.privacy.erase``).

Rows of ``events`` and ``dlq`` are found by reading only the partitions the person index names
(all of them when the index cannot vouch for the table), narrowing with a vectorised substring
test, and deciding row by row with :class:`~clew.privacy._erase_match.Matcher`. They are then
removed with one Delta DELETE per table whose predicate names the partitions and the rows by
``message_id`` (by a hash of the row's content when a message id is shared with another
person's row). Profile tables are deleted from by hashed profile ids. Predicates never hold an
identifier or profile id in clear, because Delta keeps each commit's predicate in its log.

Afterwards no earlier version may still hold the rows: the removed files are vacuumed at once
(zero retention; only files the Delta log removed, never files a concurrent writer has not
committed yet), stray unreferenced files older than ``ORPHAN_AGE_S`` in the touched
directories go too, and the Delta log is checkpointed and its earlier commits and checkpoints
deleted, since their file statistics (column minimum and maximum) can quote the person. Time
travel to versions before the deletion ends there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from deltalake.exceptions import CommitFailedError
from pyarrow import fs as pafs

from clew._locations import LakeLocation, TableLocation, as_location
from clew.events import Event
from clew.lake.person_index import NULL_DAY, day_date
from clew.privacy._erase_match import MALFORMED, Matcher
from clew.privacy._verify_bytes import re2_escape

EVENTS = "events"
DLQ = "dlq"
PARTITION_COLUMN = {EVENTS: "event_date", DLQ: "received_date"}
_READ = {
    EVENTS: (
        "message_id",
        "type",
        "user_id",
        "anonymous_id",
        "previous_id",
        "timestamp",
        "context",
        "traits",
        "properties",
    ),
    DLQ: ("dlq_id", "payload", "normalized", "received_at"),
}
# The columns whose hash names an events row when its message id is not unique in its
# partitions (the same expression in Python and in the Delta predicate).
_ROW_KEY = ("message_id", "user_id", "anonymous_id", "traits", "context")
_DLQ_KEY = ("dlq_id", "payload")
# Unreferenced files younger than this may belong to a write not committed yet.
ORPHAN_AGE_S = 600.0
_ATTEMPTS = 5
_LOG_FILE = re.compile(r"^(\d{20})\.")


@dataclass
class LakeOutcome:
    removed: Counter[str] = field(default_factory=Counter)
    partitions: int = 0
    rows_read: int = 0
    vacuumed: int = 0
    notes: list[str] = field(default_factory=list)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _md5(*parts: str | None) -> str:
    return hashlib.md5("|".join(p or "" for p in parts).encode()).hexdigest()


def _md5_sql(columns: Sequence[str]) -> str:
    return "md5(concat_ws('|', " + ", ".join(f"coalesce({c}, '')" for c in columns) + "))"


def _in(expr: str, values: Iterable[str]) -> str:
    return f"{expr} IN ({', '.join(_quote(v) for v in sorted(values))})"


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def is_table(path: Path | TableLocation) -> bool:
    return (path if isinstance(path, TableLocation) else TableLocation(str(path))).exists()


class _Pattern:
    """A vectorised superset test: rows whose text columns may quote the person."""

    def __init__(self, matcher: Matcher, strict: bool) -> None:
        values = {v.lower() for _, v in matcher.identifiers}
        unsafe = re.compile(r'[\x00-\x1f"\\/\x7f-\U0010ffff]' if strict else r'[\x00-\x1f"\\]')
        self.usable = bool(values) and not any(unsafe.search(v) for v in values)
        needles = [re2_escape(v) for v in sorted(values)]
        if any(t == "phone" for t, _ in matcher.identifiers):
            needles.append('"phone"')
        self.regex = "|".join(needles)

    def mask(self, batch: pa.RecordBatch, columns: Sequence[str]) -> pa.Array:
        if not self.usable:
            return pa.array([True] * batch.num_rows)
        out = pa.array([False] * batch.num_rows)
        for name in columns:
            col = batch.column(name)
            hit = pc.fill_null(pc.match_substring_regex(col, self.regex, ignore_case=True), False)
            out = pc.or_(out, hit)
        return out


def _day_filter(column: str, days: set[int] | None) -> pds.Expression | None:
    if days is None:
        return None
    dates = [d for d in (day_date(n) for n in days if n != NULL_DAY) if d is not None]
    expr = pds.field(column).isin(pa.array(dates, pa.date32()))
    if NULL_DAY in days:
        expr = expr | pds.field(column).is_null()
    return expr


def _day_sql(column: str, days: Iterable[date | None]) -> str:
    dated = sorted(d.isoformat() for d in days if d is not None)
    terms = [_in(column, dated)] if dated else []
    if any(d is None for d in days):
        terms.append(f"{column} IS NULL")
    return "(" + " OR ".join(terms) + ")" if terms else "false"


def _dir_name(column: str, day: date | None) -> str:
    return f"{column}={day.isoformat() if day else '__HIVE_DEFAULT_PARTITION__'}"


def _event_of(row: Mapping[str, Any]) -> Event:
    return Event(
        type=row.get("type") or "",
        message_id=row.get("message_id") or "",
        timestamp="",
        received_at="",
        source_id="",
        user_id=row.get("user_id"),
        anonymous_id=row.get("anonymous_id"),
        previous_id=row.get("previous_id"),
        traits=_json(row.get("traits")),
        context=_json(row.get("context")),
        properties=_json(row.get("properties")),
    )


def _event_row(m: Matcher, row: Mapping[str, Any], columns: Sequence[str]) -> bool:
    """Whether an ``events`` row is the person's, in the time range; a row that cannot be
    read as an event (a JSON column holding a lone surrogate) is matched as bytes."""
    try:
        return m.carries(_event_of(row)) and m.in_range(_ms(row.get("timestamp")))
    except MALFORMED:
        texts = [t for t in (row.get(c) for c in columns) if isinstance(t, str)]
        return m.whole and any(m.in_text(t) for t in texts)


class LakeEraser:
    """Deletes what ``matcher`` selects from the tables under ``roots`` (directories or
    object storage)."""

    def __init__(self, roots: Sequence[Path | LakeLocation], matcher: Matcher) -> None:
        located = [as_location(r) for r in roots]
        self._roots = [r for r in located if not r.is_local or Path(r.uri).is_dir()]
        self._matcher = matcher
        self.outcome = LakeOutcome()

    def partitioned(self, table: str, days: set[int] | None) -> None:
        """Delete the person's rows of ``events`` or ``dlq`` (in the time range) from the
        partitions ``days`` (``None``: every partition)."""
        if (days is not None and not days) or not self._matcher.identifiers:
            return
        for root in self._roots:
            path = root.table(table)
            if not is_table(path):
                continue
            self._rows(path, table, days)
            part = PARTITION_COLUMN[table]
            if days is None:
                dirs = {d for d in _children(path) if d.startswith(part + "=")}
            else:
                dirs = {_dir_name(part, day_date(n)) for n in days}
            self._purge(path, dirs)

    def by_profile(self, table: str, predicate: Callable[[set[str]], str]) -> None:
        """Delete the rows of an unpartitioned profile table that ``predicate`` (of the hashed
        profile ids) selects."""
        pids = {hashlib.md5(p.encode()).hexdigest() for p in self._matcher.profile_ids}
        if not pids:
            return
        for root in self._roots:
            path = root.table(table)
            if not is_table(path):
                continue
            self.outcome.removed[table] += self._delete(path, predicate(pids))
            self._purge(path, {""})

    # -- finding rows ------------------------------------------------------------------------

    def _batches(
        self, path: TableLocation, table: str, days: set[int] | None
    ) -> tuple[pds.Dataset, pds.Expression | None, Iterator[pa.RecordBatch]]:
        part = PARTITION_COLUMN[table]
        dt = path.open()
        if days is None:
            dataset = dt.to_pyarrow_dataset()
        else:
            # Only the files of those partitions become fragments (listing every file of a
            # large table costs more than reading a few partitions).
            dates = [day_date(n) for n in days]
            dataset = dt.to_pyarrow_dataset(file_pruning_predicate=_day_sql(part, dates))
        columns = [c for c in (*_READ[table], part) if c in dataset.schema.names]
        where = _day_filter(part, days)
        return dataset, where, iter(dataset.to_batches(columns=columns, filter=where))

    def _rows(self, path: TableLocation, table: str, days: set[int] | None) -> None:
        m = self._matcher
        part = PARTITION_COLUMN[table]
        pattern = _Pattern(m, strict=table == DLQ)
        text_cols = (
            ("user_id", "anonymous_id", "previous_id", "context", "traits", "properties")
            if table == EVENTS
            else ("payload", "normalized")
        )
        dataset, where, batches = self._batches(path, table, days)
        found: dict[str, set[date | None]] = {}
        per_id: Counter[str] = Counter()
        for batch in batches:
            self.outcome.rows_read += batch.num_rows
            cols = [c for c in text_cols if c in batch.schema.names]
            picked = batch.filter(pattern.mask(batch, cols))
            for row in picked.to_pylist():
                if table == EVENTS:
                    hit = _event_row(m, row, cols)
                    key = row.get("message_id") or ""
                else:
                    hit = m.dead_letter(row)
                    key = _md5(*(row.get(c) for c in _DLQ_KEY))
                if hit:
                    if table == EVENTS:
                        per_id[key] += 1
                        key = key + "\x00" + _md5(*(row.get(c) for c in _ROW_KEY))
                    found.setdefault(key, set()).add(row.get(part))
        if not found:
            return
        dates = {d for ds in found.values() for d in ds}
        self.outcome.partitions += len(dates)
        if table == EVENTS:
            predicate = self._events_predicate(dataset, where, found, per_id)
        else:
            predicate = _in(_md5_sql(_DLQ_KEY), found)
        removed = self._delete(path, f"{_day_sql(part, dates)} AND ({predicate})")
        self.outcome.removed[table] += removed

    def _events_predicate(
        self,
        dataset: pds.Dataset,
        where: pds.Expression | None,
        found: Mapping[str, set[date | None]],
        per_id: Counter[str],
    ) -> str:
        """By message id, except for ids another row of the partitions read also has."""
        ids = pa.array(list(per_id), pa.string())
        scope = pds.field("message_id").isin(ids)
        scope = scope if where is None else scope & where
        counts = dataset.to_table(columns=["message_id"], filter=scope).column("message_id")
        seen = Counter(counts.to_pylist())
        # A row without a message id is named by its hash too.
        shared = {mid for mid, n in per_id.items() if seen[mid] > n or not mid}
        plain = [mid for mid in per_id if mid not in shared]
        hashed = [k.split("\x00", 1)[1] for k in found if k.split("\x00", 1)[0] in shared]
        terms = [_in("message_id", plain)] if plain else []
        if hashed:
            terms.append(_in(_md5_sql(_ROW_KEY), hashed))
        return " OR ".join(terms) or "false"

    # -- deleting and purging ----------------------------------------------------------------

    def _delete(self, path: TableLocation, predicate: str) -> int:
        for attempt in range(_ATTEMPTS):
            try:
                metrics = path.open().delete(predicate)
                return int(metrics.get("num_deleted_rows") or 0)
            except CommitFailedError:
                # A concurrent writer (the sink's compaction, a tier move) won the commit.
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        return 0

    def _purge(self, path: TableLocation, touched: set[str]) -> None:
        """Remove every file version that may still hold deleted rows (module docstring)."""
        dt = path.open()
        # The tombstones just written carry this millisecond; vacuum keeps files removed
        # later than "now - retention", so let the clock move past them.
        time.sleep(0.002)
        self.outcome.vacuumed += len(
            dt.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
        )
        dt = path.open()
        referenced = set(dt.file_uris())
        filesystem, base = path.filesystem()
        cutoff = time.time() - ORPHAN_AGE_S
        for rel in touched:
            for f in _files(filesystem, f"{base}/{rel}" if rel else base):
                if (
                    f.extension == "parquet"
                    and path.file_uri(f.path) not in referenced
                    and f.mtime is not None
                    and f.mtime.timestamp() < cutoff
                ):
                    _remove(filesystem, f.path)
                    self.outcome.vacuumed += 1
        dt.create_checkpoint()
        keep_from = dt.version()
        for f in _files(filesystem, f"{base}/_delta_log"):
            m = _LOG_FILE.match(f.base_name)
            if m and int(m.group(1)) < keep_from:
                _remove(filesystem, f.path)


def _children(path: TableLocation) -> set[str]:
    """The names of the directories right under a table (its partitions and ``_delta_log``;
    on object storage, the common prefixes)."""
    filesystem, base = path.filesystem()
    selector = pafs.FileSelector(base, allow_not_found=True)
    return {
        f.base_name for f in filesystem.get_file_info(selector) if f.type == pafs.FileType.Directory
    }


def _files(filesystem: Any, folder: str) -> list[Any]:
    """The files right in ``folder`` (none if it does not exist)."""
    selector = pafs.FileSelector(folder, allow_not_found=True)
    return [f for f in filesystem.get_file_info(selector) if f.type == pafs.FileType.File]


def _remove(filesystem: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(path)
