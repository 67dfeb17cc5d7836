"""The Redis serving store's operations over many profiles (used by ``clew.store.redis``): the
bulk reads ``scan`` and ``load``, and the writes that span profiles, ``merge``,
``put_profile`` and ``write_back``, each over one transaction (nothing here commits). Each
reads everything it needs in as few round trips as it can before writing."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from clew.store import _redis_graph as graph
from clew.store import _redis_history as hist
from clew.store import _redis_timers as timers
from clew.store._redis_keys import (
    TO,
    Keys,
    decode_identity_field,
    decode_redirect,
    decode_traits,
    encode_provenance,
    encode_traits,
    identity_field,
)
from clew.store._redis_tx import Tx
from clew.store.base import (
    Profile,
    Provenance,
    StoredEvent,
    StoreError,
    TraitsMerge,
    UnknownProfileError,
)

# Profile ids read per round trip by scan.
_SCAN_BATCH = 500


def scan(tx: Tx, k: Keys, after: str | None, limit: int) -> list[Profile]:
    out: list[Profile] = []
    cursor = after
    while len(out) < limit:
        ids = tx.lex_range(k.profiles, cursor, min(limit - len(out), _SCAN_BATCH))
        if not ids:
            break
        graph.fetch_nodes(tx, k, ids)
        out.extend(graph.snapshots(tx, k, [i for i in ids if graph.is_live(tx, k, i)]))
        cursor = ids[-1]
    return out


def load(tx: Tx, k: Keys, identities: Sequence[tuple[str, str]]) -> list[Profile]:
    """:meth:`ProfileStore.load` of distinct ``identities``."""
    index = [k.index(t, v) for t, v in identities]
    tx.fetch([(key, "str") for key in index])
    owners = dict.fromkeys(o.decode() for key in index if (o := tx.string(key)))
    lives = graph.resolve_many(tx, k, list(owners))
    return graph.snapshots(tx, k, list(dict.fromkeys(v for v in lives.values() if v)))


def merge(
    tx: Tx,
    k: Keys,
    into: str,
    from_: str,
    provenance: Provenance,
    traits: TraitsMerge,
    computed: TraitsMerge,
    keep: int,
) -> str:
    """:meth:`ProfileStore.merge`; the merge functions run before any write."""
    lives = graph.resolve_many(tx, k, [into, from_], also=[(k.hist(from_), "zset")])
    survivor, gone = lives[into], lives[from_]
    if survivor is None:
        raise UnknownProfileError(into)
    if gone is None:
        raise UnknownProfileError(from_)
    if survivor == gone:
        return survivor
    tx.fetch([(k.hist(gone), "zset")])
    kept, lost = graph.node(tx, k, survivor), graph.node(tx, k, gone)
    new_traits = traits(decode_traits(kept[b"traits"]), decode_traits(lost[b"traits"]))
    new_computed = computed(decode_traits(kept[b"computed"]), decode_traits(lost[b"computed"]))
    row = graph.row(
        min(int(kept[b"first"]), int(lost[b"first"])),
        max(int(kept[b"last"]), int(lost[b"last"])),
        encode_traits(new_traits),
        encode_traits(new_computed),
    )
    moved = graph.identities(tx, k, gone)
    for field in moved:
        tx.set(k.index(*decode_identity_field(field)), survivor.encode())
    tx.hset(k.node(survivor), {**row, **moved})
    tx.zadd(k.hist(survivor), tx.zset(k.hist(gone)))
    tx.ztrim(k.hist(survivor), keep)
    graph.retire(tx, k, gone)
    graph.redirect(tx, k, gone, survivor, provenance, time.time_ns())
    timers.drop(tx, k, [gone])
    return survivor


def put(
    tx: Tx,
    k: Keys,
    profile: Profile,
    row: Mapping[bytes, bytes],
    history: Sequence[StoredEvent],
    keep: int,
) -> None:
    """:meth:`ProfileStore.put_profile`, with the profile's encoded ``row``."""
    pid = profile.profile_id
    index = [(e, k.index(e.id_type, e.value)) for e in profile.identities]
    graph.fetch_nodes(tx, k, [pid], also=[(key, "str") for _, key in index])
    for edge, key in index:
        owner = tx.string(key)
        if owner is not None and owner.decode() != pid:
            raise StoreError(
                f"{edge.id_type}:{edge.value} belongs to profile {owner.decode()}; delete or "
                f"detach it before writing profile {pid}"
            )
    if graph.is_live(tx, k, pid):
        graph.erase(tx, k, pid)
    # A merged-away id written as a profile of its own no longer leads to its survivor.
    graph.unredirect(tx, k, pid)
    fields = {identity_field(e.id_type, e.value): encode_provenance(e.provenance) for e, _ in index}
    graph.create(tx, k, pid, {**row, **fields})
    for _, key in index:
        tx.set(key, pid.encode())
    stamp = time.time_ns()
    for i, r in enumerate(profile.merged):
        graph.redirect(tx, k, r.from_id, r.into_id, r.provenance, stamp + i)
    hist.append(tx, k, [(pid, event) for event in history], keep)


