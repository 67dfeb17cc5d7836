"""Timers and the outbox of the SQLite serving store (used by ``clew.store.sqlite``): each
function runs on the store's connection inside the caller's transaction; nothing here commits.

The outbox's ``seq`` is an ``AUTOINCREMENT`` key, which SQLite never hands out twice once
committed: sequence numbers keep increasing per group even after every payload was
acknowledged (and deleted).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

SCHEMA = """
CREATE TABLE IF NOT EXISTS timers (
    profile_id TEXT PRIMARY KEY,
    due_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due_ms, profile_id);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (grp, seq);
"""


def set_timers(conn: sqlite3.Connection, due: Mapping[str, int | None]) -> None:
    conn.executemany(
        "INSERT INTO timers VALUES (?, ?) ON CONFLICT (profile_id) DO UPDATE SET "
        "due_ms = excluded.due_ms",
        [(pid, ms) for pid, ms in due.items() if ms is not None],
    )
    drop(conn, [pid for pid, ms in due.items() if ms is None])


def drop(conn: sqlite3.Connection, profile_ids: Iterable[str]) -> None:
    """Remove the timers of ``profile_ids`` (those they have)."""
    conn.executemany("DELETE FROM timers WHERE profile_id = ?", [(pid,) for pid in profile_ids])


def due(conn: sqlite3.Connection, now_ms: int, limit: int) -> list[tuple[str, int]]:
    rows = conn.execute(
        "SELECT profile_id, due_ms FROM timers WHERE due_ms <= ? "
        "ORDER BY due_ms, profile_id LIMIT ?",
        (now_ms, max(limit, 0)),
    ).fetchall()
    return [(pid, ms) for pid, ms in rows]


def earliest(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT min(due_ms) FROM timers").fetchone()
    return None if row[0] is None else int(row[0])


def put(conn: sqlite3.Connection, group: str, payload: bytes) -> int:
    cursor = conn.execute("INSERT INTO outbox (grp, payload) VALUES (?, ?)", (group, payload))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def pending(conn: sqlite3.Connection, group: str, limit: int) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT seq, payload FROM outbox WHERE grp = ? ORDER BY seq LIMIT ?",
        (group, max(limit, 0)),
    ).fetchall()
    return [(seq, bytes(payload)) for seq, payload in rows]


def ack(conn: sqlite3.Connection, group: str, seq: int) -> None:
    conn.execute("DELETE FROM outbox WHERE grp = ? AND seq <= ?", (group, seq))
