"""The person → partition index of the lake (``data_dir/lake_index.db``): for every identifier
an event carries, the dates of the ``events`` partitions (event time) and ``dlq`` partitions
(receive time) that hold such an event. A privacy deletion looks a person up here and reads
and rewrites only those partitions instead of scanning the lake (docs/privacy.md).

Entries are ``(token, table, day)``: a token is a keyed BLAKE2b hash (8 bytes; the key is
generated into the file) of an identifier, so the index names no one in clear. Tokens are a
superset of what identity resolution extracts (:func:`candidates`): no value is blocked,
an alias's ``previousId`` counts as both a user and an anonymous id, a phone number is
bucketed by its last seven digits (the same person may write it in many ways; a bucket is
shared by other numbers, so it costs extra partitions, never a missed one). A superset only
makes a deletion read more partitions; it is the deletion that decides, per row, with the real
extraction.

Durability: a missing entry is a missed partition, so the lake sink records a batch's entries,
with the log offsets they cover, in one SQLite transaction (``synchronous=FULL``) *before*
the Delta commit of the batch. A crash in between leaves entries for rows not yet written
(harmless), and the batch is written again, with the same entries, on restart.

Completeness (:meth:`PersonIndex.gaps`): the index covers a table when it was created before
the table had rows (or :meth:`PersonIndex.rebuild` ran since), its offsets reach the table's
application-transaction versions (the last offsets the sink wrote), and it extracted the custom
id types asked for from the start. Otherwise a deletion scans the whole table.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from hashlib import blake2b
from pathlib import Path
from typing import Any

import pyarrow as pa

from clew._datadir import LAKE_INDEX_FILE
from clew._locations import LakeLocation, as_location
from clew._sqlite import open_sqlite, transaction
from clew.identity.rules import IdentityRules
from clew.lake._index_keys import (
    MIN_LITERAL,
    NULL_DAY,
    PARTITION_COLUMNS,
    candidates,
    dead_decoder,
    dead_json,
    dead_letter_keys,
    event_keys,
    literals,
    phone_bucket,
    subject_keys,
)

__all__ = [
    "MIN_LITERAL",
    "NULL_DAY",
    "TABLE_IDS",
    "PersonIndex",
    "candidates",
    "day_date",
    "day_number",
    "event_keys",
    "index_path",
    "literals",
    "phone_bucket",
]

# Lake tables the index covers, and their ids in the file.
TABLE_IDS = {"events": 1, "dlq": 2}
# Entries a writer remembers having written (skipped when they come again).
_RECENT = 200_000
_EPOCH = date(1970, 1, 1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    token BLOB NOT NULL,
    tbl INTEGER NOT NULL,
    day INTEGER NOT NULL,
    PRIMARY KEY (token, tbl, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


def index_path(data_dir: Path) -> Path:
    return data_dir / LAKE_INDEX_FILE


def day_number(value: date) -> int:
    return (value - _EPOCH).days


def day_date(number: int) -> date | None:
    return None if number == NULL_DAY else _EPOCH + timedelta(days=number)


class PersonIndex:
    """One connection to the index file; safe to share between threads."""

    def __init__(
        self,
        path: Path,
        lake_roots: Sequence[Path | LakeLocation] = (),
        rules: IdentityRules | None = None,
        *,
        writer: bool = False,
    ) -> None:
        """Open (or create) the index. ``lake_roots``: the lake's roots (warm, cold); a
        new index is complete for a table only if they are given and none holds it yet.
        ``rules``: the identity rules whose custom id types are extracted (default: the
        defaults); only a ``writer`` (the lake sink) narrows the recorded custom-id coverage
        to its rules."""
        self._rules = rules if rules is not None else IdentityRules()
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        self._conn.execute("PRAGMA secure_delete = ON")
        self._lock = threading.Lock()
        with self._tx() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "key" not in meta:
                meta["key"] = secrets.token_hex(16)
                for table in TABLE_IDS:
                    # Without the lake's directories, nothing says the tables are empty.
                    exists = not lake_roots or any(_has_table(r, table) for r in lake_roots)
                    meta[f"complete:{table}"] = "0" if exists else "1"
                meta["custom"] = json.dumps({c.id_type: c.paths for c in self._rules.custom_ids})
            elif writer:
                # A custom path covered from the start stays covered only while it is still
                # extracted; one added later never is.
                now = {c.id_type: set(c.paths) for c in self._rules.custom_ids}
                old: dict[str, list[str]] = json.loads(meta["custom"])
                kept = {t: [p for p in ps if p in now.get(t, ())] for t, ps in old.items()}
                meta["custom"] = json.dumps({t: ps for t, ps in kept.items() if ps})
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        self._key = bytes.fromhex(meta["key"])
        self._custom: dict[str, list[str]] = json.loads(meta["custom"])
        # Per table id, the entries (id_type, value, day) written lately.
        self._recent: dict[int, set[tuple[str, str, int]]] = {}
        self._generation = -1

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn) as conn:
            yield conn

    def token(self, id_type: str, value: str) -> bytes:
        return blake2b(f"{id_type}\x00{value}".encode(), key=self._key, digest_size=8).digest()

    # -- writing (the lake sink) -------------------------------------------------------------

    def record(
        self,
        table: str,
        values: Sequence[bytes],
        rows: pa.Table,
        topic: str,
        offsets: Mapping[int, int],
    ) -> None:
        """Index one batch about to be written to ``table``: its log record ``values`` and the
        same rows as lake columns (``rows``), and the last ``offsets`` per log partition it
        covers. Durable when this returns."""
        if table == "events":
            keyed = event_keys(rows, self._rules)
        else:
            days = rows.column(PARTITION_COLUMNS[table]).cast(pa.int32()).to_pylist()
            keyed = set()
            for dead, day in zip(
                dead_decoder.decode(b"[" + b",".join(values) + b"]"), days, strict=True
            ):
                d = NULL_DAY if day is None else day
                keys = dead_letter_keys(dead.payload, dead.normalized, self._rules)
                keyed.update((t, v, d) for t, v in keys)
        self.add(TABLE_IDS[table], keyed, topic, offsets)

    def add(
        self,
        tbl: int,
        keyed: Iterable[tuple[str, str, int]],
        topic: str | None = None,
        offsets: Mapping[int, int] | None = None,
    ) -> None:
        entries = keyed if isinstance(keyed, set | frozenset) else set(keyed)
        with self._tx() as db:
            # Entries written lately are skipped (a person's events of one day come in many
            # batches), unless a forget ran since: then an entry may have to come back.
            row = db.execute("SELECT value FROM meta WHERE key = 'forgets'").fetchone()
            generation = int(row[0]) if row else 0
            if generation != self._generation or sum(map(len, self._recent.values())) > _RECENT:
                self._recent.clear()
                self._generation = generation
            recent = self._recent.get(tbl)
            new = entries - recent if recent else entries
            # In key order: the B-tree pages are then visited once each, in order, instead
            # of at random (tokens are hashes).
            db.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?)", sorted(self._rows(tbl, new))
            )
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE "
                "SET last_offset = max(last_offset, excluded.last_offset)",
                [(topic, p, off) for p, off in (offsets or {}).items()],
            )
        self._recent.setdefault(tbl, set()).update(new)

    def _rows(
        self, tbl: int, entries: Iterable[tuple[str, str, int]]
    ) -> list[tuple[bytes, int, int]]:
        """The ``entries`` rows of ``(id_type, value, day)``: :meth:`token` of each, from a
        hash state that has taken the key and ``id_type\\x00`` once per id type (hashing is
        incremental, so the digest is the same), instead of keying a new hash per entry."""
        started: dict[str, Any] = {}
        rows = []
        for id_type, value, day in entries:
            state = started.get(id_type)
            if state is None:
                state = started[id_type] = blake2b(
                    f"{id_type}\x00".encode(), key=self._key, digest_size=8
                )
            h = state.copy()
            h.update(value.encode())
            rows.append((h.digest(), tbl, day))
        return rows

    def mark_complete(self, table: str, offsets: Mapping[int, int], topic: str) -> None:
        """Declare the index complete for ``table`` up to ``offsets`` (after a rebuild)."""
        self.add(TABLE_IDS[table], (), topic, offsets)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (f"complete:{table}",))

    # -- reading and forgetting (privacy) ----------------------------------------------------

    def partitions(self, identifiers: Collection[tuple[str, str]]) -> dict[str, set[int]]:
        """Per table, the days (:func:`day_number`, or :data:`NULL_DAY`) whose partitions
        may hold a row carrying one of ``identifiers``."""
        keys, _ = subject_keys(identifiers)
        tokens = [self.token(t, v) for t, v in keys]
        out: dict[str, set[int]] = {name: set() for name in TABLE_IDS}
        names = {i: name for name, i in TABLE_IDS.items()}
        with self._lock:
            for token in tokens:
                for tbl, day in self._conn.execute(
                    "SELECT tbl, day FROM entries WHERE token = ?", (token,)
                ):
                    out[names[tbl]].add(day)
        return out

    def entries(self, identifiers: Collection[tuple[str, str]]) -> int:
        """How many entries only the person's rows make (what :meth:`forget` removes)."""
        _, own = subject_keys(identifiers)
        with self._lock:
            return sum(
                self._conn.execute(
                    "SELECT count(*) FROM entries WHERE token = ?", (self.token(t, v),)
                ).fetchone()[0]
                for t, v in own
            )

    def forget(self, identifiers: Collection[tuple[str, str]]) -> int:
        """Remove the entries only the person's rows make (not shared phone buckets); call
        once their rows are deleted. Returns how many entries went."""
        _, own = subject_keys(identifiers)
        tokens = [(self.token(t, v),) for t, v in own]
        with self._tx() as db:
            before = db.total_changes
            db.executemany("DELETE FROM entries WHERE token = ?", tokens)
            removed = db.total_changes - before
            # Tells writers that entries they wrote lately may be gone (see add).
            db.execute(
                "INSERT INTO meta VALUES ('forgets', '1') ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(value AS INTEGER) + 1"
            )
        self.checkpoint()
        return removed

    def checkpoint(self) -> bool:
        with self._lock:
            (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy == 0)

    def gaps(
        self,
        table: str,
        versions: Mapping[int, int],
        custom_types: Collection[str] = (),
        custom_paths: Mapping[str, Sequence[str]] | None = None,
    ) -> str | None:
        """Why the index may miss rows of ``table`` (``None``: it does not): ``versions`` are
        the table's last written offset per log partition; ``custom_types`` the custom id
        types a lookup needs, with their paths in ``custom_paths``."""
        with self._lock:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            indexed = dict(
                self._conn.execute(
                    "SELECT partition, last_offset FROM offsets WHERE topic = ?", (table,)
                ).fetchall()
            )
        if meta.get(f"complete:{table}") != "1":
            return "the index was created after the table had rows (rebuild it)"
        behind = [p for p, v in versions.items() if indexed.get(p, -1) < v]
        if behind:
            return f"the index is behind the table for log partitions {sorted(behind)}"
        covered: dict[str, list[str]] = json.loads(meta["custom"])
        for id_type in custom_types:
            wanted = (custom_paths or {}).get(id_type, ())
            if not set(wanted) <= set(covered.get(id_type, ())):
                return f"the index does not cover the custom id type {id_type!r}"
        return None

    def rebuild(
        self, table: str, roots: Sequence[Path | LakeLocation], offsets: Mapping[int, int]
    ) -> int:
        """Index every row of ``table`` under ``roots`` (warm and cold), then declare the
        index complete for it up to ``offsets`` (the table's application-transaction
        versions, read *before* this call, so rows the sink adds meanwhile are indexed by the
        sink). For a lake written before the index existed. Returns the rows read."""
        tbl = TABLE_IDS[table]
        part = "event_date" if table == "events" else "received_date"
        columns = _LAKE_COLUMNS[table]
        n = 0
        for root in roots:
            dataset = as_location(root).table(table).dataset()
            if dataset is None:
                continue
            names = [c for c in (*columns, part) if c in dataset.schema.names]
            for batch in dataset.to_batches(columns=names):
                rows = pa.Table.from_batches([batch])
                if table == "events":
                    self.add(tbl, event_keys(rows, self._rules))
                else:
                    self.record(table, [dead_json(r) for r in rows.to_pylist()], rows, "", {})
                n += batch.num_rows
        self.mark_complete(table, offsets, table)
        return n


_LAKE_COLUMNS = {
    "events": ("user_id", "anonymous_id", "previous_id", "traits", "context", "properties"),
    "dlq": ("payload", "normalized"),
}


def _has_table(root: Path | LakeLocation, table: str) -> bool:
    location = as_location(root)
    if location.is_local:
        return (Path(location.uri) / table / "_delta_log").is_dir()
    return location.table(table).exists()
