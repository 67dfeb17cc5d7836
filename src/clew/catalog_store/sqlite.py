"""The catalog in ``meta.db``, a SQLite file of the data directory (the embedded default).

Several processes may open the same file; each change is one SQLite transaction."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from clew._sqlite import open_sqlite, transaction
from clew.catalog_store.base import (
    SCOPES,
    CatalogStore,
    Source,
    SourceNameTakenError,
    Token,
    TokenNameTakenError,
    WriteKeyTakenError,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    write_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retired_keys (
    write_key TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    until REAL NOT NULL
);
"""
# Columns added after the first release; a catalog created before them is migrated in place.
_ADDED_COLUMNS = {
    "sources": {"removed_at": "REAL"},
    # scopes NULL: a token created before scopes existed (it keeps every scope).
    "tokens": {"scopes": "TEXT", "expires_at": "REAL", "last_used_at": "REAL"},
}

_SOURCE_COLUMNS = "id, name, write_key, created_at, removed_at"
_TOKEN_COLUMNS = "name, scopes, created_at, expires_at, last_used_at"


def token_of(
    name: str,
    scopes: str | None,
    created_at: float,
    expires_at: float | None,
    last_used_at: float | None,
) -> Token:
    """A token record from its stored fields (``scopes`` comma-separated, None: legacy)."""
    legacy = scopes is None
    return Token(
        name=name,
        scopes=frozenset(SCOPES if scopes is None else scopes.split(",")),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        last_used_at=None if last_used_at is None else float(last_used_at),
        legacy=legacy,
    )


def scopes_text(token: Token) -> str | None:
    """How a token's scopes are stored: comma-separated in :data:`SCOPES` order, None for a
    legacy token."""
    return None if token.legacy else ",".join(s for s in SCOPES if s in token.scopes)


def _token(row: tuple[object, ...]) -> Token:
    name, scopes, created_at, expires_at, last_used_at = row
    return token_of(
        str(name),
        None if scopes is None else str(scopes),
        float(created_at),  # type: ignore[arg-type]
        None if expires_at is None else float(expires_at),  # type: ignore[arg-type]
        None if last_used_at is None else float(last_used_at),  # type: ignore[arg-type]
    )


