"""Separations in the SQLite serving store (used by ``clew.store.sqlite``): pairs of
identifiers that must never share a profile, oldest first by rowid. Each function runs on the
store's connection inside the caller's transaction; nothing here commits."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from clew.store.base import Provenance, Separation

SCHEMA = """
CREATE TABLE IF NOT EXISTS separations (
    a_type TEXT NOT NULL,
    a_value TEXT NOT NULL,
    b_type TEXT NOT NULL,
    b_value TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (a_type, a_value, b_type, b_value)
);
"""


def add(conn: sqlite3.Connection, separation: Separation) -> None:
    p = separation.provenance
    conn.execute(
        "INSERT OR IGNORE INTO separations VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*separation.a, *separation.b, p.message_id, p.source_id, p.time_ms),
    )


def every(conn: sqlite3.Connection) -> list[Separation]:
    rows = conn.execute("SELECT * FROM separations ORDER BY rowid").fetchall()
    return [Separation((r[0], r[1]), (r[2], r[3]), Provenance(r[4], r[5], r[6])) for r in rows]


def delete(conn: sqlite3.Connection, identities: Collection[tuple[str, str]]) -> int:
    """Remove the separations naming any of ``identities`` on either side; returns how many."""
    keys = [(t, v, t, v) for t, v in set(identities)]
    before = conn.total_changes
    conn.executemany(
        "DELETE FROM separations WHERE (a_type = ? AND a_value = ?) "
        "OR (b_type = ? AND b_value = ?)",
        keys,
    )
    return conn.total_changes - before
