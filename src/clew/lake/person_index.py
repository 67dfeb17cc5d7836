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
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from hashlib import blake2b
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from clew._sqlite import open_sqlite
from clew.identity.rules import IdentityRules

INDEX_FILE = "lake_index.db"
# Lake tables the index covers, and their ids in the file.
TABLE_IDS = {"events": 1, "dlq": 2}
NULL_DAY = -(1 << 31)
# Entries a writer remembers having written (skipped when they come again).
_RECENT = 200_000
# Literal (unstructured) tokens are kept for values at least this long: shorter ones would
# tie a dead letter to everyone whose id happens to be "42".
MIN_LITERAL = 5

_EPOCH = date(1970, 1, 1)
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')

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
    return data_dir / INDEX_FILE


def day_number(value: date) -> int:
    return (value - _EPOCH).days


def day_date(number: int) -> date | None:
    return None if number == NULL_DAY else _EPOCH + timedelta(days=number)


def _text(raw: object) -> str | None:
    if raw is None or isinstance(raw, bool | dict | list):
        return None
    value = (raw if isinstance(raw, str) else str(raw)).strip()
    return value or None


def phone_bucket(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return digits[-7:]


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _at(doc: Mapping[str, Any], path: str) -> object:
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def candidates(doc: Mapping[str, Any], rules: IdentityRules) -> Iterator[tuple[str, str]]:
    """Every ``(id_type, value)`` the event document (Segment field names) may yield to
    identity resolution, plus phone buckets (``phone#``); see the module docstring."""
    for field, id_type in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
        if (value := _text(doc.get(field))) is not None:
            yield id_type, value
    if (previous := _text(doc.get("previousId"))) is not None:
        yield "user_id", previous
        yield "anonymous_id", previous
        if rules.previous_id_type:
            yield rules.previous_id_type, previous
    traits = _obj(doc.get("traits"))
    context = _obj(doc.get("context"))
    ctx_traits = _obj(context.get("traits"))
    for source in (traits, ctx_traits):
        if (email := _text(source.get("email"))) is not None:
            yield "email", email.lower()
        if (phone := _text(source.get("phone"))) is not None:
            yield "phone#", phone_bucket(phone)
    external = context.get("externalIds")
    if isinstance(external, list):
        for entry in external:
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                continue
            if (value := _text(entry.get("id"))) is not None:
                yield entry["type"], value
    for custom in rules.custom_ids:
        for path in custom.paths:
            if (value := _text(_at(doc, path))) is not None:
                yield custom.id_type, value
                break
    match = _obj(_at(context, "clew.match"))
    link_type, link = match.get("id_type"), _text(match.get("value"))
    if isinstance(link_type, str) and link is not None:
        yield link_type, link


def subject_keys(
    identifiers: Iterable[tuple[str, str]],
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The keys to look a person up by, and (second) the subset that only rows deleted with
    the person carry, whose entries may therefore be removed afterwards."""
    own: set[tuple[str, str]] = set()
    shared: set[tuple[str, str]] = set()
    for id_type, value in identifiers:
        own.add((id_type, value.lower() if id_type == "email" else value))
        if id_type == "phone":
            shared.add(("phone#", phone_bucket(value)))
        if len(value) >= MIN_LITERAL:
            own.add(("*", value.lower()))
    return own | shared, own


def literals(text: str) -> Iterator[str]:
    """The JSON string literals of ``text`` at least :data:`MIN_LITERAL` long, trimmed and
    lower-cased (escapes left as written)."""
    for m in _LITERAL.finditer(text):
        value = m.group(1).strip().lower()
        if len(value) >= MIN_LITERAL:
            yield value


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None


def dead_letter_keys(
    payload: str | None, normalized: str | None, rules: IdentityRules
) -> set[tuple[str, str]]:
    """Keys of a dead letter: what its events (normalised, or as sent, or each of a batch)
    may yield, and every long string literal of its text."""
    keys: set[tuple[str, str]] = set()
    for text in (normalized, payload):
        doc = _loads(text)
        items = doc.get("batch") if isinstance(doc, dict) and "batch" in doc else doc
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                keys.update(candidates(item, rules))
        if text:
            keys.update(("*", lit) for lit in literals(text))
    return keys


def event_keys(rows: pa.Table, rules: IdentityRules) -> set[tuple[str, str, int]]:
    """``(id_type, value, day)`` of :func:`candidates` for a batch of ``events`` rows (the
    lake's columns), vectorised for the lake sink's hot path: ids are distinct column values
    per day, an email or phone is cut out of the JSON text when it occurs once as a plain
    string; only rows that need more (several or unusual occurrences, external ids, a matched
    import, a custom id field) are read as documents."""
    day = pc.fill_null(pc.cast(_column(rows, "event_date"), pa.int32()), NULL_DAY)
    keyed: set[tuple[str, str, int]] = set()

    def distinct(
        values: Any, days: Any, kinds: Sequence[str], norm: Callable[[str], str] = str
    ) -> None:
        values = pc.utf8_trim_whitespace(values)
        nonempty = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
        if not pc.any(nonempty).as_py():
            return
        # A set of Python pairs beats Arrow's group_by on batches of this size.
        kept, when = pc.filter(values, nonempty).to_pylist(), pc.filter(days, nonempty).to_pylist()
        pairs = set(zip(kept, when, strict=True))
        for v, d in pairs:
            keyed.update((kind, norm(v), d) for kind in kinds)

    distinct(_column(rows, "user_id"), day, ["user_id"])
    distinct(_column(rows, "anonymous_id"), day, ["anonymous_id"])
    previous = ["user_id", "anonymous_id"]
    if rules.previous_id_type:
        previous.append(rules.previous_id_type)
    distinct(_column(rows, "previous_id"), day, previous)
    slow = pa.repeat(False, rows.num_rows)
    for name in ("traits", "context"):
        text = _column(rows, name)
        for field, kind, norm in (("email", "email", str.lower), ("phone", "phone#", phone_bucket)):
            count = pc.fill_null(pc.count_substring(text, f'"{field}"'), 0)
            has = pc.greater(count, 0)
            if not pc.any(has).as_py():
                continue
            # Cut the value out only where the field occurs: the regex is the costly part.
            sub = pc.filter(text, has)
            got = pc.struct_field(pc.extract_regex(sub, rf'"{field}"\s*:\s*"(?P<v>[^"\\]*)"'), [0])
            plain = pc.and_(pc.equal(pc.filter(count, has), 1), pc.is_valid(got))
            slow = pc.or_(slow, pc.and_(has, pc.invert(_scatter(plain, has))))
            distinct(pc.filter(got, plain), pc.filter(pc.filter(day, has), plain), [kind], norm)
    markers = {path.rsplit(".", 1)[-1] for c in rules.custom_ids for path in c.paths}
    for name in ("traits", "context", "properties"):
        keys = markers | ({"externalIds", "clew"} if name == "context" else set())
        if keys:
            pattern = "|".join(f'"{re.escape(k)}"' for k in sorted(keys))
            hit = pc.match_substring_regex(_column(rows, name), pattern)
            slow = pc.or_(slow, pc.fill_null(hit, False))
    picked = rows.filter(slow)
    for row, d in zip(picked.to_pylist(), pc.filter(day, slow).to_pylist(), strict=True):
        doc = {
            "userId": row.get("user_id"),
            "anonymousId": row.get("anonymous_id"),
            "previousId": row.get("previous_id"),
            "traits": _loads(row.get("traits")),
            "context": _loads(row.get("context")),
            "properties": _loads(row.get("properties")),
        }
        keyed.update((t, v, d) for t, v in candidates(doc, rules))
    return keyed


_PARTITION = {"events": "event_date", "dlq": "received_date"}


def _scatter(values: Any, where: Any) -> Any:
    """``values`` (one per true element of ``where``) back at those positions; true
    elsewhere."""
    flat = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in (values, where)]
    return pc.replace_with_mask(pa.repeat(True, len(where)), flat[1], flat[0])


def _column(rows: pa.Table, name: str) -> Any:
    if name in rows.column_names:
        return rows.column(name)
    return pa.nulls(rows.num_rows, pa.date32() if name == "event_date" else pa.string())


def _dead_json(row: Mapping[str, Any]) -> bytes:
    return msgspec.json.encode({"payload": row.get("payload"), "normalized": row.get("normalized")})


class _Dead(msgspec.Struct):
    payload: str | None = None
    normalized: str | None = None


_deads = msgspec.json.Decoder(list[_Dead])


class PersonIndex:
    """One connection to the index file; safe to share between threads."""

    def __init__(
        self,
        path: Path,
        lake_roots: Sequence[Path] = (),
        rules: IdentityRules | None = None,
        *,
        writer: bool = False,
    ) -> None:
        """Open (or create) the index. ``lake_roots``: the lake's directories (warm, cold); a
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
                    exists = not lake_roots or any(_has_table(r / table) for r in lake_roots)
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
        self._recent: set[tuple[int, str, str, int]] = set()
        self._generation = -1

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _tx(self) -> _Tx:
        return _Tx(self._conn, self._lock)

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
            days = rows.column(_PARTITION[table]).cast(pa.int32()).to_pylist()
            keyed = set()
            for dead, day in zip(_deads.decode(b"[" + b",".join(values) + b"]"), days, strict=True):
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
        with self._tx() as db:
            # Entries written lately are skipped (a person's events of one day come in many
            # batches), unless a forget ran since: then an entry may have to come back.
            row = db.execute("SELECT value FROM meta WHERE key = 'forgets'").fetchone()
            generation = int(row[0]) if row else 0
            if generation != self._generation or len(self._recent) > _RECENT:
                self._recent.clear()
                self._generation = generation
            new = [(tbl, t, v, d) for t, v, d in keyed if (tbl, t, v, d) not in self._recent]
            db.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?)",
                [(self.token(t, v), tbl, d) for tbl, t, v, d in new],
            )
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE "
                "SET last_offset = max(last_offset, excluded.last_offset)",
                [(topic, p, off) for p, off in (offsets or {}).items()],
            )
        self._recent.update(new)

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

    def rebuild(self, table: str, roots: Sequence[Path], offsets: Mapping[int, int]) -> int:
        """Index every row of ``table`` under ``roots`` (warm and cold), then declare the
        index complete for it up to ``offsets`` (the table's application-transaction
        versions, read *before* this call, so rows the sink adds meanwhile are indexed by the
        sink). For a lake written before the index existed. Returns the rows read."""
        from deltalake import DeltaTable

        tbl = TABLE_IDS[table]
        part = "event_date" if table == "events" else "received_date"
        columns = _LAKE_COLUMNS[table]
        n = 0
        for root in roots:
            path = root / table
            if not _has_table(path):
                continue
            dataset = DeltaTable(str(path)).to_pyarrow_dataset()
            names = [c for c in (*columns, part) if c in dataset.schema.names]
            for batch in dataset.to_batches(columns=names):
                rows = pa.Table.from_batches([batch])
                if table == "events":
                    self.add(tbl, event_keys(rows, self._rules))
                else:
                    self.record(table, [_dead_json(r) for r in rows.to_pylist()], rows, "", {})
                n += batch.num_rows
        self.mark_complete(table, offsets, table)
        return n


_LAKE_COLUMNS = {
    "events": ("user_id", "anonymous_id", "previous_id", "traits", "context", "properties"),
    "dlq": ("payload", "normalized"),
}


class _Tx:
    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self._conn, self._lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            self._conn.execute("ROLLBACK" if kind is not None else "COMMIT")
        finally:
            self._lock.release()


def _has_table(path: Path) -> bool:
    return (path / "_delta_log").is_dir()
