"""The scale-out serving store: profiles and the identity graph in Redis (``pip install
'clew[redis]'``). Key layout: ``clew.store._redis_keys``; design: docs/scale-out.md.

Every operation is an optimistic transaction (``clew.store._redis_tx``): it ``WATCH``es the
keys it reads, computes in Python (so the callers' trait functions run here, between the read
and the write), and applies its writes in one ``MULTI``/``EXEC``. If another client changed a
watched key meanwhile, Redis applies nothing and the operation runs again, so an
``update_traits`` or ``merge`` function may be called more than once. Read-only calls read
inside ``MULTI``/``EXEC`` instead and need no commit.

A :meth:`~RedisProfileStore.transaction` block is one such transaction for every call of its
thread: reads inside it see the block's own writes, other handles and threads see none of them
until the block ends, and then all at once. A block cannot be re-run by the store, so if
another client changed what it read, the block raises :class:`RedisConflictError` and nothing
of it is written (a stage re-polls its batch and tries again).

Timers and outboxes follow the same rules; what they watch, and why blocks putting to one
outbox group conflict, is in ``clew.store._redis_timers``.

One Redis primary serves every key of a store (with replicas or Sentinel for failover), so
one ``MULTI``/``EXEC`` may span profiles. On Redis Cluster (``cluster=True`` or a
``RedisCluster`` client) every key name carries the hash tag ``{<prefix>}``, so the whole
store is one slot, on one primary of the cluster, and the transactions stay what they are on
a single server; other stores (other prefixes) live on other slots and primaries. How
connections follow the slot when it moves: ``clew.store._redis_route``; what Cluster gives and
what it does not: docs/scale-out.md.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

try:
    import redis as redis_py
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisProfileStore needs the Redis driver: pip install 'clew[redis]'"
    ) from exc

from clew.store import _redis_batch as batch
from clew.store import _redis_graph as graph
from clew.store import _redis_timers as timers
from clew.store._redis_keys import (
    Keys,
    decode_event,
    decode_offset_field,
    decode_separation,
    decode_traits,
    encode_provenance,
    encode_separation,
    encode_traits,
    identity_field,
    offset_field,
    separation_field,
)
from clew.store._redis_route import ClusterRoute, NodeRoute, Route, cluster_client
from clew.store._redis_tx import (
    Conflict,
    Redirected,
    RedisConflictError,
    RedisUnavailableError,
    Tx,
)
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
    UnknownProfileError,
    keep_existing,
)

if TYPE_CHECKING:
    from redis.exceptions import RedisError

__all__ = ["RedisConflictError", "RedisProfileStore", "RedisUnavailableError"]

T = TypeVar("T")

# Retries of one operation whose reads another client keeps changing; each waits a little
# longer (random, at most _BACKOFF_S), so that contenders spread out.
_ATTEMPTS = 200
_BACKOFF_S = 0.02
# Profile ids read per round trip by scan.
_SCAN_BATCH = 500
# How long one operation keeps trying while Redis Cluster redirects it (the store's slot is
# moving to another node, or a replica is taking over a failed primary), and the pause
# between tries once the slot map has been reloaded.
_REDIRECT_S = 10.0
_REDIRECT_PAUSE_S = 0.05


class RedisProfileStore(ProfileStore):
    """A :class:`ProfileStore` on a Redis server: ``redis`` is a URL (``redis://host:6379/0``;
    the store owns the client it makes and closes it) or a ``redis.Redis`` client (borrowed:
    :meth:`close` leaves it open). Keys start with ``prefix``; stores with different prefixes
    share a server without seeing each other. Safe to use from several threads.

    On Redis Cluster, pass ``cluster=True`` with the URL of any node (``startup_nodes``: more
    ``host:port`` to discover the cluster from, if that one is down), or a borrowed
    ``redis.RedisCluster`` client. Cluster mode puts ``{<prefix>}`` in every key name (see
    ``clew.store._redis_keys``), so a store written without it is not read with it; the
    cluster client connects at the first call, like the single-server one."""

    def __init__(
        self,
        redis: str | redis_py.Redis | redis_py.RedisCluster,
        *,
        prefix: str = "clew",
        history: int = 100,
        cluster: bool = False,
        startup_nodes: Sequence[str] = (),
    ) -> None:
        cluster = cluster or isinstance(redis, redis_py.RedisCluster)
        self._keys = Keys(prefix, cluster=cluster)
        self._route: Route
        if isinstance(redis, redis_py.RedisCluster):
            self._route = ClusterRoute(redis, self._keys.anchor)
        elif isinstance(redis, str) and cluster:
            self._route = ClusterRoute(cluster_client(redis, startup_nodes), self._keys.anchor)
        elif isinstance(redis, str):
            self._route = NodeRoute(redis_py.Redis.from_url(redis), owned=True)
        elif isinstance(redis, redis_py.Redis):
            # With cluster=True, the cluster's key names on one server.
            self._route = NodeRoute(redis, owned=False)
        else:
            raise TypeError(
                f"expected a Redis URL, a redis.Redis or a redis.RedisCluster client, got {redis!r}"
            )
        self._local = threading.local()
        self._closed = False
        self.history = history

    @property
    def reads_over_network(self) -> bool:
        return True

    # -- transactions -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the profile store is closed")

    def _begin(self, *, snapshot: bool) -> Tx:
        conn, pool = self._route.connect()
        return Tx(conn, snapshot=snapshot, pool=pool)

    def _end(self, tx: Tx) -> None:
        try:
            tx.release()
        finally:
            self._route.release(tx.conn, tx.pool, broken=tx.broken)

    def _redirected(self, error: RedisError, since: float) -> None:
        """Reload the slot map after a cluster redirection, then pause before the next try;
        raises :class:`RedisUnavailableError` once the redirections have lasted too long."""
        self._route.redirected(error)
        if time.monotonic() - since > _REDIRECT_S:
            raise RedisUnavailableError(
                f"Redis Cluster kept redirecting the store for {_REDIRECT_S:.0f} s (last: "
                f"{error}); its slot is being moved or its primary failed over: retry later"
            ) from error
        time.sleep(_REDIRECT_PAUSE_S)

    def _block(self) -> Tx | None:
        block: Tx | None = getattr(self._local, "tx", None)
        return block

    def _run(self, op: Callable[[Tx], T], *, write: bool, bulk: bool = False) -> T:
        """Run ``op`` in this thread's block, or in its own transaction, retried on conflict;
        ``bulk`` reads many keys, so it watches them rather than re-reading them."""
        self._check_open()
        block = self._block()
        if block is not None:
            savepoint = block.savepoint()
            try:
                return op(block)
            except BaseException:
                block.restore(savepoint)
                raise
        snapshot = not write and not bulk
        redirected_since: float | None = None
        attempt = 0
        while attempt < _ATTEMPTS:
            tx = self._begin(snapshot=snapshot)
            redirect: RedisError | None = None
            try:
                result = op(tx)
                tx.commit()
                return result
            except Conflict:
                pass
            except Redirected as exc:
                redirect = exc.error
            finally:
                self._end(tx)
            if redirect is not None:
                # Not a conflict: the slot is elsewhere; runs until _REDIRECT_S is over.
                redirected_since = redirected_since or time.monotonic()
                self._redirected(redirect, redirected_since)
                continue
            time.sleep(random.uniform(0, min(_BACKOFF_S, 0.0002 * 2**attempt)))
            attempt += 1
        raise RedisConflictError(
            f"gave up after {_ATTEMPTS} attempts: other writers kept changing the same "
            "profiles; retry later"
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._check_open()
        block = self._block()
        if block is not None:
            savepoint = block.savepoint()
            try:
                yield
            except BaseException:
                block.restore(savepoint)
                raise
            return
        tx = self._begin(snapshot=False)
        self._local.tx = tx
        try:
            try:
                yield
            finally:
                self._local.tx = None
            tx.commit()
        except Conflict:
            raise RedisConflictError(
                "another writer changed data this transaction block read, so none of the "
                "block was written; run the block again"
            ) from None
        except Redirected as exc:
            self._route.redirected(exc.error)
            raise RedisConflictError(
                f"Redis Cluster redirected the block ({exc.error}): the store's slot moved or "
                "is moving, so none of the block was written; run the block again"
            ) from None
        finally:
            self._end(tx)

    # -- offsets and separations ------------------------------------------------------------

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        key = self._keys.offsets(group)

        def op(tx: Tx) -> dict[tuple[str, int], int]:
            tx.fetch([(key, "hash")])
            return {decode_offset_field(f): int(o) for f, o in tx.hash(key).items()}

        return self._run(op, write=False)

    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        fields = {offset_field(t, p): b"%d" % o for (t, p), o in offsets.items()}
        # Not read first: workers of one group save different partitions concurrently.
        self._run(lambda tx: tx.hset(self._keys.offsets(group), fields), write=True)

    def add_separation(self, separation: Separation) -> None:
        key, field = self._keys.separations, separation_field(separation.a, separation.b)

        def op(tx: Tx) -> None:
            tx.fetch([(key, "hash")])
            known = tx.hash(key)
            if field not in known:
                order = 1 + max((decode_separation(f, r)[0] for f, r in known.items()), default=0)
                tx.hset(key, {field: encode_separation(order, separation.provenance)})

        self._run(op, write=True)

    def separations(self) -> list[Separation]:
        key = self._keys.separations

        def op(tx: Tx) -> list[Separation]:
            tx.fetch([(key, "hash")])
            rows = sorted(decode_separation(f, r) for f, r in tx.hash(key).items())
            return [Separation(a, b, p) for _, a, b, p in rows]

        return self._run(op, write=False)

    # -- identities -------------------------------------------------------------------------

    def touch(self, profile_id: str, time_ms: int) -> str:
        def op(tx: Tx) -> str:
            live = graph.resolve(tx, self._keys, profile_id) or profile_id
            graph.widen(tx, self._keys, live, time_ms, time_ms)
            return live

        return self._run(op, write=True)

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        k = self._keys
        key = k.index(id_type, value)

        def op(tx: Tx) -> str:
            live = graph.resolve(tx, k, profile_id, also=[(key, "str")]) or profile_id
            graph.fetch_nodes(tx, k, [live])
            owner = tx.string(key)
            if owner is not None and owner.decode() != live:
                return owner.decode()
            graph.widen(tx, k, live, provenance.time_ms, provenance.time_ms)
            if owner is None:
                tx.set(key, live.encode())
                field = identity_field(id_type, value)
                tx.hset(k.node(live), {field: encode_provenance(provenance)})
            return live

        return self._run(op, write=True)

    def detach(self, id_type: str, value: str) -> str | None:
        k = self._keys
        key = k.index(id_type, value)

        def op(tx: Tx) -> str | None:
            tx.fetch([(key, "str")])
            owner = tx.string(key)
            if owner is None:
                return None
            tx.delete(key)
            tx.hdel(k.node(owner.decode()), [identity_field(id_type, value)])
            return owner.decode()

        return self._run(op, write=True)

    def lookup(self, id_type: str, value: str) -> str | None:
        key = self._keys.index(id_type, value)

        def op(tx: Tx) -> str | None:
            tx.fetch([(key, "str")])
            owner = tx.string(key)
            return None if owner is None else owner.decode()

        return self._run(op, write=False)

    def resolve(self, profile_id: str) -> str | None:
        return self._run(lambda tx: graph.resolve(tx, self._keys, profile_id), write=False)

    def _live(self, tx: Tx, profile_id: str) -> str:
        live = graph.resolve(tx, self._keys, profile_id)
        if live is None:
            raise UnknownProfileError(profile_id)
        return live

    def get(self, profile_id: str) -> Profile | None:
        def op(tx: Tx) -> Profile | None:
            live = graph.resolve(tx, self._keys, profile_id)
            return None if live is None else graph.snapshots(tx, self._keys, [live])[0]

        return self._run(op, write=False)

    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        k = self._keys
        index = [k.index(t, v) for t, v in dict.fromkeys(identities)]

        def op(tx: Tx) -> list[Profile]:
            tx.fetch([(key, "str") for key in index])
            owners = dict.fromkeys(o.decode() for key in index if (o := tx.string(key)))
            lives = graph.resolve_many(tx, k, list(owners))
            return graph.snapshots(tx, k, list(dict.fromkeys(v for v in lives.values() if v)))

        return self._run(op, write=False, bulk=True)

    def scan(self, after: str | None, limit: int) -> list[Profile]:
        k = self._keys

        def op(tx: Tx) -> list[Profile]:
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

        return self._run(op, write=False, bulk=True)

    # -- traits -----------------------------------------------------------------------------

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        return self._update(b"traits", profile_id, update)

    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        return self._update(b"computed", profile_id, update)

    def _update(self, column: bytes, profile_id: str, update: TraitsUpdate) -> Traits:
        def op(tx: Tx) -> Traits:
            live = self._live(tx, profile_id)
            key = self._keys.node(live)
            values = update(decode_traits(tx.hash(key)[column]))
            tx.hset(key, {column: encode_traits(values)})
            return values

        return self._run(op, write=True)

    # -- history ----------------------------------------------------------------------------

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        def op(tx: Tx) -> None:
            graph.append(tx, self._keys, [(self._live(tx, profile_id), event)], self.history)

        self._run(op, write=True)

    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        k = self._keys

        def op(tx: Tx) -> list[StoredEvent]:
            live = graph.resolve(tx, k, profile_id, also=[(k.hist(profile_id), "zset")])
            if live is None:
                return []
            tx.fetch([(k.hist(live), "zset")])
            newest_first = sorted(tx.zset(k.hist(live)).items(), key=lambda ms: -ms[1])
            picked = [m for m, s in newest_first if before is None or s < before]
            return [decode_event(m) for m in picked[:limit]]

        return self._run(op, write=False)

    # -- merge, delete, whole profiles ------------------------------------------------------

    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
        computed: TraitsMerge = keep_existing,
    ) -> str:
        def op(tx: Tx) -> str:
            return batch.merge(
                tx, self._keys, into, from_, provenance, traits, computed, self.history
            )

        return self._run(op, write=True)

    def delete_profile(self, profile_id: str) -> bool:
        def op(tx: Tx) -> bool:
            live = graph.resolve(tx, self._keys, profile_id)
            if live is None:
                return False
            chain = graph.redirect_trees(tx, self._keys, [live])[live]
            timers.drop(tx, self._keys, [live, *(r.redirect.from_id for r in chain)])
            graph.erase(tx, self._keys, live)
            return True

        return self._run(op, write=True)

    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        k = self._keys

        def op(tx: Tx) -> int:
            live = graph.resolve(tx, k, profile_id)
            if live is None:
                return 0
            key = k.hist(live)
            tx.fetch([(key, "zset")])
            doomed = [
                member
                for member in tx.zset(key)
                if _within(decode_event(member).time_ms, since_ms, until_ms)
            ]
            if doomed:
                tx.zrem(key, doomed)
            return len(doomed)

        return self._run(op, write=True)

    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        key, wanted = self._keys.separations, set(identities)

        def op(tx: Tx) -> int:
            tx.fetch([(key, "hash")])
            doomed = [
                field
                for field, raw in tx.hash(key).items()
                if not wanted.isdisjoint(decode_separation(field, raw)[1:3])
            ]
            if doomed:
                tx.hdel(key, doomed)
            return len(doomed)

        return self._run(op, write=True)

    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        fields = graph.row(
            profile.first_seen_ms,
            profile.last_seen_ms,
            encode_traits(profile.traits),
            encode_traits(profile.computed),
        )
        self._run(
            lambda tx: batch.put(tx, self._keys, profile, fields, history, self.history), write=True
        )

    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
    ) -> None:
        rows = {
            p.profile_id: graph.row(
                p.first_seen_ms,
                p.last_seen_ms,
                encode_traits(p.traits),
                encode_traits(p.computed),
            )
            for p in profiles
        }
        self._run(
            lambda tx: batch.write(tx, self._keys, profiles, rows, gone, events, self.history),
            write=True,
        )

    # -- timers and outboxes ----------------------------------------------------------------

    def set_timers(self, due: Mapping[str, int | None]) -> None:
        self._run(lambda tx: timers.set_timers(tx, self._keys, due), write=True)

    def due_timers(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        return self._run(lambda tx: timers.due(tx, self._keys, now_ms, limit), write=False)

    def next_timer(self) -> int | None:
        return self._run(lambda tx: timers.earliest(tx, self._keys), write=False)

    def outbox_put(self, group: str, payload: bytes) -> int:
        return self._run(lambda tx: timers.put(tx, self._keys, group, payload), write=True)

    def outbox_pending(self, group: str, limit: int = 1000) -> list[tuple[int, bytes]]:
        return self._run(lambda tx: timers.pending(tx, self._keys, group, limit), write=False)

    def outbox_ack(self, group: str, seq: int) -> None:
        self._run(lambda tx: timers.ack(tx, self._keys, group, seq), write=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._route.close()


def _within(time_ms: int, since_ms: int | None, until_ms: int | None) -> bool:
    return (since_ms is None or time_ms >= since_ms) and (until_ms is None or time_ms < until_ms)
