"""The embedded serving store: one SQLite database in WAL mode, no server.

Every operation is one SQLite transaction; writes take the write lock up front
(``BEGIN IMMEDIATE``), so read-modify-write steps cannot interleave across threads or
processes. Within a process, calls are serialised on one connection. The identity table is
also the identity index (its primary key is ``(id_type, value)``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from clew._sqlite import open_sqlite
from clew.store.base import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    StoreClosedError,
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
    traits BLOB NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS identities (
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (id_type, value)
);
CREATE INDEX IF NOT EXISTS identities_profile ON identities (profile_id);
CREATE TABLE IF NOT EXISTS redirects (
    from_id TEXT PRIMARY KEY,
    into_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS redirects_into ON redirects (into_id);
"""

# Every redirect whose chain ends at the given profile id.
_CHAIN = """
WITH RECURSIVE chain(from_id) AS (
    SELECT from_id FROM redirects WHERE into_id = ?
    UNION
    SELECT r.from_id FROM redirects r JOIN chain c ON r.into_id = c.from_id
)
"""

_traits_decoder = msgspec.json.Decoder(dict[str, Any])


def _encode_traits(traits: Traits) -> bytes:
    if not isinstance(traits, dict):
        raise StoreError(f"traits must be a dict, got {type(traits).__name__}")
    return msgspec.json.encode(traits)


class SQLiteProfileStore(ProfileStore):
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self._conn: sqlite3.Connection | None = open_sqlite(path, _SCHEMA, synchronous)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError("the profile store is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (e.g. busy past the timeout) leaves the transaction open.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

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
    def _traits(conn: sqlite3.Connection, profile_id: str) -> Traits:
        (raw,) = conn.execute(
            "SELECT traits FROM profiles WHERE profile_id = ?", (profile_id,)
        ).fetchone()
        return _traits_decoder.decode(raw)

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
                    "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        id_type,
                        value,
                        live,
                        provenance.message_id,
                        provenance.source_id,
                        provenance.time_ms,
                    ),
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
            if live is None:
                return None
            first, last, raw = conn.execute(
                "SELECT first_seen_ms, last_seen_ms, traits FROM profiles WHERE profile_id = ?",
                (live,),
            ).fetchone()
            identities = tuple(
                IdentityEdge(t, v, Provenance(m, s, ms))
                for t, v, m, s, ms in conn.execute(
                    "SELECT id_type, value, message_id, source_id, time_ms FROM identities "
                    "WHERE profile_id = ? ORDER BY id_type, value",
                    (live,),
                )
            )
            merged = tuple(
                Redirect(f, i, Provenance(m, s, ms))
                for f, i, m, s, ms in conn.execute(
                    _CHAIN + "SELECT r.from_id, r.into_id, r.message_id, r.source_id, r.time_ms "
                    "FROM redirects r JOIN chain c ON r.from_id = c.from_id ORDER BY r.rowid",
                    (live,),
                )
            )
            return Profile(live, first, last, identities, _traits_decoder.decode(raw), merged)

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._tx(write=True) as conn:
            live = self._live(conn, profile_id)
            traits = update(self._traits(conn, live))
            conn.execute(
                "UPDATE profiles SET traits = ? WHERE profile_id = ?",
                (_encode_traits(traits), live),
            )
            return traits

    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
    ) -> str:
        with self._tx(write=True) as conn:
            survivor = self._live(conn, into)
            gone = self._live(conn, from_)
            if survivor == gone:
                return survivor
            merged = traits(self._traits(conn, survivor), self._traits(conn, gone))
            first, last = conn.execute(
                "SELECT first_seen_ms, last_seen_ms FROM profiles WHERE profile_id = ?", (gone,)
            ).fetchone()
            self._widen(conn, survivor, first, last)
            conn.execute(
                "UPDATE profiles SET traits = ? WHERE profile_id = ?",
                (_encode_traits(merged), survivor),
            )
            conn.execute(
                "UPDATE identities SET profile_id = ? WHERE profile_id = ?", (survivor, gone)
            )
            conn.execute("DELETE FROM profiles WHERE profile_id = ?", (gone,))
            conn.execute(
                "INSERT INTO redirects VALUES (?, ?, ?, ?, ?)",
                (gone, survivor, provenance.message_id, provenance.source_id, provenance.time_ms),
            )
            return survivor

    def delete_profile(self, profile_id: str) -> bool:
        with self._tx(write=True) as conn:
            live = self._resolve(conn, profile_id)
            if live is None:
                return False
            conn.execute(
                _CHAIN + "DELETE FROM redirects WHERE from_id IN (SELECT from_id FROM chain)",
                (live,),
            )
            conn.execute("DELETE FROM identities WHERE profile_id = ?", (live,))
            conn.execute("DELETE FROM profiles WHERE profile_id = ?", (live,))
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
