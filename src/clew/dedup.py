"""Exact deduplication by ``messageId`` over a time window, kept in ``state.db``, or in Redis
when the serving store is Redis (validate workers on several machines then share the claims);
a small store of the backends layer, opened by :func:`clew.backends.open_dedup`.

A message id is *claimed* by the first place it was seen (its origin: raw partition, offset
and index in the request). Seeing the same id again from the same origin is a replay of that
record after a crash, not a duplicate, so claiming before the downstream write is safe: a
crash between the two re-delivers the record and the claim lets it through again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from clew._redis_shared import reaching
from clew._sqlite import open_sqlite, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    message_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen_at ON dedup (seen_at);
"""

_CHUNK = 400


class Dedup(Protocol):
    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]: ...

    def prune(self, older_than_ms: int) -> int: ...

    def close(self) -> None: ...


class DedupIndex:
    def __init__(self, path: Path) -> None:
        # After a power loss the last claims may be lost, which only means a duplicate
        # arriving in that instant is let through once.
        self._conn = open_sqlite(path, _SCHEMA, synchronous="NORMAL")
        self._lock = threading.Lock()

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]:
        """Claim each ``(message_id, origin)``; returns the indexes of ``items`` that are
        duplicates (claimed before by another origin, or earlier in ``items``)."""
        first: dict[str, str] = dict(items)
        dupes: set[int] = set()
        if len(first) < len(items):
            # An id comes more than once (rare): the first origin of each is the one claiming.
            first = {}
            for idx, (mid, origin) in enumerate(items):
                if first.setdefault(mid, origin) != origin:
                    dupes.add(idx)
        # In key order, so that the B-tree pages are visited once each, in order, instead of
        # at random (a third less time on a batch of 20k).
        ids = sorted(first)
        with self._lock, transaction(self._conn) as conn:
            before = conn.total_changes
            # Each row made as it is inserted: 20k rows held at once are 20k objects more for
            # the garbage collector to scan while they live.
            conn.executemany(
                "INSERT INTO dedup VALUES (?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                ((mid, first[mid], now_ms) for mid in ids),
            )
            if conn.total_changes - before == len(ids):
                # Every id was new (the usual case): no lookup needed.
                return dupes
            # Some ids were claimed before; whoever claimed an id first owns it now.
            owners: dict[str, str] = {}
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                owners.update(
                    conn.execute(
                        f"SELECT message_id, origin FROM dedup WHERE message_id IN ({marks})",
                        chunk,
                    ).fetchall()
                )
        return {idx for idx, (mid, origin) in enumerate(items) if owners[mid] != origin}

    def prune(self, older_than_ms: int) -> int:
        """Forget claims made before ``older_than_ms``."""
        with self._lock:
            return self._conn.execute(
                "DELETE FROM dedup WHERE seen_at < ?", (older_than_ms,)
            ).rowcount

    def close(self) -> None:
        self._conn.close()


class RedisDedupIndex:
    """Claims as Redis strings ``<prefix>:<message_id>`` holding the origin, expiring after the
    window. One ``SET NX GET`` per id claims it and says who held it, in one round trip per
    batch; each id is its own key, so on a Redis Cluster the claims spread over every shard.
    """

    def __init__(self, client: Any, prefix: str, window_ms: int) -> None:
        self._client = client
        self._prefix = prefix
        self._window_ms = max(1, window_ms)

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]:
        dupes: set[int] = set()
        first: dict[str, str] = {}
        for idx, (mid, origin) in enumerate(items):
            owner = first.setdefault(mid, origin)
            if owner != origin:
                dupes.add(idx)
        if not first:
            return dupes
        pipe = self._client.pipeline(transaction=False)
        for mid, origin in first.items():
            pipe.set(f"{self._prefix}:{mid}", origin, nx=True, get=True, px=self._window_ms)
        held = dict(zip(first, reaching("claiming message ids", pipe.execute), strict=True))
        for idx, (mid, origin) in enumerate(items):
            before = held[mid]
            if before is not None and before.decode() != origin:
                dupes.add(idx)
        return dupes

    def prune(self, older_than_ms: int) -> int:
        """Nothing to do: Redis expires each claim at the end of its window."""
        return 0

    def close(self) -> None:
        self._client.close()
