"""Opening Clew's small SQLite state files, and writing transactions on them, the same way
everywhere."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def transaction(
    conn: sqlite3.Connection, *, immediate: bool = True
) -> Iterator[sqlite3.Connection]:
    """One transaction on an autocommit connection (``isolation_level=None``, as
    :func:`open_sqlite` opens): committed when the block ends, rolled back when it raises,
    whatever it raises (``KeyboardInterrupt`` too), and the exception goes on.

    ``immediate`` (the default, for writers) takes the write lock at ``BEGIN IMMEDIATE``, so
    read-modify-write steps cannot interleave with other connections (waiting on the busy
    timeout); ``immediate=False`` is a plain ``BEGIN`` for a consistent read. A ``COMMIT``
    that fails (busy past the timeout, a deferred constraint) rolls back too, so the
    connection is never left inside a transaction; a rollback SQLite already made is not
    repeated. Callers serialise their own use of ``conn`` across threads.

    Used inside another transaction on the same connection, the block joins it: it neither
    begins, commits nor rolls back, the outermost block decides (an exception that leaves
    the inner block rolls everything back when it reaches the outer one).

    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> _ = conn.execute("CREATE TABLE t (x)")
    >>> with transaction(conn):
    ...     _ = conn.execute("INSERT INTO t VALUES (1)")
    >>> try:
    ...     with transaction(conn):
    ...         _ = conn.execute("INSERT INTO t VALUES (2)")
    ...         raise ValueError("no")
    ... except ValueError:
    ...     pass
    >>> conn.execute("SELECT x FROM t").fetchall(), conn.in_transaction
    ([(1,)], False)
    >>> conn.close()
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
