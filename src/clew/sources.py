"""Sources (each with a write key that may only send events) and access tokens (for SQL, the
Admin API and the Profile API), kept in ``meta.db``.

Tokens are stored as SHA-256 hashes: a token is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from clew._sqlite import open_sqlite

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
"""

DEFAULT_SOURCE = "default"


class CatalogError(ValueError):
    """A source or token request that cannot be honoured; the message says why."""


@dataclass(slots=True, frozen=True)
class Source:
    id: str
    name: str
    write_key: str
    created_at: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Catalog:
    """Thread-safe; several processes may open the same ``meta.db``."""

    def __init__(self, path: Path) -> None:
        # FULL: a source or token created must not vanish in a power loss.
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        self._lock = threading.RLock()
        self._by_key: dict[str, Source] = {}

    def close(self) -> None:
        self._conn.close()

    def create_source(self, name: str, write_key: str | None = None) -> Source:
        if not name or len(name) > 100:
            raise CatalogError("a source name must be 1 to 100 characters")
        key = write_key or secrets.token_urlsafe(24)
        if len(key) < 8 or ":" in key:
            raise CatalogError("a write key must be at least 8 characters and contain no ':'")
        src = Source(
            id=f"src_{secrets.token_hex(8)}", name=name, write_key=key, created_at=time.time()
        )
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO sources VALUES (?, ?, ?, ?)",
                    (src.id, src.name, src.write_key, src.created_at),
                )
            except sqlite3.IntegrityError:
                if self._row("name", name) is not None:
                    raise CatalogError(f"a source named {name!r} already exists") from None
                raise CatalogError("that write key is already used by another source") from None
        return src

    def ensure_source(self, name: str) -> Source:
        """The source called ``name``, created if missing."""
        existing = self._row("name", name)
        return existing if existing is not None else self.create_source(name)

    def sources(self) -> list[Source]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM sources ORDER BY created_at").fetchall()
        return [Source(*r) for r in rows]

    def _row(self, column: str, value: str) -> Source | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT * FROM sources WHERE {column} = ?", (value,)
            ).fetchone()
        return Source(*row) if row else None

    def source_for_key(self, write_key: str) -> Source | None:
        """The source owning ``write_key``; sources created by another process are seen too."""
        src = self._by_key.get(write_key)
        if src is None:
            src = self._row("write_key", write_key)
            if src is not None:
                self._by_key[write_key] = src
        return src

    def create_token(self, name: str) -> str:
        if not name:
            raise CatalogError("a token needs a name")
        token = "clew_" + secrets.token_urlsafe(32)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?)", (name, _hash(token), time.time())
                )
            except sqlite3.IntegrityError:
                raise CatalogError(f"a token named {name!r} already exists") from None
        return token

    def token_names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM tokens ORDER BY name")]

    def token_name(self, token: str) -> str | None:
        """The name of a valid access token (for audit records), ``None`` for an invalid one."""
        with self._lock:
            row = self._conn.execute(
                "SELECT name FROM tokens WHERE token_hash = ?", (_hash(token),)
            ).fetchone()
        return None if row is None else str(row[0])

    def verify_token(self, token: str) -> bool:
        digest = _hash(token)
        with self._lock:
            row = self._conn.execute(
                "SELECT token_hash FROM tokens WHERE token_hash = ?", (digest,)
            ).fetchone()
        return row is not None and hmac.compare_digest(row[0], digest)
