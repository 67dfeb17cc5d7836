"""Stage counters kept in ``state.db`` so the process serving ``/metrics`` sees the counts of
stages running in worker processes."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from clew._sqlite import open_sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stage_counters (
    grp TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (grp, name)
) WITHOUT ROWID;
"""


class CounterStore:
    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path, _SCHEMA)
        self._lock = threading.Lock()

    def add(self, group: str, deltas: Counter[str]) -> None:
        """Add ``deltas`` to the group's counters."""
        rows = [(group, k, v) for k, v in deltas.items() if v]
        if not rows:
            return
        with self._lock:
            self._conn.executemany(
                "INSERT INTO stage_counters VALUES (?, ?, ?) ON CONFLICT (grp, name) "
                "DO UPDATE SET value = value + excluded.value",
                rows,
            )

    def read(self, group: str) -> Counter[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, value FROM stage_counters WHERE grp = ?", (group,)
            ).fetchall()
        return Counter(dict(rows))

    def close(self) -> None:
        self._conn.close()
