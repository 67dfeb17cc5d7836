"""Proving an erasure: scan every store for anything of a person (docs/privacy.md).

:func:`verify` looks, independently of how :func:`~clew.privacy.erase.erase` deleted:

- the log: every retained record of every topic, read as records (the same per-record test
  as the erasure) and as raw key, value and header bytes; on Kafka sealed with data keys,
  the stored bytes and every record still readable (``clew.privacy._verify_kafka``);
- the raw bytes of every SQLite file in the data directory, with its write-ahead log (the log,
  the serving store, ``destinations.db``, ``imports.db``, the person index, everything else);
- every Parquet file under the lake and the cold tier, whether or not the current Delta
  snapshot still references it (old versions, orphans, Delta checkpoints): each string
  column, nested ones included; and the bytes of every other file there (Delta commits);
- the serving store through its API (identities, profiles and redirects, separations,
  timers, the profiles stage's undelivered outbox), so that a Redis store is covered too
  (Redis's own snapshot and append-only files are not read: docs/privacy.md);
  ``destinations.db`` and ``imports.db`` record by record; the person index's entries.

A record that cannot be read as records (invalid UTF-8, not JSON, fields of the wrong type) is
searched as bytes and listed in :attr:`VerifyReport.unreadable` (where, never what); it is a
trace only when one of the person's values is in it. A store that cannot be checked at all
(its file is damaged, its server is down) is a trace saying so: verification never raises.

A value is found in raw bytes and text columns as a substring (emails in any letter case), or,
when it is shorter than five characters, only as a whole column value or a quoted JSON string.
Each :class:`Trace` says where (file, column, byte offset, topic/partition/offset), never what.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clew.config import Settings
from clew.lake.person_index import PersonIndex
from clew.log.base import Log, Record
from clew.privacy._erase_match import Matcher, record_bytes
from clew.privacy._verify_bytes import (
    MIN_RAW,
    Needles,
    find,
    find_in_file,
    needles,
    re2_escape,
    scan_objects,
)
from clew.privacy.subject import Subject
from clew.store.base import ProfileStore
from clew.topics import RAW_TOPIC

_SQLITE_SUFFIXES = (".db", ".db-wal", ".db-journal", ".sqlite", ".sqlite-wal", ".sqlite3")
_SIDECARS = ("-wal", "-shm", "-journal")
_PAGE = 2000
# The serving-store outbox group of the profiles stage (``clew.audiences.live.OUTBOX``).
_STORE_OUTBOX = "profiles"


@dataclass
class Trace:
    store: str
    where: str


@dataclass
class VerifyReport:
    """``traces``: where something of the person remains (or a store that could not be
    checked); ``checked``: what was read; ``unreadable``: records that could not be read as
    records and were searched as bytes only (not traces unless they hold the person)."""

    traces: list[Trace] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    unreadable: list[Trace] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.traces


class _Verifier:
    def __init__(
        self, settings: Settings, subject: Subject, store: ProfileStore, log: Log, skip: set[Path]
    ) -> None:
        self.settings, self.subject, self.store, self.log = settings, subject, store, log
        # A skipped database goes with its write-ahead log and journal.
        self.skip = {
            p.resolve().with_name(p.name + suffix) for p in skip for suffix in ("", *_SIDECARS)
        }
        self.matcher = Matcher(subject, settings.identity.rules, on_unreadable=self._unreadable)
        self.needles: Needles = needles(subject.identifiers, subject.profile_ids)
        self.report = VerifyReport()
        # Text columns: a long value anywhere (emails in any case), a short one only as a
        # quoted JSON string or (below) the whole value.
        values = [*subject.identifiers, *(("profile_id", p) for p in subject.profile_ids)]
        exact = [re2_escape(v) for t, v in values if len(v) >= MIN_RAW and t != "email"]
        emails = [re2_escape(v) for t, v in values if len(v) >= MIN_RAW and t == "email"]
        short = [v for _, v in values if 0 < len(v) < MIN_RAW]
        parts = exact + [f'"{re2_escape(v)}"' for v in short]
        if emails:
            parts.append(f"(?i:{'|'.join(emails)})")
        self._column_regex = "|".join(parts) or None
        self._short = pa.array(short, pa.string())

    def trace(self, store: str, where: str) -> None:
        self.report.traces.append(Trace(store, where))

    def _unreadable(self, rec: Record) -> None:
        where = f"topic {rec.topic}, partition {rec.partition}, offset {rec.offset}"
        found = Trace("log", where)
        if found not in self.report.unreadable:
            self.report.unreadable.append(found)

    def log_records(self) -> None:
        if self.log.encrypts_per_person:
            # Sealed under per-person data keys: checked by decrypting (the shredding wrapper's
            # stored_records and opened, which _verify_kafka uses).
            from clew.log.shredding import ShreddingLog
            from clew.privacy._verify_kafka import verify_log

            sealed = cast(ShreddingLog, self.log)
            self.report.checked.append(verify_log(sealed, self.matcher, self.needles, self.trace))
            return
        n = 0
        topics = self.log.topics()
        for topic, spec in sorted(topics.items()):
            starts = self.log.start_offsets(topic)
            for p in range(spec.partitions):
                offset = starts.get(p, 0)
                while batch := self.log.read(topic, p, offset, _PAGE):
                    for rec in batch:
                        n += 1
                        mine = self.matcher.raw(rec)[0] if topic == RAW_TOPIC else None
                        hit = bool(mine) if mine is not None else self.matcher.record(rec)
                        raw = record_bytes(rec)
                        if hit or (self.needles and find(raw, self.needles) is not None):
                            self.trace("log", f"topic {topic}, partition {p}, offset {rec.offset}")
                    offset = batch[-1].offset + 1
        self.report.checked.append(f"log: {n} record(s) in {len(topics)} topic(s)")

    def serving_store(self) -> None:
        s, subject = self.store, self.subject
        for i, (id_type, value) in enumerate(subject.identifiers):
            if s.lookup(id_type, value) is not None:
                self.trace("serving store", f"identity index: identifier {i + 1} ({id_type})")
        pids = set(subject.profile_ids)
        for i, pid in enumerate(subject.profile_ids):
            if s.resolve(pid) is not None:
                self.trace("serving store", f"profile or redirect: profile id {i + 1}")
        ids = set(subject.identifiers)
        for sep in s.separations():
            if sep.a in ids or sep.b in ids:
                self.trace("serving store", f"separation ({sep.a[0]} / {sep.b[0]})")
        for pid, _ in s.due_timers(1 << 62, 1 << 30):
            if pid in pids:
                self.trace("serving store", "timer of one of the profile ids")
        pending = s.outbox_pending(_STORE_OUTBOX, 1 << 30)
        for seq, payload in pending:
            if self.needles and find(payload, self.needles) is not None:
                self.trace("serving store", f"outbox {_STORE_OUTBOX}, message {seq}")
        self.report.checked.append(
            f"serving store ({self.settings.store.backend}): identity index, profiles and "
            f"redirects, separations, timers, {len(pending)} undelivered outbox message(s)"
        )

    def files(self) -> None:
        data_dir = self.settings.data_dir
        located = (self.settings.lake_location, self.settings.cold_location)
        lake_roots = [p for r in located if r.is_local and (p := Path(r.uri)).is_dir()]
        sqlite_files = other_files = 0
        for path in _walk(data_dir, skip_dirs={r.resolve() for r in lake_roots}):
            if path.resolve() in self.skip:
                continue
            is_sqlite = path.name.endswith(_SQLITE_SUFFIXES)
            sqlite_files += is_sqlite
            other_files += not is_sqlite
            at = find_in_file(path, self.needles)
            if at is not None:
                self.trace("sqlite" if is_sqlite else "files", f"{_rel(path, data_dir)}, byte {at}")
        self.report.checked.append(
            f"raw bytes of {sqlite_files} SQLite file(s) and {other_files} other file(s) of the "
            "data directory"
        )
        parquet = other = 0
        for root in lake_roots:
            for path in _walk(root):
                if path.suffix == ".parquet":
                    parquet += 1
                    for column, rows in self._parquet(path):
                        self.trace(
                            "lake", f"{_rel(path, data_dir)}, column {column}, {rows} row(s)"
                        )
                else:
                    other += 1
                    at = find_in_file(path, self.needles)
                    if at is not None:
                        self.trace("lake", f"{_rel(path, data_dir)}, byte {at}")
        names = [_rel(r, data_dir) for r in lake_roots]
        for remote in (r for r in located if not r.is_local):
            scan = scan_objects(remote, self.needles, self._table_hits)
            parquet, other = parquet + scan.parquet, other + scan.other
            names.append(remote.uri)
            for where in scan.traces:
                self.trace("lake", where)
        self.report.checked.append(
            f"{parquet} Parquet file(s) (every string column) and {other} other file(s) under "
            f"{', '.join(names) or 'no lake'}"
        )

    def _parquet(self, path: Path) -> Iterator[tuple[str, int]]:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            self.trace("lake", f"{path.name}: unreadable Parquet ({type(exc).__name__})")
            return
        yield from self._table_hits(table)

    def _table_hits(self, table: pa.Table) -> Iterator[tuple[str, int]]:
        for name, column in _string_columns(table):
            hits = self._hits(column)
            if hits:
                yield name, hits

    def _hits(self, column: pa.ChunkedArray) -> int:
        """Rows of a string column holding one of the person's values, in one pass."""
        if self._column_regex is None:
            return 0
        hit = pc.fill_null(pc.match_substring_regex(column, self._column_regex), False)
        if len(self._short):
            hit = pc.or_(hit, pc.fill_null(pc.is_in(column, value_set=self._short), False))
        return int(pc.sum(hit).as_py() or 0)

    def outbox(self) -> None:
        from clew.destinations.outbox import Outbox

        path = self.settings.outbox_path
        if path.exists():
            outbox = Outbox(path)
            try:
                for where in outbox.forget(self.matcher.payload, self._mentions, dry_run=True):
                    self.trace("destinations outbox", where)
            finally:
                outbox.close()
            self.report.checked.append("destinations outbox: records, dead letters, errors")

    def _mentions(self, text: str) -> bool:
        lowered = text.lower()
        values = [v for _, v in self.subject.identifiers] + list(self.subject.profile_ids)
        return any(v.lower() in lowered for v in values if len(v) >= MIN_RAW)

    def imports(self) -> None:
        from clew.imports.ledger import ImportLedger

        path = self.settings.imports_path
        if path.exists():
            ledger = ImportLedger(path)
            try:
                for where in ledger.forget(
                    self.subject.identifiers, self.subject.profile_ids, dry_run=True
                ):
                    self.trace("imports", where)
            finally:
                ledger.close()
            self.report.checked.append("imports ledger and review queue")

    def lake_index(self) -> None:
        path = self.settings.lake_index_path
        if path.exists():
            index = PersonIndex(path)
            try:
                n = index.entries(self.subject.identifiers)
            finally:
                index.close()
            if n:
                self.trace(
                    "lake index", f"{path.name}: {n} partition entr{'y' if n == 1 else 'ies'}"
                )
            self.report.checked.append("lake index entries")

    def run(self) -> VerifyReport:
        steps = (
            ("log", self.log_records),
            ("serving store", self.serving_store),
            ("destinations outbox", self.outbox),
            ("imports", self.imports),
            ("lake index", self.lake_index),
            ("files", self.files),
        )
        for store, step in steps:
            try:
                step()
            except Exception as exc:
                # Whatever a damaged store raises, the other stores are still checked and the
                # report says this one could not be.
                self.trace(store, f"could not be checked ({type(exc).__name__}: {exc})")
        if self.report.unreadable:
            self.report.checked.append(
                f"{len(self.report.unreadable)} log record(s) could not be read as records and "
                "were searched as bytes"
            )
        if self.needles.short:
            self.report.checked.append(
                f"{self.needles.short} value(s) shorter than {MIN_RAW} characters were matched "
                "as whole values and quoted strings only, not in raw bytes"
            )
        return self.report