class SqliteCatalogStore(CatalogStore):
    def __init__(self, path: Path) -> None:
        # FULL: a source or token created must not vanish in a power loss.
        self.path = path
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            for table, columns in _ADDED_COLUMNS.items():
                have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column in have:
                        continue
                    try:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError as e:
                        # Another process opening the catalog added it first.
                        if "duplicate column" not in str(e):
                            raise

    def where(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._conn.close()

    # -- sources ---------------------------------------------------------------------------

    def add_source(self, source: Source) -> None:
        with self._lock, transaction(self._conn):
            same = self._named(source.name)
            if same is not None:
                raise SourceNameTakenError(same)
            if self._key_used(source.write_key):
                raise WriteKeyTakenError(source.write_key)
            self._conn.execute(
                f"INSERT INTO sources ({_SOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (source.id, source.name, source.write_key, source.created_at, source.removed_at),
            )

    def sources(self) -> list[Source]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_SOURCE_COLUMNS} FROM sources ORDER BY created_at"
            ).fetchall()
        return [Source(*r) for r in rows]

    def source_named(self, name: str) -> Source | None:
        with self._lock:
            return self._named(name)

    def _named(self, name: str) -> Source | None:
        row = self._conn.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE name = ? COLLATE NOCASE "
            "ORDER BY name = ? DESC",
            (name, name),
        ).fetchone()
        return None if row is None else Source(*row)

    def replace_key(self, source: Source, write_key: str, old_key_until: float | None) -> bool:
        with self._lock, transaction(self._conn):
            if self._key_used(write_key):
                raise WriteKeyTakenError(write_key)
            changed = self._conn.execute(
                "UPDATE sources SET write_key = ? "
                "WHERE id = ? AND write_key = ? AND removed_at IS NULL",
                (write_key, source.id, source.write_key),
            ).rowcount
            if not changed:
                return False
            if old_key_until is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO retired_keys VALUES (?, ?, ?)",
                    (source.write_key, source.id, old_key_until),
                )
        return True

    def mark_removed(self, source: Source, removed_at: float) -> bool:
        with self._lock, transaction(self._conn):
            changed = self._conn.execute(
                "UPDATE sources SET removed_at = ? "
                "WHERE id = ? AND write_key = ? AND removed_at IS NULL",
                (removed_at, source.id, source.write_key),
            ).rowcount
            if changed:
                self._conn.execute("DELETE FROM retired_keys WHERE source_id = ?", (source.id,))
        return bool(changed)

    def _key_used(self, key: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM sources WHERE write_key = ? "
                "UNION ALL SELECT 1 FROM retired_keys WHERE write_key = ?",
                (key, key),
            ).fetchone()
            is not None
        )

    def source_for_key(self, write_key: str, now: float) -> tuple[Source, float] | None:
        columns = ", ".join(f"s.{c.strip()}" for c in _SOURCE_COLUMNS.split(","))
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns}, NULL FROM sources s "
                "WHERE s.write_key = ? AND s.removed_at IS NULL "
                f"UNION ALL SELECT {columns}, r.until FROM retired_keys r "
                "JOIN sources s ON s.id = r.source_id "
                "WHERE r.write_key = ? AND r.until > ? AND s.removed_at IS NULL",
                (write_key, write_key, now),
            ).fetchone()
        if row is None:
            return None
        until = float("inf") if row[-1] is None else float(row[-1])
        return Source(*row[:-1]), until

    def retired_keys(self) -> list[tuple[str, str, float]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT write_key, source_id, until FROM retired_keys ORDER BY write_key"
            ).fetchall()
        return [(str(k), str(s), float(u)) for k, s, u in rows]

    # -- tokens ----------------------------------------------------------------------------

    def add_token(
        self,
        name: str,
        token_hash: str,
        scopes: tuple[str, ...] | None,
        created_at: float,
        expires_at: float | None,
    ) -> None:
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO tokens (name, token_hash, created_at, scopes, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        name,
                        token_hash,
                        created_at,
                        None if scopes is None else ",".join(scopes),
                        expires_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise TokenNameTakenError(name) from None

    def delete_token(self, name: str) -> bool:
        with self._lock:
            return bool(self._conn.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount)

    def tokens(self) -> list[Token]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY name"
            ).fetchall()
        return [_token(r) for r in rows]

    def token_named(self, name: str) -> Token | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _token(row)

    def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS}, token_hash FROM tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
        return None if row is None else (_token(row[:-1]), str(row[-1]))

    def note_token_use(self, name: str, at: float) -> None:
        with self._lock:
            self._conn.execute("UPDATE tokens SET last_used_at = ? WHERE name = ?", (at, name))

    def token_hashes(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT name, token_hash FROM tokens").fetchall()
        return [(str(n), str(h)) for n, h in rows]

    # -- migration -------------------------------------------------------------------------

    def restore(
        self,
        sources: list[Source],
        retired: list[tuple[str, str, float]],
        tokens: list[tuple[Token, str]],
    ) -> None:
        with self._lock, transaction(self._conn):
            for s in sources:
                self._conn.execute(
                    f"INSERT OR IGNORE INTO sources ({_SOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (s.id, s.name, s.write_key, s.created_at, s.removed_at),
                )
            for key, source_id, until in retired:
                self._conn.execute(
                    "INSERT OR IGNORE INTO retired_keys VALUES (?, ?, ?)", (key, source_id, until)
                )
            for t, digest in tokens:
                self._conn.execute(
                    "INSERT OR IGNORE INTO tokens "
                    f"(token_hash, {_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        digest,
                        t.name,
                        scopes_text(t),
                        t.created_at,
                        t.expires_at,
                        t.last_used_at,
                    ),
                )
