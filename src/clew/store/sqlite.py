"""The embedded serving store: one SQLite database in WAL mode, no server.

Every operation is one SQLite transaction; writes take the write lock up front
(``BEGIN IMMEDIATE``), so read-modify-write steps cannot interleave across threads or
processes. Within a process, calls are serialised on one connection. Inside
:meth:`~SQLiteProfileStore.transaction` the operations share one transaction (one fsync for a
whole batch); a nested block runs in a savepoint, and an operation that raises has written
nothing (each checks before its first write).
The identity table is also the identity index (its primary key is ``(id_type, value)``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from clew._sqlite import open_sqlite
from clew.store import _sqlite_timers as timers
from clew.store.base import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    Separation,
    StoreClosedError,
    StoredEvent,
    StoreError,
    Traits,
    TraitsMerge,
    TraitsUpdate,
    UnknownProfileError,
    keep_existing,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    profile_id TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    traits BLOB NOT NULL DEFAULT '{}',
    computed BLOB NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS identities (
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    match_weight REAL,
    PRIMARY KEY (id_type, value)
);
CREATE INDEX IF NOT EXISTS identities_profile ON identities (profile_id);
CREATE TABLE IF NOT EXISTS redirects (
    from_id TEXT PRIMARY KEY,
    into_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    match_weight REAL
);
CREATE INDEX IF NOT EXISTS redirects_into ON redirects (into_id);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_profile ON history (profile_id, seq);
CREATE TABLE IF NOT EXISTS offsets (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, partition)
);
CREATE TABLE IF NOT EXISTS separations (
    a_type TEXT NOT NULL,
    a_value TEXT NOT NULL,
    b_type TEXT NOT NULL,
    b_value TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (a_type, a_value, b_type, b_value)
);
"""

# Every redirect whose chain ends at the given profile id.
_CHAIN = """
WITH RECURSIVE chain(from_id) AS (
    SELECT from_id FROM redirects WHERE into_id = ?
    UNION
    SELECT r.from_id FROM redirects r JOIN chain c ON r.into_id = c.from_id
)
"""

