"""``clew._sqlite.transaction``: the one transaction block every SQLite state file uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from clew._sqlite import open_sqlite, transaction


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = open_sqlite(tmp_path / "t.db", "CREATE TABLE t (x INTEGER PRIMARY KEY);")
    yield db
    db.close()


def _rows(conn: sqlite3.Connection) -> list[int]:
    return [x for (x,) in conn.execute("SELECT x FROM t ORDER BY x")]


def test_commits_when_the_block_ends(conn: sqlite3.Connection) -> None:
    with transaction(conn) as db:
        assert db is conn and conn.in_transaction
        conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction
    assert _rows(conn) == [1]


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_rolls_back_on_any_exception_and_reraises_it(
    conn: sqlite3.Connection, exc: BaseException
) -> None:
    with pytest.raises(type(exc)), transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        raise exc
    assert not conn.in_transaction
    assert _rows(conn) == []
    with transaction(conn):  # the connection is usable again
        conn.execute("INSERT INTO t VALUES (2)")
    assert _rows(conn) == [2]


def test_immediate_takes_the_write_lock_at_begin(tmp_path: Path, conn: sqlite3.Connection) -> None:
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, timeout=0)
    try:
        with transaction(conn), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        with transaction(conn, immediate=False):
            other.execute("BEGIN IMMEDIATE")  # a plain BEGIN takes no lock yet
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_failed_commit_rolls_back(conn: sqlite3.Connection) -> None:
    conn.executescript(
        "PRAGMA foreign_keys = ON; CREATE TABLE child (p INTEGER "
        "REFERENCES t (x) DEFERRABLE INITIALLY DEFERRED);"
    )
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO child VALUES (42)")  # checked only at COMMIT
    assert not conn.in_transaction
    assert _rows(conn) == []


def test_a_nested_block_joins_the_outer_transaction(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with transaction(conn, immediate=False):
            conn.execute("INSERT INTO t VALUES (2)")
        assert conn.in_transaction  # the inner block did not commit
    assert _rows(conn) == [1, 2]

    with pytest.raises(ValueError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (3)")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (4)")
            raise ValueError("inner")
    assert not conn.in_transaction
    assert _rows(conn) == [1, 2]
