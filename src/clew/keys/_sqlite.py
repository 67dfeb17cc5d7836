"""The key store in a SQLite file of the data directory (``keys.db``), for deployments whose
serving store is SQLite (``clew.keys``). Several processes on one machine share it.

Destroyed key material is overwritten in place (``secure_delete``) and the write-ahead log is
checkpointed and truncated right after, so no byte of a destroyed key stays in the files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from clew._sqlite import open_sqlite, transaction
from clew.keys.ring import KeyStore, StoredKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    id BLOB PRIMARY KEY,
    generation INTEGER NOT NULL,
    wrapped BLOB,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_keys_expiry ON data_keys (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS master_check (id INTEGER PRIMARY KEY CHECK (id = 1), value BLOB);
"""
_PURGE_EVERY_S = 60.0


class SqliteKeyStore(KeyStore):
    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        self._conn.execute("PRAGMA secure_delete = ON")
        self._lock = threading.Lock()
        self._purged = 0.0
        self._closed = False

    def get(self, key_ids: Collection[bytes]) -> dict[bytes, StoredKey]:
        ids = list(key_ids)
        out: dict[bytes, StoredKey] = {}
        now = time.time()
        with self._lock:
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = self._conn.execute(
                    "SELECT id, generation, wrapped FROM data_keys WHERE id IN "
                    f"({','.join('?' * len(chunk))}) AND (expires_at IS NULL OR expires_at > ?)",
                    [*chunk, now],
                ).fetchall()
                out.update((kid, StoredKey(g, w)) for kid, g, w in rows)
        return out

    def get_or_create(self, candidates: Mapping[bytes, bytes]) -> dict[bytes, StoredKey]:
        out: dict[bytes, StoredKey] = {}
        with self._lock, transaction(self._conn):
            for kid, wrapped in candidates.items():
                row = self._conn.execute(
                    "SELECT generation, wrapped FROM data_keys WHERE id = ?", (kid,)
                ).fetchone()
                if row is not None and row[1] is not None:
                    out[kid] = StoredKey(row[0], row[1])
                    continue
                generation = 1 if row is None else row[0] + 1
                self._conn.execute(
                    "INSERT OR REPLACE INTO data_keys (id, generation, wrapped) VALUES (?,?,?)",
                    (kid, generation, wrapped),
                )
                out[kid] = StoredKey(generation, wrapped)
        return out

    def put(self, entries: Mapping[bytes, bytes], ttl_ms: int | None) -> None:
        now = time.time()
        expires = None if ttl_ms is None else now + ttl_ms / 1000
        with self._lock, transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO data_keys (id, generation, wrapped, expires_at) VALUES (?,1,?,?)",
                [(kid, wrapped, expires) for kid, wrapped in entries.items()],
            )
            if now - self._purged > _PURGE_EVERY_S:
                self._purged = now
                self._conn.execute(
                    "DELETE FROM data_keys WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (now,),
                )

    def destroy(self, key_ids: Collection[bytes]) -> int:
        ids = list(key_ids)
        n = 0
        with self._lock:
            with transaction(self._conn):
                for at in range(0, len(ids), 500):
                    chunk = ids[at : at + 500]
                    cur = self._conn.execute(
                        "UPDATE data_keys SET wrapped = NULL WHERE wrapped IS NOT NULL AND id IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk,
                    )
                    n += cur.rowcount
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def check(self, value: bytes) -> bytes:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO master_check (id, value) VALUES (1, ?)", (value,)
            )
            row = self._conn.execute("SELECT value FROM master_check WHERE id = 1").fetchone()
        return bytes(row[0])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()
