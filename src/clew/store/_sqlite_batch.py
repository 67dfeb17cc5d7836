"""The SQLite serving store's operations over many rows at once (used by
``clew.store.sqlite``): the bulk reads (``scan``, ``load``) and the writes that span profiles
(``merge``, ``put_profile``, ``write_back``). Each function runs on the store's connection
inside the caller's transaction and checks what it needs before its first write; nothing here
commits."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence

from clew.store import _sqlite_graph as graph
from clew.store import _sqlite_history as history
from clew.store import _sqlite_timers as timers
from clew.store._sqlite_graph import CHUNK, encode_traits, prov_values
from clew.store.base import Profile, Provenance, StoredEvent, StoreError, TraitsMerge

_REDIRECT = "INSERT OR REPLACE INTO redirects VALUES (?, ?, ?, ?, ?, ?)"
# A working set writes back every redirect of its profiles, nearly all as they were: the WHERE
# leaves those rows alone.
_UPSERT_REDIRECT = (
    "INSERT INTO redirects VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (from_id) DO UPDATE SET "
    "into_id = excluded.into_id, message_id = excluded.message_id, "
    "source_id = excluded.source_id, time_ms = excluded.time_ms, "
    "match_weight = excluded.match_weight WHERE into_id != excluded.into_id "
    "OR message_id != excluded.message_id OR source_id != excluded.source_id "
    "OR time_ms != excluded.time_ms OR match_weight IS NOT excluded.match_weight"
)


def scan(conn: sqlite3.Connection, after: str | None, limit: int) -> list[Profile]:
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT profile_id FROM profiles WHERE profile_id > ? ORDER BY profile_id LIMIT ?",
            (after or "", limit),
        )
    ]
    return graph.snapshots(conn, ids)


def load(conn: sqlite3.Connection, identities: Collection[tuple[str, str]]) -> list[Profile]:
    keys = list(identities)
    owners: dict[str, None] = {}
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        # A join from the keys, not `(id_type, value) IN (VALUES …)`: SQLite plans the IN
        # form as a scan of the whole table.
        rows = conn.execute(
            f"WITH k(t, v) AS (VALUES {','.join(['(?, ?)'] * len(chunk))}) "
            "SELECT DISTINCT i.profile_id FROM k JOIN identities i "
            "ON i.id_type = k.t AND i.value = k.v",
            [part for key in chunk for part in key],
        )
        owners.update(dict.fromkeys(row[0] for row in rows))
    return graph.snapshots(conn, list(owners))


def merge(
    conn: sqlite3.Connection,
    into: str,
    from_: str,
    provenance: Provenance,
    traits: TraitsMerge,
    computed: TraitsMerge,
    keep: int,
) -> str:
    survivor = graph.live(conn, into)
    gone = graph.live(conn, from_)
    if survivor == gone:
        return survivor
    merged = encode_traits(
        traits(graph.column(conn, "traits", survivor), graph.column(conn, "traits", gone))
    )
    merged_computed = encode_traits(
        computed(graph.column(conn, "computed", survivor), graph.column(conn, "computed", gone))
    )
    first, last = conn.execute(
        "SELECT first_seen_ms, last_seen_ms FROM profiles WHERE profile_id = ?", (gone,)
    ).fetchone()
    graph.widen(conn, survivor, first, last)
    conn.execute(
        "UPDATE profiles SET traits = ?, computed = ? WHERE profile_id = ?",
        (merged, merged_computed, survivor),
    )
    conn.execute("UPDATE identities SET profile_id = ? WHERE profile_id = ?", (survivor, gone))
    history.move(conn, gone, survivor)
    history.trim(conn, survivor, keep)
    conn.execute("DELETE FROM profiles WHERE profile_id = ?", (gone,))
    conn.execute(
        "INSERT INTO redirects VALUES (?, ?, ?, ?, ?, ?)",
        (gone, survivor, *prov_values(provenance)),
    )
    timers.drop(conn, [gone])
    return survivor


def put_profile(
    conn: sqlite3.Connection, profile: Profile, events: Sequence[StoredEvent], keep: int
) -> None:
    pid = profile.profile_id
    for edge in profile.identities:
        current = graph.owner(conn, edge.id_type, edge.value)
        if current is not None and current != pid:
            raise StoreError(
                f"{edge.id_type}:{edge.value} belongs to profile {current}; delete or "
                f"detach it before writing profile {pid}"
            )
    graph.erase(conn, pid)
    conn.execute(
        "INSERT INTO profiles VALUES (?, ?, ?, ?, ?)",
        (
            pid,
            profile.first_seen_ms,
            profile.last_seen_ms,
            encode_traits(profile.traits),
            encode_traits(profile.computed),
        ),
    )
    conn.executemany(
        "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.id_type, e.value, pid, *prov_values(e.provenance)) for e in profile.identities],
    )
    conn.executemany(
        _REDIRECT, [(r.from_id, r.into_id, *prov_values(r.provenance)) for r in profile.merged]
    )
    history.append(conn, [(pid, e) for e in events])
    history.trim(conn, pid, keep)


def check(profiles: Sequence[Profile]) -> None:
    """Raise :class:`StoreError` for traits that cannot be stored (before any write)."""
    for profile in profiles:
        encode_traits(profile.traits)
        encode_traits(profile.computed)


def write_back(
    conn: sqlite3.Connection,
    profiles: Sequence[Profile],
    gone: Mapping[str, str],
    events: Sequence[tuple[str, StoredEvent]],
    keep: int,
    moved: Collection[tuple[str, str]] | None = None,
) -> None:
    history.move_many(conn, gone)
    conn.executemany("DELETE FROM profiles WHERE profile_id = ?", [(g,) for g in gone])
    conn.executemany(
        "INSERT INTO profiles VALUES (?, ?, ?, ?, ?) ON CONFLICT (profile_id) DO UPDATE "
        "SET first_seen_ms = excluded.first_seen_ms, last_seen_ms = excluded.last_seen_ms, "
        "traits = excluded.traits, computed = excluded.computed",
        [
            (
                p.profile_id,
                p.first_seen_ms,
                p.last_seen_ms,
                encode_traits(p.traits),
                encode_traits(p.computed),
            )
            for p in profiles
        ],
    )
    # Most identities stay where they were: the WHERE skips rewriting those rows.
    conn.executemany(
        "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id_type, value) "
        "DO UPDATE SET profile_id = excluded.profile_id "
        "WHERE profile_id != excluded.profile_id",
        [
            (e.id_type, e.value, p.profile_id, *prov_values(e.provenance))
            for p in profiles
            for e in p.identities
            if moved is None or (e.id_type, e.value) in moved
        ],
    )
    conn.executemany(
        _UPSERT_REDIRECT,
        [(r.from_id, r.into_id, *prov_values(r.provenance)) for p in profiles for r in p.merged],
    )
    history.append(conn, events)
    history.trim_many(conn, {*gone.values(), *(pid for pid, _ in events)}, keep)
    timers.drop(conn, gone)
