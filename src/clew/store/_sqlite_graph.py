"""The identity graph of the SQLite serving store (used by ``clew.store.sqlite``): profile rows
with their traits and seen times, identities with provenance, the redirects merges leave;
resolving ids, snapshots, and the operations on one profile.

The identity table is also the identity index (its primary key is ``(id_type, value)``).
Each function runs on the store's connection inside the caller's transaction and checks what
it needs before its first write; nothing here commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from clew.store import _sqlite_timers as timers
from clew.store.base import (
    IdentityEdge,
    Profile,
    Provenance,
    Redirect,
    StoreError,
    Traits,
    TraitsUpdate,
    UnknownProfileError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    profile_id TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    traits BLOB NOT NULL DEFAULT '{}',
    computed BLOB NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS identities (
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    match_weight REAL,
    PRIMARY KEY (id_type, value)
);
CREATE INDEX IF NOT EXISTS identities_profile ON identities (profile_id);
CREATE TABLE IF NOT EXISTS redirects (
    from_id TEXT PRIMARY KEY,
    into_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    match_weight REAL
);
CREATE INDEX IF NOT EXISTS redirects_into ON redirects (into_id);
"""

# Every redirect whose chain ends at the given profile id.
CHAIN = """
WITH RECURSIVE chain(from_id) AS (
    SELECT from_id FROM redirects WHERE into_id = ?
    UNION
    SELECT r.from_id FROM redirects r JOIN chain c ON r.into_id = c.from_id
)
"""

# Ids per bulk statement (two parameters per identity; SQLite allows 32,766).
CHUNK = 5_000

_traits_decoder = msgspec.json.Decoder(dict[str, Any])


def encode_traits(traits: Traits) -> bytes:
    if not isinstance(traits, dict):
        raise StoreError(f"traits must be a dict, got {type(traits).__name__}")
    return msgspec.json.encode(traits)


def decode_traits(raw: bytes) -> Traits:
    return _traits_decoder.decode(raw)


def prov_values(p: Provenance) -> tuple[str, str, int, float | None]:
    return (p.message_id, p.source_id, p.time_ms, p.match_weight)


def _prov(row: Sequence[Any]) -> Provenance:
    return Provenance(row[0], row[1], row[2], row[3])


# -- resolving and reading -----------------------------------------------------------------


def resolve(conn: sqlite3.Connection, profile_id: str) -> str | None:
    current = profile_id
    while True:
        if conn.execute("SELECT 1 FROM profiles WHERE profile_id = ?", (current,)).fetchone():
            return current
        row = conn.execute("SELECT into_id FROM redirects WHERE from_id = ?", (current,)).fetchone()
        if row is None:
            return None
        current = row[0]


def live(conn: sqlite3.Connection, profile_id: str) -> str:
    found = resolve(conn, profile_id)
    if found is None:
        raise UnknownProfileError(profile_id)
    return found


def owner(conn: sqlite3.Connection, id_type: str, value: str) -> str | None:
    """The profile id the identity is attached to (as stored, not resolved), or ``None``."""
    row = conn.execute(
        "SELECT profile_id FROM identities WHERE id_type = ? AND value = ?", (id_type, value)
    ).fetchone()
    return None if row is None else str(row[0])


def column(conn: sqlite3.Connection, name: str, profile_id: str) -> Traits:
    """A live profile's ``traits`` or ``computed``."""
    (raw,) = conn.execute(
        f"SELECT {name} FROM profiles WHERE profile_id = ?", (profile_id,)
    ).fetchone()
    return decode_traits(raw)


def get(conn: sqlite3.Connection, profile_id: str) -> Profile | None:
    found = resolve(conn, profile_id)
    return None if found is None else snapshots(conn, [found])[0]


def snapshots(conn: sqlite3.Connection, ids: list[str]) -> list[Profile]:
    """Snapshots of live profiles, in the order of ``ids``, in a few statements per chunk."""
    out: list[Profile] = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        edges = _edges(conn, chunk)
        merged = _merged(conn, chunk)
        found: dict[str, Profile] = {}
        for pid, first, last, raw, raw_computed in conn.execute(
            "SELECT profile_id, first_seen_ms, last_seen_ms, traits, computed FROM profiles "
            f"WHERE profile_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            found[pid] = Profile(
                pid,
                first,
                last,
                tuple(edges[pid]),
                decode_traits(raw),
                tuple(r for _, r in sorted(merged[pid], key=lambda m: m[0])),
                decode_traits(raw_computed),
            )
        out.extend(found[pid] for pid in chunk if pid in found)
    return out


