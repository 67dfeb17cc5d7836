"""Where the schema registry's tables live (:class:`RegistryDatabase`): ``registry.db`` in the
data directory (:class:`FileDatabase`), or a document in a store every machine shares
(:class:`SharedDatabase`: Redis when the serving store is Redis), of which each process
keeps a copy in memory. The registry runs the same SQL on either."""

from __future__ import annotations

import abc
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from clew._sqlite import transaction
from clew.schema._registry_model import DDL, SCHEMA_VERSION

if TYPE_CHECKING:
    from clew.definition_store import Storage, Version

# The one document of a shared registry: every row of every table, as JSON.
_DOCUMENT = "registry"
_TABLES = ("plans", "subjects", "versions")


class RegistryDatabase(abc.ABC):
    """The registry's tables. ``reading()`` is a consistent snapshot; ``writing()`` one
    transaction, serialised with every other writer of the same registry (on every machine
    for a shared one) from its first read to its commit."""

    @abc.abstractmethod
    def reading(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def writing(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def where(self) -> str:
        """Where the registry is kept, for messages."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _connect(target: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
    if target != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(DDL)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


class FileDatabase(RegistryDatabase):
    """``path`` (created if needed), which several processes may open: a writer holds
    SQLite's write lock from its first read to its commit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = _connect(path)

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, immediate=False)

    def writing(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn)

    def where(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._conn.close()


def dump(conn: sqlite3.Connection) -> bytes:
    """Every row of the registry's tables, as the shared document holds them."""
    return json.dumps(
        {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in _TABLES},
        separators=(",", ":"),
    ).encode()


def load(conn: sqlite3.Connection, document: bytes, *, only_sources: set[str] | None) -> None:
    """Insert the rows of ``document`` (see :func:`dump`), those of ``only_sources`` alone
    when given."""
    tables = json.loads(document)
    for table in _TABLES:
        rows = [r for r in tables.get(table, []) if only_sources is None or r[0] in only_sources]
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


class SharedDatabase(RegistryDatabase):
    """The registry as one document of ``storage`` (its writers' lock serialises publishes
    across machines). Each handle keeps the tables in memory and reloads them when the
    storage's version moves, which readers check on every read (one round trip)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.RLock()
        self._seen: Version | None = None
        self._loaded = b""
        self._conn = _connect(":memory:")
        self._writing = False

    def _reload(self) -> None:
        version = self._storage.version()
        if version == self._seen:
            return
        try:
            document = self._storage.read(_DOCUMENT)
        except FileNotFoundError:
            document = b""
        conn = _connect(":memory:")
        if document:
            load(conn, document, only_sources=None)
        self._conn.close()
        self._conn, self._seen, self._loaded = conn, version, document

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if not self._writing:
                self._reload()
            with transaction(self._conn, immediate=False):
                yield self._conn

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._storage.locked():
            self._seen = None  # read the latest under the lock, whatever was cached
            self._reload()
            self._writing = True
            try:
                with transaction(self._conn):
                    yield self._conn
            finally:
                self._writing = False
            document = dump(self._conn)
            if document != self._loaded:
                self._storage.write(_DOCUMENT, document)
                self._storage.bump()
                self._seen, self._loaded = self._storage.version(), document

    def where(self) -> str:
        return self._storage.where(_DOCUMENT)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._storage.close()
