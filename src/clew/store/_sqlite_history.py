"""The profiles' recent events in the SQLite serving store (used by ``clew.store.sqlite``):
appending, trimming to the store's ``history``, reading newest first, deleting by time.
Each function runs on the store's connection inside the caller's transaction; nothing here
commits. ``seq`` is the table's ``AUTOINCREMENT`` key: it orders every history by arrival,
also across merges.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from clew.store import _sqlite_graph as graph
from clew.store.base import StoredEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_profile ON history (profile_id, seq);
"""

# Drops a profile's history beyond its newest `history` events (parameters: profile id twice,
# then the history length).
_TRIM = (
    "DELETE FROM history WHERE profile_id = ? AND seq <= (SELECT seq FROM history "
    "WHERE profile_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)
_APPEND = "INSERT INTO history (profile_id, message_id, time_ms, body) VALUES (?, ?, ?, ?)"


def add_event(conn: sqlite3.Connection, profile_id: str, event: StoredEvent, keep: int) -> None:
    live = graph.live(conn, profile_id)
    conn.execute(_APPEND, (live, event.message_id, event.time_ms, event.body))
    trim(conn, live, keep)


def events(
    conn: sqlite3.Connection, profile_id: str, limit: int, before: int | None
) -> list[StoredEvent]:
    live = graph.resolve(conn, profile_id)
    if live is None:
        return []
    rows = conn.execute(
        "SELECT seq, message_id, time_ms, body FROM history WHERE profile_id = ? "
        "AND seq < ? ORDER BY seq DESC LIMIT ?",
        (live, before if before is not None else 1 << 62, limit),
    ).fetchall()
    return [StoredEvent(*row) for row in rows]


def delete_history(
    conn: sqlite3.Connection, profile_id: str, since_ms: int | None, until_ms: int | None
) -> int:
    live = graph.resolve(conn, profile_id)
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


def append(conn: sqlite3.Connection, events: Sequence[tuple[str, StoredEvent]]) -> None:
    """Append ``(profile id, event)`` pairs, oldest first (untrimmed)."""
    conn.executemany(_APPEND, [(pid, e.message_id, e.time_ms, e.body) for pid, e in events])


def trim(conn: sqlite3.Connection, profile_id: str, keep: int) -> None:
    """Drop the profile's events beyond its ``keep`` newest."""
    conn.execute(_TRIM, (profile_id, profile_id, keep))


def trim_many(conn: sqlite3.Connection, profile_ids: Iterable[str], keep: int) -> None:
    conn.executemany(_TRIM, [(pid, pid, keep) for pid in profile_ids])


def move_many(conn: sqlite3.Connection, moves: Mapping[str, str]) -> None:
    """Give each ``from_id``'s events to the profile it maps to (merges)."""
    conn.executemany(
        "UPDATE history SET profile_id = ? WHERE profile_id = ?",
        [(into, from_id) for from_id, into in moves.items()],
    )


def move(conn: sqlite3.Connection, from_id: str, into: str) -> None:
    """Give ``from_id``'s events to ``into`` (a merge)."""
    conn.execute("UPDATE history SET profile_id = ? WHERE profile_id = ?", (into, from_id))
