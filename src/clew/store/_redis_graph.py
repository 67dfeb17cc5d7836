"""The identity graph over a Redis transaction (used by ``clew.store.redis``): resolving ids
through redirects, profile snapshots, writing and erasing redirects and profiles, and the
operations on one profile (its identities, traits, deletion).

Each function reads what it needs with :meth:`Tx.fetch`, batching the nodes of many ids into
one round trip, and writes through the transaction; nothing here commits. Node fields are
described in ``clew.store._redis_keys``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from clew.store import _redis_timers as timers
from clew.store._redis_keys import (
    ROW,
    TO,
    Keys,
    RedirectRecord,
    decode_identity_field,
    decode_provenance,
    decode_redirect,
    decode_traits,
    encode_provenance,
    encode_redirect,
    encode_traits,
    identity_field,
    is_identity_field,
    redirect_field,
    redirect_fields,
)
from clew.store._redis_tx import Kind, Tx
from clew.store.base import (
    IdentityEdge,
    Profile,
    Provenance,
    StoreError,
    Traits,
    TraitsUpdate,
    UnknownProfileError,
)

# A longer chain of redirects than any run of merges makes: the data are corrupt (a cycle).
_MAX_HOPS = 10_000


def fetch_nodes(tx: Tx, k: Keys, ids: Iterable[str], also: Iterable[tuple[str, Kind]] = ()) -> None:
    tx.fetch([*((k.node(pid), "hash") for pid in ids), *also])


def node(tx: Tx, k: Keys, profile_id: str) -> Mapping[bytes, bytes]:
    return tx.hash(k.node(profile_id))


def is_live(tx: Tx, k: Keys, profile_id: str) -> bool:
    return b"first" in node(tx, k, profile_id)


def identities(tx: Tx, k: Keys, profile_id: str) -> dict[bytes, bytes]:
    """The identity fields of a node (field -> provenance)."""
    return {f: raw for f, raw in node(tx, k, profile_id).items() if is_identity_field(f)}


def resolve_many(
    tx: Tx, k: Keys, ids: Collection[str], also: Iterable[tuple[str, Kind]] = ()
) -> dict[str, str | None]:
    """The surviving id of each id (``None`` if unknown or deleted), one round trip per hop
    of the longest chain; ``also`` are more keys to load in the first round trip."""
    current = {pid: pid for pid in ids}
    out: dict[str, str | None] = {}
    extra = list(also)
    for _ in range(_MAX_HOPS):
        if not current:
            return out
        fetch_nodes(tx, k, set(current.values()), extra)
        extra = []
        hops: dict[str, str] = {}
        for pid, at in current.items():
            fields = node(tx, k, at)
            if b"first" in fields:
                out[pid] = at
            elif (raw := fields.get(TO)) is None:
                out[pid] = None
            else:
                hops[pid] = decode_redirect(at, raw).redirect.into_id
        current = hops
    raise StoreError(f"the redirects of {sorted(current)[:3]} form a cycle; the store is corrupt")


def resolve(tx: Tx, k: Keys, profile_id: str, also: Iterable[tuple[str, Kind]] = ()) -> str | None:
    return resolve_many(tx, k, [profile_id], also)[profile_id]


def live(tx: Tx, k: Keys, profile_id: str) -> str:
    """The surviving id; raises :class:`UnknownProfileError` if there is none."""
    found = resolve(tx, k, profile_id)
    if found is None:
        raise UnknownProfileError(profile_id)
    return found


def lookup(tx: Tx, k: Keys, id_type: str, value: str) -> str | None:
    key = k.index(id_type, value)
    tx.fetch([(key, "str")])
    owner = tx.string(key)
    return None if owner is None else owner.decode()


def get(tx: Tx, k: Keys, profile_id: str) -> Profile | None:
    found = resolve(tx, k, profile_id)
    return None if found is None else snapshots(tx, k, [found])[0]


def redirect_trees(tx: Tx, k: Keys, roots: Collection[str]) -> dict[str, list[RedirectRecord]]:
    """Every redirect leading (through any chain) to each root, one round trip per level."""
    out: dict[str, list[RedirectRecord]] = {root: [] for root in roots}
    frontier = {root: root for root in roots}
    seen = set(roots)
    for _ in range(_MAX_HOPS):
        if not frontier:
            return out
        fetch_nodes(tx, k, frontier)
        nxt: dict[str, str] = {}
        for at, root in frontier.items():
            for from_id, raw in redirect_fields(node(tx, k, at)):
                if from_id in seen:
                    continue
                seen.add(from_id)
                out[root].append(decode_redirect(from_id, raw))
                nxt[from_id] = root
        frontier = nxt
    raise StoreError(
        "the redirect tree is deeper than any run of merges makes; the store is corrupt"
    )


def snapshots(tx: Tx, k: Keys, lives: Collection[str]) -> list[Profile]:
    """Snapshots of live profiles, in the order given."""
    trees = redirect_trees(tx, k, lives)
    out = []
    for pid in lives:
        fields = node(tx, k, pid)
        edges = sorted(
            (decode_identity_field(f), raw) for f, raw in fields.items() if is_identity_field(f)
        )
        out.append(
            Profile(
                pid,
                int(fields[b"first"]),
                int(fields[b"last"]),
                tuple(IdentityEdge(t, v, decode_provenance(raw)) for (t, v), raw in edges),
                decode_traits(fields[b"traits"]),
                tuple(r.redirect for r in sorted(trees[pid], key=lambda r: r.order)),
                decode_traits(fields[b"computed"]),
            )
        )
    return out


def create(tx: Tx, k: Keys, profile_id: str, fields: Mapping[bytes, bytes]) -> None:
    """Make the loaded id a live profile (``fields`` must hold every column of ``ROW``)."""
    tx.hset(k.node(profile_id), fields)
    tx.zadd(k.profiles, {profile_id.encode(): 0})


def retire(tx: Tx, k: Keys, profile_id: str) -> None:
    """Remove a live profile's row, identity fields and history, keeping the redirects of
    its node (what merged into it still leads through it)."""
    tx.hdel(k.node(profile_id), [*ROW, *identities(tx, k, profile_id)])
    tx.delete(k.hist(profile_id))
    tx.zrem(k.profiles, [profile_id.encode()])


def widen(tx: Tx, k: Keys, profile_id: str, first_ms: int, last_ms: int) -> None:
    """Widen the loaded id's seen times, making it a live (empty) profile if it is not."""
    fields = node(tx, k, profile_id)
    if b"first" not in fields:
        create(tx, k, profile_id, row(first_ms, last_ms, b"{}", b"{}"))
        return
    update = {}
    if first_ms < int(fields[b"first"]):
        update[b"first"] = b"%d" % first_ms
    if last_ms > int(fields[b"last"]):
        update[b"last"] = b"%d" % last_ms
    tx.hset(k.node(profile_id), update)


