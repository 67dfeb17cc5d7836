"""Separations over a Redis transaction (used by ``clew.store.redis``): one hash of the
store, a field per pair of identifiers, its value holding the order it was added in and its
provenance (``clew.store._redis_keys``). Nothing here commits."""

from __future__ import annotations

from collections.abc import Set

from clew.store._redis_keys import Keys, decode_separation, encode_separation, separation_field
from clew.store._redis_tx import Tx
from clew.store.base import Separation


def add(tx: Tx, k: Keys, separation: Separation) -> None:
    key, field = k.separations, separation_field(separation.a, separation.b)
    tx.fetch([(key, "hash")])
    known = tx.hash(key)
    if field not in known:
        order = 1 + max((decode_separation(f, r)[0] for f, r in known.items()), default=0)
        tx.hset(key, {field: encode_separation(order, separation.provenance)})


def every(tx: Tx, k: Keys) -> list[Separation]:
    tx.fetch([(k.separations, "hash")])
    rows = sorted(decode_separation(f, r) for f, r in tx.hash(k.separations).items())
    return [Separation(a, b, p) for _, a, b, p in rows]


def delete(tx: Tx, k: Keys, wanted: Set[tuple[str, str]]) -> int:
    """Remove the separations naming any of ``wanted`` on either side; returns how many."""
    key = k.separations
    tx.fetch([(key, "hash")])
    doomed = [
        field
        for field, raw in tx.hash(key).items()
        if not wanted.isdisjoint(decode_separation(field, raw)[1:3])
    ]
    if doomed:
        tx.hdel(key, doomed)
    return len(doomed)
