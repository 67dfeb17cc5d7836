"""The suppression list as stored: salted hashes of identifiers, grouped by the request that
added them, with a generation counter every change bumps (a small store of the backends
layer). :class:`SuppressionList` writes it in ``privacy.db`` and :class:`SqliteListSource`
reads it there; ``_redis`` keeps it in the serving store's Redis (imported only when named).
:func:`clew.backends.open_suppression_list` and :func:`~clew.backends.open_suppression_source`
pick one; the checker that answers "is this event suppressed?" is
:class:`clew.privacy.suppression.Suppression`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clew._sqlite import open_sqlite, transaction

__all__ = [
    "SCHEMA",
    "ListSource",
    "ListWriter",
    "SqliteListSource",
    "SuppressedHash",
    "SuppressionList",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressed (
    hash TEXT NOT NULL,
    request_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    temporary INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (hash, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS suppressed_request ON suppressed (request_id);
CREATE TABLE IF NOT EXISTS suppression_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO suppression_generation VALUES (1, 0);
"""


@dataclass(frozen=True, slots=True)
class SuppressedHash:
    """One identifier to suppress: its type (kept in the clear for counts) and salted hash."""

    id_type: str
    hash: str


class ListWriter(Protocol):
    def add(self, request_id: str, hashes: Iterable[SuppressedHash], *, temporary: bool) -> int: ...

    def lift_request(self, request_id: str) -> int: ...

    def lift(self, hashes: Iterable[str]) -> int: ...

    def contains(self, hash_: str) -> bool: ...

    def counts(self) -> Counter[str]: ...

    def close(self) -> None: ...


class ListSource(Protocol):
    """What a checker reads: the generation counter and every suppressed hash (hex)."""

    def generation(self) -> int: ...

    def hashes(self) -> Iterable[str]: ...

    def close(self) -> None: ...


class SuppressionList:
    """The list's writer; thread-safe, and several processes may open the same file."""

    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path, SCHEMA, synchronous="FULL")
        self._lock = threading.Lock()

    def add(self, request_id: str, hashes: Iterable[SuppressedHash], *, temporary: bool) -> int:
        """Suppress ``hashes`` on behalf of ``request_id``; the number of new entries."""
        now = time.time()
        rows = [(h.hash, request_id, h.id_type, int(temporary), now) for h in hashes]
        with self._lock, transaction(self._conn):
            before = self._conn.total_changes
            self._conn.executemany("INSERT OR IGNORE INTO suppressed VALUES (?, ?, ?, ?, ?)", rows)
            added = self._conn.total_changes - before
            if added:
                self._bump()
        return added

    def lift_request(self, request_id: str) -> int:
        """Remove the entries ``request_id`` added; the number removed."""
        return self._delete("DELETE FROM suppressed WHERE request_id = ?", (request_id,))

    def lift(self, hashes: Iterable[str]) -> int:
        """Lift every permanent suppression that includes one of ``hashes``: all entries of
        each request that suppressed one of them. Temporary entries of running deletions stay.
        The number of entries removed."""
        wanted = sorted(set(hashes))
        if not wanted:
            return 0
        marks = ",".join("?" * len(wanted))
        return self._delete(
            "DELETE FROM suppressed WHERE temporary = 0 AND request_id IN "
            f"(SELECT request_id FROM suppressed WHERE temporary = 0 AND hash IN ({marks}))",
            wanted,
        )

    def _delete(self, sql: str, params: Sequence[Any]) -> int:
        with self._lock, transaction(self._conn):
            removed = self._conn.execute(sql, params).rowcount
            if removed:
                self._bump()
        return int(removed)

    def _bump(self) -> None:
        self._conn.execute("UPDATE suppression_generation SET value = value + 1 WHERE id = 1")

    def contains(self, hash_: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM suppressed WHERE hash = ? LIMIT 1", (hash_,)
            ).fetchone()
        return row is not None

    def counts(self) -> Counter[str]:
        """Distinct suppressed hashes: ``permanent`` and ``temporary`` (a hash held by both
        counts as permanent)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT p, count(*) FROM "
                "(SELECT max(temporary = 0) AS p FROM suppressed GROUP BY hash) GROUP BY p"
            ).fetchall()
        return Counter({("permanent" if p else "temporary"): n for p, n in rows})

    def close(self) -> None:
        self._conn.close()


class SqliteListSource:
    """The list in ``privacy.db``, as a checker reads it."""

    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path, SCHEMA)

    def generation(self) -> int:
        (value,) = self._conn.execute(
            "SELECT value FROM suppression_generation WHERE id = 1"
        ).fetchone()
        return int(value)

    def hashes(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT hash FROM suppressed")]

    def close(self) -> None:
        self._conn.close()
