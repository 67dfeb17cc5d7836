"""Sources (each with a write key that may only send events) and access tokens (each with
scopes saying which APIs it may use), kept in ``meta.db``.

Tokens are stored as SHA-256 hashes: a token is shown once, when it is created. Every process
opening the same ``meta.db`` sees a revoked token, a rotated write key or a removed source
within :data:`KEY_RECHECK_S` (tokens at once: they are looked up on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from clew._names import did_you_mean
from clew._sqlite import open_sqlite, transaction

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

DEFAULT_SOURCE = "default"

SQL, PROFILES, ADMIN, PRIVACY, METRICS = "sql", "profiles", "admin", "privacy", "metrics"
SCOPES: tuple[str, ...] = (SQL, PROFILES, ADMIN, PRIVACY, METRICS)
"""Every scope a token can hold: ``sql`` (``POST /v1/sql``), ``profiles`` (Profile API reads),
``admin`` (sources' plans and schemas, audiences), ``privacy`` (data-subject requests),
``metrics`` (``/metrics`` and ``/health`` details when ``metrics.require_token`` is set)."""
ALL_SCOPES = "all"
"""What ``clew tokens create --scope`` takes for every scope."""
DEFAULT_SCOPES: tuple[str, ...] = (SQL, PROFILES)
"""A token's scopes when none are asked for: reads only."""

KEY_RECHECK_S = 0.5
"""How long a process trusts a write key it looked up before reading the catalog again."""
_LAST_USED_EVERY_S = 60.0


class CatalogError(ValueError):
    """A source or token request that cannot be honoured; the message says why."""


@dataclass(slots=True, frozen=True)
class Source:
    id: str
    name: str
    write_key: str
    created_at: float
    removed_at: float | None = None


@dataclass(slots=True, frozen=True)
class Token:
    """An access token's record (never the token itself). ``legacy``: created before tokens
    had scopes; such a token holds every scope, so deployments that used it keep working."""

    name: str
    scopes: frozenset[str]
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    legacy: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def parse_scopes(requested: Iterable[str]) -> tuple[str, ...]:
    """The scopes named in ``requested`` (each may be comma-separated; ``all`` means every
    scope), in :data:`SCOPES` order; :data:`DEFAULT_SCOPES` when none are named."""
    names = {n.strip().lower() for item in requested for n in item.split(",") if n.strip()}
    if not names:
        return DEFAULT_SCOPES
    if ALL_SCOPES in names:
        names = (names - {ALL_SCOPES}) | set(SCOPES)
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise CatalogError(
            f"unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)} or {ALL_SCOPES}"
        )
    return tuple(s for s in SCOPES if s in names)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_SOURCE_COLUMNS = "id, name, write_key, created_at, removed_at"
_TOKEN_COLUMNS = "name, scopes, created_at, expires_at, last_used_at"


def _token(row: tuple[object, ...]) -> Token:
    name, scopes, created_at, expires_at, last_used_at = row
    legacy = scopes is None
    return Token(
        name=str(name),
        scopes=frozenset(SCOPES if legacy else str(scopes).split(",")),
        created_at=float(created_at),  # type: ignore[arg-type]
        expires_at=None if expires_at is None else float(expires_at),  # type: ignore[arg-type]
        last_used_at=None if last_used_at is None else float(last_used_at),  # type: ignore[arg-type]
        legacy=legacy,
    )


class Catalog:
    """Thread-safe; several processes (and machines sharing the file) may open the same
    ``meta.db``."""

    def __init__(self, path: Path) -> None:
        # FULL: a source or token created must not vanish in a power loss.
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        self._lock = threading.RLock()
        # write key -> (its source, when the key stops working, when it was looked up)
        self._by_key: dict[str, tuple[Source, float, float]] = {}
        self._used_written: dict[str, float] = {}
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

    def close(self) -> None:
        self._conn.close()

    # -- sources ---------------------------------------------------------------------------

    def create_source(self, name: str, write_key: str | None = None) -> Source:
        """A new source. Names are unique ignoring case, and a removed source's name stays
        taken (its events keep naming it)."""
        if not name or len(name) > 100:
            raise CatalogError("a source name must be 1 to 100 characters")
        key = write_key or secrets.token_urlsafe(24)
        _check_key(key)
        src = Source(
            id=f"src_{secrets.token_hex(8)}", name=name, write_key=key, created_at=time.time()
        )
        with self._lock, transaction(self._conn):
            same = self._conn.execute(
                "SELECT name, removed_at FROM sources WHERE name = ? COLLATE NOCASE", (name,)
            ).fetchone()
            if same is not None:
                raise CatalogError(_name_taken(name, str(same[0]), same[1] is not None))
            if self._key_used(key):
                raise CatalogError("that write key is already used by another source")
            self._conn.execute(
                f"INSERT INTO sources ({_SOURCE_COLUMNS}) VALUES (?, ?, ?, ?, NULL)",
                (src.id, src.name, src.write_key, src.created_at),
            )
        return src

    def ensure_source(self, name: str) -> Source:
        """The source called ``name`` (even a removed one), created if missing."""
        existing = self._row("name", name)
        return existing if existing is not None else self.create_source(name)

    def sources(self, include_removed: bool = True) -> list[Source]:
        """Sources in creation order; removed ones too unless asked not to (their events
        still name them)."""
        where = "" if include_removed else "WHERE removed_at IS NULL"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_SOURCE_COLUMNS} FROM sources {where} ORDER BY created_at"
            ).fetchall()
        return [Source(*r) for r in rows]

    def source(self, name: str) -> Source:
        """The source called ``name``, matched ignoring case; :class:`CatalogError` if none."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE name = ? COLLATE NOCASE "
                "ORDER BY name = ? DESC",
                (name, name),
            ).fetchone()
        if row is None:
            close = did_you_mean(name, (s.name for s in self.sources(include_removed=False)))
            raise CatalogError(
                f"there is no source named {name!r}{close}; `clew sources list` shows them"
            )
        return Source(*row)

    def rotate_write_key(
        self, name: str, grace_s: float = 0.0, write_key: str | None = None
    ) -> Source:
        """Give source ``name`` a new write key. The old one keeps working for ``grace_s``
        seconds (none by default), then is refused within :data:`KEY_RECHECK_S` everywhere."""
        if grace_s < 0:
            raise CatalogError("the grace period cannot be negative")
        key = write_key or secrets.token_urlsafe(24)
        _check_key(key)
        with self._lock, transaction(self._conn):
            src = self.source(name)
            if src.removed_at is not None:
                raise CatalogError(f"source {src.name!r} was removed; it has no key to rotate")
            if self._key_used(key):
                raise CatalogError("that write key is already used by another source")
            if grace_s > 0:
                self._conn.execute(
                    "INSERT OR REPLACE INTO retired_keys VALUES (?, ?, ?)",
                    (src.write_key, src.id, time.time() + grace_s),
                )
            self._conn.execute("UPDATE sources SET write_key = ? WHERE id = ?", (key, src.id))
        return Source(src.id, src.name, key, src.created_at)

    def remove_source(self, name: str) -> Source:
        """Stop source ``name``'s write keys (within :data:`KEY_RECHECK_S` everywhere). Its
        events stay, and its name stays taken."""
        with self._lock, transaction(self._conn):
            src = self.source(name)
            if src.removed_at is not None:
                raise CatalogError(f"source {src.name!r} was already removed")
            removed_at = time.time()
            self._conn.execute(
                "UPDATE sources SET removed_at = ? WHERE id = ?", (removed_at, src.id)
            )
            self._conn.execute("DELETE FROM retired_keys WHERE source_id = ?", (src.id,))
        return Source(src.id, src.name, src.write_key, src.created_at, removed_at)

    def _key_used(self, key: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM sources WHERE write_key = ? "
                "UNION ALL SELECT 1 FROM retired_keys WHERE write_key = ?",
                (key, key),
            ).fetchone()
            is not None
        )

    def _row(self, column: str, value: str) -> Source | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE {column} = ?", (value,)
            ).fetchone()
        return Source(*row) if row else None

    def source_for_key(self, write_key: str) -> Source | None:
        """The source ``write_key`` sends events to, ``None`` when it is no (longer a) key.

        A key found is trusted for :data:`KEY_RECHECK_S` before the catalog is read again, so a
        rotated, expired or removed key stops within that time in every process."""
        now = time.monotonic()
        cached = self._by_key.get(write_key)
        if cached is not None:
            src, until, checked = cached
            if now - checked < KEY_RECHECK_S and time.time() < until:
                return src
        found = self._lookup_key(write_key)
        if found is None:
            self._by_key.pop(write_key, None)
            return None
        self._by_key[write_key] = (found[0], found[1], now)
        return found[0]

    def _lookup_key(self, write_key: str) -> tuple[Source, float] | None:
        columns = ", ".join(f"s.{c.strip()}" for c in _SOURCE_COLUMNS.split(","))
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns}, NULL FROM sources s "
                "WHERE s.write_key = ? AND s.removed_at IS NULL "
                f"UNION ALL SELECT {columns}, r.until FROM retired_keys r "
                "JOIN sources s ON s.id = r.source_id "
                "WHERE r.write_key = ? AND r.until > ? AND s.removed_at IS NULL",
                (write_key, write_key, time.time()),
            ).fetchone()
        if row is None:
            return None
        until = float("inf") if row[-1] is None else float(row[-1])
        return Source(*row[:-1]), until

    # -- tokens ----------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        expires_in_s: float | None = None,
    ) -> str:
        """A new access token holding ``scopes`` (names from :data:`SCOPES`, or ``all``),
        valid for ``expires_in_s`` seconds (forever when ``None``). Only its hash is kept."""
        if not name:
            raise CatalogError("a token needs a name")
        granted = parse_scopes(scopes)
        if expires_in_s is not None and expires_in_s <= 0:
            raise CatalogError("a token's lifetime must be positive")
        now = time.time()
        expires_at = None if expires_in_s is None else now + expires_in_s
        token = "clew_" + secrets.token_urlsafe(32)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO tokens (name, token_hash, created_at, scopes, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, _hash(token), now, ",".join(granted), expires_at),
                )
            except sqlite3.IntegrityError:
                raise CatalogError(f"a token named {name!r} already exists") from None
        return token

    def revoke_token(self, name: str) -> None:
        """Forget token ``name``: every process refuses it from its next request."""
        with self._lock:
            deleted = self._conn.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount
        if not deleted:
            close = did_you_mean(name, (t.name for t in self.tokens()))
            raise CatalogError(
                f"there is no token named {name!r}{close}; `clew tokens list` shows them"
            )

    def tokens(self) -> list[Token]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY name"
            ).fetchall()
        return [_token(r) for r in rows]

    def token_named(self, name: str) -> Token | None:
        """The record of the token called ``name`` (expired or not), ``None`` when there is
        none (never created, or revoked)."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _token(row)

    def token_names(self) -> list[str]:
        return [t.name for t in self.tokens()]

    def token_for(self, token: str) -> Token | None:
        """The record of ``token`` (expired or not), ``None`` for an unknown or revoked one.
        A token found has its last use recorded (at most once a minute per process)."""
        digest = _hash(token)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_TOKEN_COLUMNS}, token_hash FROM tokens WHERE token_hash = ?",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[-1], digest):
            return None
        found = _token(row[:-1])
        self._note_use(found.name)
        return found

    def _note_use(self, name: str) -> None:
        now = time.monotonic()
        if now - self._used_written.get(name, -_LAST_USED_EVERY_S) < _LAST_USED_EVERY_S:
            return
        self._used_written[name] = now
        with self._lock:
            self._conn.execute(
                "UPDATE tokens SET last_used_at = ? WHERE name = ?", (time.time(), name)
            )

    def token_name(self, token: str) -> str | None:
        """The name of a valid access token (for audit records), ``None`` for an invalid one."""
        found = self.token_for(token)
        return None if found is None or found.expired(time.time()) else found.name

    def verify_token(self, token: str) -> bool:
        """Whether ``token`` is a known, unexpired access token (whatever its scopes)."""
        return self.token_name(token) is not None


def _check_key(key: str) -> None:
    if len(key) < 8 or ":" in key:
        raise CatalogError("a write key must be at least 8 characters and contain no ':'")


def _name_taken(name: str, existing: str, removed: bool) -> str:
    why = "" if existing == name else " (source names are unique ignoring case)"
    if removed:
        return (
            f"source {existing!r} was removed; its name stays taken so its events keep their "
            f"source{why}; choose another name"
        )
    return f"a source named {existing!r} already exists{why}; choose another name"