# Drops a profile's history beyond its newest `history` events (parameters: profile id twice,
# then the history length).
_TRIM = (
    "DELETE FROM history WHERE profile_id = ? AND seq <= (SELECT seq FROM history "
    "WHERE profile_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)

_traits_decoder = msgspec.json.Decoder(dict[str, Any])
_CACHE_KIB = 32 * 1024
# Identities per bulk lookup statement (two parameters each; SQLite allows 32,766).
_CHUNK = 5_000


def _encode_traits(traits: Traits) -> bytes:
    if not isinstance(traits, dict):
        raise StoreError(f"traits must be a dict, got {type(traits).__name__}")
    return msgspec.json.encode(traits)


def _prov(row: Sequence[Any]) -> Provenance:
    return Provenance(row[0], row[1], row[2], row[3])


class SQLiteProfileStore(ProfileStore):
    def __init__(self, path: Path, synchronous: str = "NORMAL", history: int = 100) -> None:
        self._conn: sqlite3.Connection | None = open_sqlite(
            path, _SCHEMA + timers.SCHEMA, synchronous
        )
        # A stage batch touches hundreds of profiles spread over the whole database; SQLite's
        # default 2 MB page cache makes each batch re-read most index pages (measured: a
        # 32 MB cache, filled only as pages are used, gives the profiles stage ~10% more).
        self._conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        # Deleted and overwritten rows (trimmed history, replaced traits, an erased person)
        # are zeroed in the file, not left in free space, so that forgetting a person
        # leaves no bytes behind (docs/privacy.md).
        self._conn.execute("PRAGMA secure_delete = ON")
        self._lock = threading.RLock()
        self._depth = 0
        self.history = history
        self._path = path

    @property
    def local_file(self) -> Path:
        return self._path

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError("the profile store is closed")
            if self._depth:
                yield from self._savepoint(conn)
                return
            with self._tx(write=True):
                yield

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError("the profile store is closed")
            if self._depth:
                # Inside a block: every operation checks what it needs before its first
                # write, so one that raises has written nothing and needs no savepoint.
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (e.g. busy past the timeout) leaves the transaction open.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        self._depth += 1
        name = f"s{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            raise
        finally:
            conn.execute(f"RELEASE {name}")
            self._depth -= 1

    @staticmethod
    def _resolve(conn: sqlite3.Connection, profile_id: str) -> str | None:
        current = profile_id
        while True:
            if conn.execute("SELECT 1 FROM profiles WHERE profile_id = ?", (current,)).fetchone():
                return current
            row = conn.execute(
                "SELECT into_id FROM redirects WHERE from_id = ?", (current,)
            ).fetchone()
            if row is None:
                return None
            current = row[0]

    @classmethod
    def _live(cls, conn: sqlite3.Connection, profile_id: str) -> str:
        live = cls._resolve(conn, profile_id)
        if live is None:
            raise UnknownProfileError(profile_id)
        return live

    @staticmethod
    def _widen(conn: sqlite3.Connection, profile_id: str, first_ms: int, last_ms: int) -> None:
        conn.execute(
            "INSERT INTO profiles (profile_id, first_seen_ms, last_seen_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (profile_id) DO UPDATE SET "
            "first_seen_ms = min(first_seen_ms, excluded.first_seen_ms), "
            "last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
            (profile_id, first_ms, last_ms),
        )

    @staticmethod
    def _column(conn: sqlite3.Connection, column: str, profile_id: str) -> Traits:
        (raw,) = conn.execute(
            f"SELECT {column} FROM profiles WHERE profile_id = ?", (profile_id,)
        ).fetchone()
        return _traits_decoder.decode(raw)

    def _trim(self, conn: sqlite3.Connection, profile_id: str) -> None:
        conn.execute(_TRIM, (profile_id, profile_id, self.history))

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT topic, partition, offset FROM offsets WHERE group_name = ?", (group,)
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._tx(write=True) as conn:
            conn.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "offset = excluded.offset",
                [(group, t, p, o) for (t, p), o in offsets.items()],
            )

    def touch(self, profile_id: str, time_ms: int) -> str:
        with self._tx(write=True) as conn:
            live = self._resolve(conn, profile_id) or profile_id
            self._widen(conn, live, time_ms, time_ms)
            return live

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        with self._tx(write=True) as conn:
            live = self._resolve(conn, profile_id) or profile_id
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE id_type = ? AND value = ?",
                (id_type, value),
            ).fetchone()
            if row is not None and row[0] != live:
                return str(row[0])
            self._widen(conn, live, provenance.time_ms, provenance.time_ms)
            if row is None:
                conn.execute(
                    "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (id_type, value, live, *_prov_values(provenance)),
                )
            return live

    def detach(self, id_type: str, value: str) -> str | None:
        with self._tx(write=True) as conn:
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE id_type = ? AND value = ?",
                (id_type, value),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM identities WHERE id_type = ? AND value = ?", (id_type, value))
            return str(row[0])

    def lookup(self, id_type: str, value: str) -> str | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE id_type = ? AND value = ?",
                (id_type, value),
            ).fetchone()
            return None if row is None else str(row[0])

    def resolve(self, profile_id: str) -> str | None:
        with self._tx() as conn:
            return self._resolve(conn, profile_id)

    def get(self, profile_id: str) -> Profile | None:
        with self._tx() as conn:
            live = self._resolve(conn, profile_id)
            return None if live is None else self._snapshot(conn, live)

    @classmethod
    def _snapshot(cls, conn: sqlite3.Connection, live: str) -> Profile:
        return cls._snapshots(conn, [live])[0]

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        return self._update("traits", profile_id, update)

    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        return self._update("computed", profile_id, update)

    def _update(self, column: str, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._tx(write=True) as conn:
            live = self._live(conn, profile_id)
            values = update(self._column(conn, column, live))
            conn.execute(
                f"UPDATE profiles SET {column} = ? WHERE profile_id = ?",
                (_encode_traits(values), live),
            )
            return values

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        with self._tx(write=True) as conn:
            live = self._live(conn, profile_id)
            conn.execute(
                "INSERT INTO history (profile_id, message_id, time_ms, body) VALUES (?, ?, ?, ?)",
                (live, event.message_id, event.time_ms, event.body),
            )
            self._trim(conn, live)

    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        with self._tx() as conn:
            live = self._resolve(conn, profile_id)
            if live is None:
                return []
            rows = conn.execute(
                "SELECT seq, message_id, time_ms, body FROM history WHERE profile_id = ? "
                "AND seq < ? ORDER BY seq DESC LIMIT ?",
                (live, before if before is not None else 1 << 62, limit),
            ).fetchall()
        return [StoredEvent(*row) for row in rows]

    def scan(self, after: str | None, limit: int) -> list[Profile]:
        with self._tx() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT profile_id FROM profiles WHERE profile_id > ? "
                    "ORDER BY profile_id LIMIT ?",
                    (after or "", limit),
                )
            ]
            return self._snapshots(conn, ids)

    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        pid = profile.profile_id
        with self._tx(write=True) as conn:
            for edge in profile.identities:
                row = conn.execute(
                    "SELECT profile_id FROM identities WHERE id_type = ? AND value = ?",
                    (edge.id_type, edge.value),
                ).fetchone()
                if row is not None and row[0] != pid:
                    raise StoreError(
                        f"{edge.id_type}:{edge.value} belongs to profile {row[0]}; delete or "
                        f"detach it before writing profile {pid}"
                    )
            self._erase(conn, pid)
            conn.execute(
                "INSERT INTO profiles VALUES (?, ?, ?, ?, ?)",
                (
                    pid,
                    profile.first_seen_ms,
                    profile.last_seen_ms,
                    _encode_traits(profile.traits),
                    _encode_traits(profile.computed),
                ),
            )
            conn.executemany(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.id_type, e.value, pid, *_prov_values(e.provenance))
                    for e in profile.identities
                ],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO redirects VALUES (?, ?, ?, ?, ?, ?)",
                [(r.from_id, r.into_id, *_prov_values(r.provenance)) for r in profile.merged],
            )
            conn.executemany(
                "INSERT INTO history (profile_id, message_id, time_ms, body) VALUES (?, ?, ?, ?)",
                [(pid, e.message_id, e.time_ms, e.body) for e in history],
            )
            self._trim(conn, pid)

    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        keys = list(identities)
        with self._tx() as conn:
            owners: dict[str, None] = {}
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                # A join from the keys, not `(id_type, value) IN (VALUES …)`: SQLite plans
                # the IN form as a scan of the whole table.
                rows = conn.execute(
                    f"WITH k(t, v) AS (VALUES {','.join(['(?, ?)'] * len(chunk))}) "
                    "SELECT DISTINCT i.profile_id FROM k JOIN identities i "
                    "ON i.id_type = k.t AND i.value = k.v",
                    [part for key in chunk for part in key],
                )
                owners.update(dict.fromkeys(row[0] for row in rows))
            return self._snapshots(conn, list(owners))

    @staticmethod
    def _snapshots(conn: sqlite3.Connection, ids: list[str]) -> list[Profile]:
        """Snapshots of live profiles, in the order of ``ids``, in a few statements per
        chunk."""
        out: list[Profile] = []
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            edges: dict[str, list[IdentityEdge]] = {pid: [] for pid in chunk}
            # One event usually attaches several identifiers: share their provenance.
            provenances: dict[tuple[Any, ...], Provenance] = {}
            for pid, id_type, value, *prov in conn.execute(
                "SELECT profile_id, id_type, value, message_id, source_id, time_ms, match_weight "
                f"FROM identities WHERE profile_id IN ({marks}) ORDER BY id_type, value",
                chunk,
            ):
                key = tuple(prov)
                provenance = provenances.get(key)
                if provenance is None:
                    provenance = provenances[key] = Provenance(*prov)
                edges[pid].append(IdentityEdge(id_type, value, provenance))
            # Redirects whose chain ends at each profile, one level of the chains at a time.
            merged: dict[str, list[tuple[int, Redirect]]] = {pid: [] for pid in chunk}
            frontier = {pid: pid for pid in chunk}
            seen = set(chunk)
            while frontier:
                level = list(frontier)
                rows = conn.execute(
                    "SELECT rowid, from_id, into_id, message_id, source_id, time_ms, match_weight "
                    f"FROM redirects WHERE into_id IN ({','.join('?' * len(level))})",
                    level,
                ).fetchall()
                nxt: dict[str, str] = {}
                for row in rows:
                    if row[1] in seen:  # a cycle of redirects: follow each id once
                        continue
                    seen.add(row[1])
                    root = frontier[row[2]]
                    merged[root].append((row[0], Redirect(row[1], row[2], _prov(row[3:]))))
                    nxt[row[1]] = root
                frontier = nxt
            found: dict[str, Profile] = {}
            for pid, first, last, raw, raw_computed in conn.execute(
                "SELECT profile_id, first_seen_ms, last_seen_ms, traits, computed FROM profiles "
                f"WHERE profile_id IN ({marks})",
                chunk,
            ):
                found[pid] = Profile(
                    pid,
                    first,
                    last,
                    tuple(edges[pid]),
                    _traits_decoder.decode(raw),
                    tuple(r for _, r in sorted(merged[pid], key=lambda m: m[0])),
                    _traits_decoder.decode(raw_computed),
                )
            out.extend(found[pid] for pid in chunk if pid in found)
        return out

    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
    ) -> None:
        for profile in profiles:
            _encode_traits(profile.traits)
            _encode_traits(profile.computed)
        with self._tx(write=True) as conn:
            for from_id, into in gone.items():
                conn.execute(
                    "UPDATE history SET profile_id = ? WHERE profile_id = ?", (into, from_id)
                )
                conn.execute("DELETE FROM profiles WHERE profile_id = ?", (from_id,))
            conn.executemany(
                "INSERT INTO profiles VALUES (?, ?, ?, ?, ?) ON CONFLICT (profile_id) DO UPDATE "
                "SET first_seen_ms = excluded.first_seen_ms, last_seen_ms = excluded.last_seen_ms, "
                "traits = excluded.traits, computed = excluded.computed",
                [
                    (
                        p.profile_id,
                        p.first_seen_ms,
                        p.last_seen_ms,
                        _encode_traits(p.traits),
                        _encode_traits(p.computed),
                    )
                    for p in profiles
                ],
            )
            # Most identities stay where they were: the WHERE skips rewriting those rows.
            conn.executemany(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id_type, value) "
                "DO UPDATE SET profile_id = excluded.profile_id "
                "WHERE profile_id != excluded.profile_id",
                [
                    (e.id_type, e.value, p.profile_id, *_prov_values(e.provenance))
                    for p in profiles
                    for e in p.identities
                ],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO redirects VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.from_id, r.into_id, *_prov_values(r.provenance))
                    for p in profiles
                    for r in p.merged
                ],
            )
            conn.executemany(
                "INSERT INTO history (profile_id, message_id, time_ms, body) VALUES (?, ?, ?, ?)",
                [(pid, e.message_id, e.time_ms, e.body) for pid, e in events],
            )
            conn.executemany(
                _TRIM,
                [(pid, pid, self.history) for pid in {*gone.values(), *(pid for pid, _ in events)}],
            )
            timers.drop(conn, gone)

    def add_separation(self, separation: Separation) -> None:
        p = separation.provenance
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO separations VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*separation.a, *separation.b, p.message_id, p.source_id, p.time_ms),
            )

    def separations(self) -> list[Separation]:
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM separations ORDER BY rowid").fetchall()
        return [Separation((r[0], r[1]), (r[2], r[3]), Provenance(r[4], r[5], r[6])) for r in rows]

    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
        computed: TraitsMerge = keep_existing,
    ) -> str:
        with self._tx(write=True) as conn:
            survivor = self._live(conn, into)
            gone = self._live(conn, from_)
            if survivor == gone:
                return survivor
            merged = _encode_traits(
                traits(self._column(conn, "traits", survivor), self._column(conn, "traits", gone))
            )
            merged_computed = _encode_traits(
                computed(
                    self._column(conn, "computed", survivor), self._column(conn, "computed", gone)
                )
            )
            first, last = conn.execute(
                "SELECT first_seen_ms, last_seen_ms FROM profiles WHERE profile_id = ?", (gone,)
            ).fetchone()
            self._widen(conn, survivor, first, last)
            conn.execute(
                "UPDATE profiles SET traits = ?, computed = ? WHERE profile_id = ?",
                (merged, merged_computed, survivor),
            )
            conn.execute(
                "UPDATE identities SET profile_id = ? WHERE profile_id = ?", (survivor, gone)
            )
            conn.execute("UPDATE history SET profile_id = ? WHERE profile_id = ?", (survivor, gone))
            self._trim(conn, survivor)
            conn.execute("DELETE FROM profiles WHERE profile_id = ?", (gone,))
            conn.execute(
                "INSERT INTO redirects VALUES (?, ?, ?, ?, ?, ?)",
                (gone, survivor, *_prov_values(provenance)),
            )
            timers.drop(conn, [gone])
            return survivor

    @staticmethod
    def _erase(conn: sqlite3.Connection, live: str) -> None:
        conn.execute(
            _CHAIN + "DELETE FROM redirects WHERE from_id IN (SELECT from_id FROM chain)",
            (live,),
        )
        conn.execute("DELETE FROM redirects WHERE from_id = ?", (live,))
        conn.execute("DELETE FROM identities WHERE profile_id = ?", (live,))
        conn.execute("DELETE FROM history WHERE profile_id = ?", (live,))
        conn.execute("DELETE FROM profiles WHERE profile_id = ?", (live,))

    def delete_profile(self, profile_id: str) -> bool:
        with self._tx(write=True) as conn:
            live = self._resolve(conn, profile_id)
            if live is None:
                return False
            chain = conn.execute(_CHAIN + "SELECT from_id FROM chain", (live,))
            timers.drop(conn, [live, *(row[0] for row in chain)])
            self._erase(conn, live)
            return True

    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        with self._tx(write=True) as conn:
            live = self._resolve(conn, profile_id)
            if live is None:
                return 0
            cur = conn.execute(
                "DELETE FROM history WHERE profile_id = ? AND time_ms >= ? AND time_ms < ?",
                (
                    live,
                    -(1 << 62) if since_ms is None else since_ms,
                    1 << 62 if until_ms is None else until_ms,
                ),
            )
            return cur.rowcount

    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        keys = [(t, v, t, v) for t, v in set(identities)]
        with self._tx(write=True) as conn:
            before = conn.total_changes
            conn.executemany(
                "DELETE FROM separations WHERE (a_type = ? AND a_value = ?) "
                "OR (b_type = ? AND b_value = ?)",
                keys,
            )
            return conn.total_changes - before

    def set_timers(self, due: Mapping[str, int | None]) -> None:
        with self._tx(write=True) as conn:
            timers.set_timers(conn, due)

    def due_timers(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        with self._tx() as conn:
            return timers.due(conn, now_ms, limit)

    def next_timer(self) -> int | None:
        with self._tx() as conn:
            return timers.earliest(conn)

    def outbox_put(self, group: str, payload: bytes) -> int:
        with self._tx(write=True) as conn:
            return timers.put(conn, group, payload)

    def outbox_pending(self, group: str, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._tx() as conn:
            return timers.pending(conn, group, limit)

    def outbox_ack(self, group: str, seq: int) -> None:
        with self._tx(write=True) as conn:
            timers.ack(conn, group, seq)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _prov_values(p: Provenance) -> tuple[str, str, int, float | None]:
    return (p.message_id, p.source_id, p.time_ms, p.match_weight)