def row(first_ms: int, last_ms: int, traits: bytes, computed: bytes) -> dict[bytes, bytes]:
    return {
        b"first": b"%d" % first_ms,
        b"last": b"%d" % last_ms,
        b"traits": traits,
        b"computed": computed,
    }


def redirect(tx: Tx, k: Keys, from_id: str, into_id: str, p: Provenance, stamp: int) -> None:
    """Record that ``from_id`` leads to ``into_id``, replacing any redirect ``from_id`` had
    (what chains through ``from_id`` follows it)."""
    unredirect(tx, k, from_id)
    raw = encode_redirect(into_id, p, stamp)
    tx.hset(k.node(from_id), {TO: raw})
    tx.hset(k.node(into_id), {redirect_field(from_id): raw})


def unredirect(tx: Tx, k: Keys, from_id: str) -> None:
    """Remove the redirect from ``from_id``, if any."""
    fetch_nodes(tx, k, [from_id])
    raw = node(tx, k, from_id).get(TO)
    if raw is not None:
        old = decode_redirect(from_id, raw).redirect
        tx.hdel(k.node(old.into_id), [redirect_field(from_id)])
        tx.hdel(k.node(from_id), [TO])


def erase(tx: Tx, k: Keys, live: str) -> None:
    """Remove every trace of a live profile: its node, identities and their index entries
    (those it owns), history, and every redirect that leads to it or from it."""
    unredirect(tx, k, live)
    for record in redirect_trees(tx, k, [live])[live]:
        from_id = record.redirect.from_id
        if is_live(tx, k, from_id):
            # Written as a profile again after it was merged away: only its redirects go.
            fields = [TO, *(redirect_field(f) for f, _ in redirect_fields(node(tx, k, from_id)))]
            tx.hdel(k.node(from_id), fields)
        else:
            tx.delete(k.node(from_id))
    index = [k.index(*decode_identity_field(f)) for f in identities(tx, k, live)]
    tx.fetch([(key, "str") for key in index])
    for key in index:
        if tx.string(key) == live.encode():
            tx.delete(key)
    tx.delete(k.node(live))
    tx.delete(k.hist(live))
    tx.zrem(k.profiles, [live.encode()])


# -- the operations on one profile ---------------------------------------------------------


def touch(tx: Tx, k: Keys, profile_id: str, time_ms: int) -> str:
    found = resolve(tx, k, profile_id) or profile_id
    widen(tx, k, found, time_ms, time_ms)
    return found


def attach(
    tx: Tx, k: Keys, profile_id: str, id_type: str, value: str, provenance: Provenance
) -> str:
    key = k.index(id_type, value)
    found = resolve(tx, k, profile_id, also=[(key, "str")]) or profile_id
    fetch_nodes(tx, k, [found])
    owner = tx.string(key)
    if owner is not None and owner.decode() != found:
        return owner.decode()
    widen(tx, k, found, provenance.time_ms, provenance.time_ms)
    if owner is None:
        tx.set(key, found.encode())
        tx.hset(k.node(found), {identity_field(id_type, value): encode_provenance(provenance)})
    return found


def detach(tx: Tx, k: Keys, id_type: str, value: str) -> str | None:
    key = k.index(id_type, value)
    tx.fetch([(key, "str")])
    owner = tx.string(key)
    if owner is None:
        return None
    tx.delete(key)
    tx.hdel(k.node(owner.decode()), [identity_field(id_type, value)])
    return owner.decode()


def update_column(tx: Tx, k: Keys, column: bytes, profile_id: str, update: TraitsUpdate) -> Traits:
    """Replace the profile's ``traits`` or ``computed`` by ``update`` of them."""
    key = k.node(live(tx, k, profile_id))
    values = update(decode_traits(tx.hash(key)[column]))
    tx.hset(key, {column: encode_traits(values)})
    return values


def delete_profile(tx: Tx, k: Keys, profile_id: str) -> bool:
    found = resolve(tx, k, profile_id)
    if found is None:
        return False
    chain = redirect_trees(tx, k, [found])[found]
    timers.drop(tx, k, [found, *(r.redirect.from_id for r in chain)])
    erase(tx, k, found)
    return True
