"""The embedded serving store: one SQLite database in WAL mode, no server.

Every operation is one SQLite transaction; writes take the write lock up front
(``BEGIN IMMEDIATE``), so read-modify-write steps cannot interleave across threads or
processes. Within a process, calls are serialised on one connection. Inside
:meth:`~SQLiteProfileStore.transaction` the operations share one transaction (one fsync for a
whole batch); a nested block runs in a savepoint, and an operation that raises has written
nothing (each checks before its first write).

This module holds the connection and the transactions; the SQL of each concern is in a module
of its own, run on the connection inside the transaction opened here: ``_sqlite_graph``
(profiles, identities, redirects, traits), ``_sqlite_history``, ``_sqlite_batch`` (bulk
reads and the writes that span profiles), ``_sqlite_separations`` and ``_sqlite_timers``
(timers and the outbox).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from clew._sqlite import open_sqlite
from clew._sqlite import transaction as sqlite_transaction
from clew.store import _sqlite_batch as batch
from clew.store import _sqlite_graph as graph
from clew.store import _sqlite_history as hist
from clew.store import _sqlite_separations as separations
from clew.store import _sqlite_timers as timers
from clew.store.base import (
    Profile,
    ProfileStore,
    Provenance,
    Separation,
    StoreClosedError,
    StoredEvent,
    Traits,
    TraitsMerge,
    TraitsUpdate,
    keep_existing,
)

_OFFSETS = """
CREATE TABLE IF NOT EXISTS offsets (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, partition)
);
"""
# In the order the tables were always created.
_SCHEMA = graph.SCHEMA + hist.SCHEMA + _OFFSETS + separations.SCHEMA + timers.SCHEMA

_CACHE_KIB = 32 * 1024


class SQLiteProfileStore(ProfileStore):
    def __init__(self, path: Path, synchronous: str = "NORMAL", history: int = 100) -> None:
        self._conn: sqlite3.Connection | None = open_sqlite(path, _SCHEMA, synchronous)
        # A stage batch touches hundreds of profiles spread over the whole database; SQLite's
        # default 2 MB page cache makes each batch re-read most index pages (measured: a
        # 32 MB cache, filled only as pages are used, gives the profiles stage ~10% more).
        self._conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        # Deleted and overwritten rows (trimmed history, replaced traits, an erased person)
        # are zeroed in the file, not left in free space, so that forgetting a person
        # leaves no bytes behind (docs/privacy.md).
        self._conn.execute("PRAGMA secure_delete = ON")
        self._lock = threading.RLock()
        self._depth = 0
        # Writes to profiles through this handle (other connections' show in data_version).
        self._writes = 0
        self.history = history
        self._path = path

    @property
    def local_file(self) -> Path:
        return self._path

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError("the profile store is closed")
            if self._depth:
                yield from self._savepoint(conn)
                return
            with self._tx(write=True):
                yield

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosedError("the profile store is closed")
            if self._depth:
                # Inside a block: every operation checks what it needs before its first
                # write, so one that raises has written nothing and needs no savepoint.
                yield conn
                return
            self._depth = 1
            try:
                with sqlite_transaction(conn, immediate=write):
                    yield conn
            finally:
                self._depth = 0

    @contextmanager
    def _profile_write(self) -> Iterator[sqlite3.Connection]:
        with self._tx(write=True) as conn:
            self._writes += 1
            yield conn

    def version(self) -> tuple[int, int]:
        with self._tx() as conn:
            (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        return data_version, self._writes

    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        self._depth += 1
        name = f"s{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            raise
        finally:
            conn.execute(f"RELEASE {name}")
            self._depth -= 1

    # -- the identity graph ---------------------------------------------------------------

    def touch(self, profile_id: str, time_ms: int) -> str:
        with self._profile_write() as conn:
            return graph.touch(conn, profile_id, time_ms)

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        with self._profile_write() as conn:
            return graph.attach(conn, profile_id, id_type, value, provenance)

    def detach(self, id_type: str, value: str) -> str | None:
        with self._profile_write() as conn:
            return graph.detach(conn, id_type, value)

    def lookup(self, id_type: str, value: str) -> str | None:
        with self._tx() as conn:
            return graph.owner(conn, id_type, value)

    def resolve(self, profile_id: str) -> str | None:
        with self._tx() as conn:
            return graph.resolve(conn, profile_id)

    def get(self, profile_id: str) -> Profile | None:
        with self._tx() as conn:
            return graph.get(conn, profile_id)

    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
        computed: TraitsMerge = keep_existing,
    ) -> str:
        with self._profile_write() as conn:
            return batch.merge(conn, into, from_, provenance, traits, computed, self.history)

    def delete_profile(self, profile_id: str) -> bool:
        with self._profile_write() as conn:
            return graph.delete_profile(conn, profile_id)

    # -- traits ---------------------------------------------------------------------------

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._profile_write() as conn:
            return graph.update_column(conn, "traits", profile_id, update)

    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        with self._profile_write() as conn:
            return graph.update_column(conn, "computed", profile_id, update)

    # -- history --------------------------------------------------------------------------

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        with self._profile_write() as conn:
            hist.add_event(conn, profile_id, event, self.history)

    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        with self._tx() as conn:
            return hist.events(conn, profile_id, limit, before)

    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        with self._profile_write() as conn:
            return hist.delete_history(conn, profile_id, since_ms, until_ms)

    # -- whole profiles -------------------------------------------------------------------

    def scan(self, after: str | None, limit: int) -> list[Profile]:
        with self._tx() as conn:
            return batch.scan(conn, after, limit)

    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        with self._tx() as conn:
            return batch.load(conn, identities)

    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        with self._profile_write() as conn:
            batch.put_profile(conn, profile, history, self.history)

    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
        moved: Collection[tuple[str, str]] | None = None,
    ) -> None:
        batch.check(profiles)
        with self._profile_write() as conn:
            batch.write_back(conn, profiles, gone, events, self.history, moved)

    # -- separations ----------------------------------------------------------------------

    def add_separation(self, separation: Separation) -> None:
        with self._tx(write=True) as conn:
            separations.add(conn, separation)

    def separations(self) -> list[Separation]:
        with self._tx() as conn:
            return separations.every(conn)

    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        with self._tx(write=True) as conn:
            return separations.delete(conn, identities)

    # -- timers and the outbox ------------------------------------------------------------

    def set_timers(self, due: Mapping[str, int | None]) -> None:
        with self._tx(write=True) as conn:
            timers.set_timers(conn, due)

    def due_timers(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        with self._tx() as conn:
            return timers.due(conn, now_ms, limit)

    def next_timer(self) -> int | None:
        with self._tx() as conn:
            return timers.earliest(conn)

    def outbox_put(self, group: str, payload: bytes) -> int:
        with self._tx(write=True) as conn:
            return timers.put(conn, group, payload)

    def outbox_pending(self, group: str, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._tx() as conn:
            return timers.pending(conn, group, limit)

    def outbox_ack(self, group: str, seq: int) -> None:
        with self._tx(write=True) as conn:
            timers.ack(conn, group, seq)

    # -- offsets --------------------------------------------------------------------------

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT topic, partition, offset FROM offsets WHERE group_name = ?", (group,)
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._tx(write=True) as conn:
            conn.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "offset = excluded.offset",
                [(group, t, p, o) for (t, p), o in offsets.items()],
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
