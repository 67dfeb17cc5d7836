"""The embedded log's tables and how records are stored in them (see :mod:`clew.log.embedded`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from clew.log.base import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS partitions (
    tp INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS records (
    tp INTEGER NOT NULL,
    off INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB,
    PRIMARY KEY (tp, off)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (tp, ts);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    tp INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, tp)
);
"""

_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The ``headers`` column of a record: msgpack, NULL when there is none."""
    return _headers_encoder.encode(list(headers)) if headers else None


def read_records(
    conn: sqlite3.Connection, tp: int, topic: str, partition: int, offset: int, limit: int
) -> list[Record]:
    """Up to ``limit`` records of partition ``tp`` (``topic``/``partition``) from ``offset``."""
    rows = conn.execute(
        "SELECT off, ts, key, value, headers FROM records WHERE tp = ? AND off >= ? "
        "ORDER BY off LIMIT ?",
        (tp, offset, limit),
    ).fetchall()
    return [
        Record(
            topic,
            partition,
            off,
            key,
            value,
            tuple(_headers_decoder.decode(h)) if h else (),
            ts,
        )
        for off, ts, key, value, h in rows
    ]


def trim_to_bytes(conn: sqlite3.Connection, tp: int, limit: int) -> int:
    """Delete the oldest records of partition ``tp`` until its keys and values hold at most
    ``limit`` bytes; the number deleted."""
    total = 0
    cutoff: int | None = None
    for off, size in conn.execute(
        "SELECT off, length(value) + coalesce(length(key), 0) FROM records WHERE tp = ? "
        "ORDER BY off DESC",
        (tp,),
    ):
        total += size
        if total > limit:
            cutoff = off
            break
    if cutoff is None:
        return 0
    return conn.execute("DELETE FROM records WHERE tp = ? AND off <= ?", (tp, cutoff)).rowcount
