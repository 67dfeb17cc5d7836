"""Opening Clew's small SQLite state files the same way everywhere."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

_WAL_ATTEMPTS = 100


def open_sqlite(path: Path, schema: str = "", synchronous: str = "NORMAL") -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from several threads (callers serialise
    their own use) and processes, with ``schema`` applied.

    ``synchronous=NORMAL`` survives a process crash; ``FULL`` also survives a power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    # Switching a new file to WAL takes an exclusive lock without waiting on the busy
    # timeout: processes starting together on a fresh data directory retry instead of dying.
    for attempt in range(_WAL_ATTEMPTS):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.05)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if schema:
        conn.executescript(schema)
    return conn