def _walk(root: Path, skip_dirs: Collection[Path] = ()) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if (here / d).resolve() not in skip_dirs]
        for name in names:
            yield here / name


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _string_columns(table: pa.Table) -> Iterator[tuple[str, pa.ChunkedArray]]:
    for name, column in zip(table.column_names, table.columns, strict=True):
        yield from _strings(name, column)


def _strings(name: str, column: pa.ChunkedArray) -> Iterator[tuple[str, pa.ChunkedArray]]:
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        yield name, column
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _strings(f"{name}.{t.field(i).name}", pc.struct_field(column, [i]))
    elif pa.types.is_map(t):
        keys = pa.chunked_array([c.keys for c in column.chunks], t.key_type)
        items = pa.chunked_array([c.items for c in column.chunks], t.item_type)
        yield from _strings(f"{name}.key", keys)
        yield from _strings(f"{name}.value", items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _strings(f"{name}[]", pc.list_flatten(column))


def verify(
    settings: Settings,
    subject: Subject,
    *,
    store: ProfileStore,
    log: Log,
    skip: Collection[Path] = (),
) -> VerifyReport:
    """Every trace of ``subject`` left in the data directory (module docstring); ``skip``:
    files not to scan (the request store while the request being verified still holds the
    identifier it was asked with)."""
    return _Verifier(settings, subject, store, log, set(skip)).run()
