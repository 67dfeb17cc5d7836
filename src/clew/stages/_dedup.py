"""Exact deduplication by ``messageId`` over a time window, kept in ``state.db``.

A message id is *claimed* by the first place it was seen (its origin: raw partition, offset
and index in the request). Seeing the same id again from the same origin is a replay of that
record after a crash, not a duplicate, so claiming before the downstream write is safe: a
crash between the two re-delivers the record and the claim lets it through again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from clew._sqlite import open_sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    message_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen_at ON dedup (seen_at);
"""

_CHUNK = 400


class DedupIndex:
    def __init__(self, path: Path) -> None:
        # After a power loss the last claims may be lost, which only means a duplicate
        # arriving in that instant is let through once.
        self._conn = open_sqlite(path, _SCHEMA, synchronous="NORMAL")
        self._lock = threading.Lock()

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]:
        """Claim each ``(message_id, origin)``; returns the indexes of ``items`` that are
        duplicates (claimed before by another origin, or earlier in ``items``)."""
        dupes: set[int] = set()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                owners: dict[str, str] = {}
                ids = list({mid for mid, _ in items})
                for i in range(0, len(ids), _CHUNK):
                    chunk = ids[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    owners.update(
                        conn.execute(
                            f"SELECT message_id, origin FROM dedup WHERE message_id IN ({marks})",
                            chunk,
                        ).fetchall()
                    )
                new_rows = []
                for idx, (mid, origin) in enumerate(items):
                    owner = owners.get(mid)
                    if owner is None:
                        owners[mid] = origin
                        new_rows.append((mid, origin, now_ms))
                    elif owner != origin:
                        dupes.add(idx)
                conn.executemany("INSERT INTO dedup VALUES (?, ?, ?)", new_rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return dupes

    def prune(self, older_than_ms: int) -> int:
        """Forget claims made before ``older_than_ms``."""
        with self._lock:
            return self._conn.execute(
                "DELETE FROM dedup WHERE seen_at < ?", (older_than_ms,)
            ).rowcount

    def close(self) -> None:
        self._conn.close()
