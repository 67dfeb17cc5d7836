"""Making sure a SQLite file keeps no bytes of what was deleted from it (used by
``clew.privacy.erase``).

Clew's state files delete with ``secure_delete`` on (the log, the serving store, the outbox,
the imports ledger, the person index), which zeroes deleted rows in the pages it writes. Two
places can still hold old bytes: the write-ahead log, whose earlier frames keep earlier page
images until it is checkpointed and truncated; and free space left by deletes made before
``secure_delete`` was on (a data directory from an older Clew). So after deleting, the WAL is
checkpointed with ``TRUNCATE`` and, if the file still contains one of the person's values,
the database is rebuilt with ``VACUUM`` (which copies only live rows) and checkpointed again.
A value that is still there after that is in a live row (another person's record quoting it)
and is reported.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from clew.privacy._verify_bytes import Needles, find_in_file

_TRIES = 40
_PAUSE_S = 0.05


class ScrubError(RuntimeError):
    """The file could not be cleaned; the message says why and what to do."""


def _checkpoint(conn: sqlite3.Connection) -> bool:
    for _ in range(_TRIES):
        (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy == 0:
            return True
        time.sleep(_PAUSE_S)
    return False


def holds(path: Path, found: Needles) -> bool:
    return any(
        find_in_file(p, found) is not None for p in (path, path.with_name(path.name + "-wal"))
    )


def scrub(path: Path, found: Needles) -> str:
    """Clean ``path`` (see the module docstring); returns what was done. Raises
    :class:`ScrubError` when a reader kept the WAL from being truncated or a value remains."""
    if not path.exists():
        return ""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        if not _checkpoint(conn):
            raise ScrubError(
                f"{path.name}: other connections kept reading, so its write-ahead log could "
                "not be truncated; run the request again"
            )
        if not holds(path, found):
            return ""
        conn.execute("VACUUM")
        if not _checkpoint(conn):
            raise ScrubError(f"{path.name}: rebuilt, but its write-ahead log stayed in use")
    finally:
        conn.close()
    if holds(path, found):
        raise ScrubError(
            f"{path.name} still holds a value of the person in a live row (a record of "
            "another person may quote it); `clew privacy verify` shows where"
        )
    return f"{path.name} rebuilt (its free space held old bytes)"