def write(
    tx: Tx,
    k: Keys,
    profiles: Sequence[Profile],
    rows: Mapping[str, Mapping[bytes, bytes]],
    gone: Mapping[str, str],
    events: Sequence[tuple[str, StoredEvent]],
    keep: int,
) -> None:
    """:meth:`ProfileStore.write_back`, with each profile's encoded row in ``rows``."""
    index = {
        (e.id_type, e.value): k.index(e.id_type, e.value) for p in profiles for e in p.identities
    }
    redirects = [r for p in profiles for r in p.merged]
    graph.fetch_nodes(
        tx,
        k,
        [*(p.profile_id for p in profiles), *gone, *gone.values(), *(r.from_id for r in redirects)],
        also=[
            *((k.hist(from_id), "zset") for from_id in gone),
            *((key, "str") for key in index.values()),
        ],
    )
    owners = {o.decode() for key in index.values() if (o := tx.string(key)) is not None}
    graph.fetch_nodes(tx, k, owners)
    # An identity already in the store keeps its first provenance.
    first_seen: dict[tuple[str, str], bytes] = {}
    for (id_type, value), key in index.items():
        if (owner := tx.string(key)) is not None:
            raw = graph.node(tx, k, owner.decode()).get(identity_field(id_type, value))
            if raw is not None:
                first_seen[(id_type, value)] = raw

    for from_id, into in gone.items():
        lost = graph.node(tx, k, from_id)
        if b"first" not in lost:
            continue
        if not graph.is_live(tx, k, into):
            seen = graph.row(int(lost[b"first"]), int(lost[b"last"]), b"{}", b"{}")
            graph.create(tx, k, into, seen)
        tx.zadd(k.hist(into), tx.zset(k.hist(from_id)))
        graph.retire(tx, k, from_id)

    stamp = time.time_ns()
    for p in profiles:
        pid = p.profile_id
        if not graph.is_live(tx, k, pid):
            tx.zadd(k.profiles, {pid.encode(): 0})
        fields = dict(rows[pid])
        for e in p.identities:
            key, field = index[(e.id_type, e.value)], identity_field(e.id_type, e.value)
            owner = tx.string(key)
            if owner != pid.encode():
                if owner is not None:
                    tx.hdel(k.node(owner.decode()), [field])
                tx.set(key, pid.encode())
            fields[field] = first_seen.get((e.id_type, e.value), encode_provenance(e.provenance))
        tx.hset(k.node(pid), fields)
        for i, r in enumerate(p.merged):
            raw = graph.node(tx, k, r.from_id).get(TO)
            if raw is None or decode_redirect(r.from_id, raw).redirect != r:
                graph.redirect(tx, k, r.from_id, r.into_id, r.provenance, stamp + i)

    lives = graph.resolve_many(tx, k, list(dict.fromkeys(pid for pid, _ in events)))
    appended = []
    for pid, event in events:
        live = lives[pid]
        if live is None:
            raise UnknownProfileError(pid)
        appended.append((live, event))
    hist.append(tx, k, appended, keep)
    for into in set(gone.values()) - {live for live, _ in appended}:
        tx.ztrim(k.hist(into), keep)
    timers.drop(tx, k, list(gone))