def _edges(conn: sqlite3.Connection, chunk: list[str]) -> dict[str, list[IdentityEdge]]:
    """The identities of each profile in ``chunk``, sorted by (id_type, value)."""
    edges: dict[str, list[IdentityEdge]] = {pid: [] for pid in chunk}
    # One event usually attaches several identifiers: share their provenance.
    provenances: dict[tuple[Any, ...], Provenance] = {}
    for pid, id_type, value, *prov in conn.execute(
        "SELECT profile_id, id_type, value, message_id, source_id, time_ms, match_weight "
        f"FROM identities WHERE profile_id IN ({','.join('?' * len(chunk))}) "
        "ORDER BY id_type, value",
        chunk,
    ):
        key = tuple(prov)
        provenance = provenances.get(key)
        if provenance is None:
            provenance = provenances[key] = Provenance(*prov)
        edges[pid].append(IdentityEdge(id_type, value, provenance))
    return edges


def _merged(conn: sqlite3.Connection, chunk: list[str]) -> dict[str, list[tuple[int, Redirect]]]:
    """The redirects whose chain ends at each profile in ``chunk``, with their rowids (the
    order they were written in), one level of the chains at a time."""
    merged: dict[str, list[tuple[int, Redirect]]] = {pid: [] for pid in chunk}
    frontier = {pid: pid for pid in chunk}
    seen = set(chunk)
    while frontier:
        level = list(frontier)
        rows = conn.execute(
            "SELECT rowid, from_id, into_id, message_id, source_id, time_ms, match_weight "
            f"FROM redirects WHERE into_id IN ({','.join('?' * len(level))})",
            level,
        ).fetchall()
        nxt: dict[str, str] = {}
        for row in rows:
            if row[1] in seen:  # a cycle of redirects: follow each id once
                continue
            seen.add(row[1])
            root = frontier[row[2]]
            merged[root].append((row[0], Redirect(row[1], row[2], _prov(row[3:]))))
            nxt[row[1]] = root
        frontier = nxt
    return merged


# -- writing -------------------------------------------------------------------------------


def widen(conn: sqlite3.Connection, profile_id: str, first_ms: int, last_ms: int) -> None:
    """Widen the profile's seen times, creating its row if it has none."""
    conn.execute(
        "INSERT INTO profiles (profile_id, first_seen_ms, last_seen_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (profile_id) DO UPDATE SET "
        "first_seen_ms = min(first_seen_ms, excluded.first_seen_ms), "
        "last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
        (profile_id, first_ms, last_ms),
    )


def touch(conn: sqlite3.Connection, profile_id: str, time_ms: int) -> str:
    found = resolve(conn, profile_id) or profile_id
    widen(conn, found, time_ms, time_ms)
    return found


def attach(
    conn: sqlite3.Connection, profile_id: str, id_type: str, value: str, provenance: Provenance
) -> str:
    found = resolve(conn, profile_id) or profile_id
    current = owner(conn, id_type, value)
    if current is not None and current != found:
        return current
    widen(conn, found, provenance.time_ms, provenance.time_ms)
    if current is None:
        conn.execute(
            "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
            (id_type, value, found, *prov_values(provenance)),
        )
    return found


def detach(conn: sqlite3.Connection, id_type: str, value: str) -> str | None:
    current = owner(conn, id_type, value)
    if current is None:
        return None
    conn.execute("DELETE FROM identities WHERE id_type = ? AND value = ?", (id_type, value))
    return current


def update_column(
    conn: sqlite3.Connection, name: str, profile_id: str, update: TraitsUpdate
) -> Traits:
    """Replace the profile's ``traits`` or ``computed`` by ``update`` of them."""
    found = live(conn, profile_id)
    values = update(column(conn, name, found))
    conn.execute(
        f"UPDATE profiles SET {name} = ? WHERE profile_id = ?", (encode_traits(values), found)
    )
    return values


def delete_profile(conn: sqlite3.Connection, profile_id: str) -> bool:
    found = resolve(conn, profile_id)
    if found is None:
        return False
    chain = conn.execute(CHAIN + "SELECT from_id FROM chain", (found,))
    timers.drop(conn, [found, *(row[0] for row in chain)])
    erase(conn, found)
    return True


def erase(conn: sqlite3.Connection, profile_id: str) -> None:
    """Remove every row of a profile id: its row, identities, history, the redirect from it
    and every redirect whose chain leads to it (its timers are the caller's)."""
    conn.execute(
        CHAIN + "DELETE FROM redirects WHERE from_id IN (SELECT from_id FROM chain)",
        (profile_id,),
    )
    conn.execute("DELETE FROM redirects WHERE from_id = ?", (profile_id,))
    conn.execute("DELETE FROM identities WHERE profile_id = ?", (profile_id,))
    conn.execute("DELETE FROM history WHERE profile_id = ?", (profile_id,))
    conn.execute("DELETE FROM profiles WHERE profile_id = ?", (profile_id,))
