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

This module holds the connections and the transactions; the operations of each concern are
functions over a transaction, in a module of their own: ``_redis_graph`` (profiles,
identities, redirects, traits), ``_redis_history``, ``_redis_batch`` (bulk reads and the writes
that span profiles), ``_redis_separations`` and ``_redis_timers`` (timers and outboxes, which
follow the same rules; what they watch, and why blocks putting to one outbox group conflict,
is there).

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
from clew.store import _redis_history as hist
from clew.store import _redis_separations as separations
from clew.store import _redis_timers as timers
from clew.store._redis_keys import Keys, decode_offset_field, encode_traits, offset_field
from clew.store._redis_route import ClusterRoute, NodeRoute, Route, cluster_client
from clew.store._redis_tx import (
    SOCKET_TIMEOUT_S,
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
            client = redis_py.Redis.from_url(redis, socket_timeout=SOCKET_TIMEOUT_S)
            self._route = NodeRoute(client, owned=True)
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

    # -- the identity graph -----------------------------------------------------------------

    def touch(self, profile_id: str, time_ms: int) -> str:
        return self._run(lambda tx: graph.touch(tx, self._keys, profile_id, time_ms), write=True)

    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        def op(tx: Tx) -> str:
            return graph.attach(tx, self._keys, profile_id, id_type, value, provenance)

        return self._run(op, write=True)

    def detach(self, id_type: str, value: str) -> str | None:
        return self._run(lambda tx: graph.detach(tx, self._keys, id_type, value), write=True)

    def lookup(self, id_type: str, value: str) -> str | None:
        return self._run(lambda tx: graph.lookup(tx, self._keys, id_type, value), write=False)

    def resolve(self, profile_id: str) -> str | None:
        return self._run(lambda tx: graph.resolve(tx, self._keys, profile_id), write=False)

    def get(self, profile_id: str) -> Profile | None:
        return self._run(lambda tx: graph.get(tx, self._keys, profile_id), write=False)

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
        return self._run(lambda tx: graph.delete_profile(tx, self._keys, profile_id), write=True)

    # -- traits -----------------------------------------------------------------------------

    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        def op(tx: Tx) -> Traits:
            return graph.update_column(tx, self._keys, b"traits", profile_id, update)

        return self._run(op, write=True)

    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        def op(tx: Tx) -> Traits:
            return graph.update_column(tx, self._keys, b"computed", profile_id, update)

        return self._run(op, write=True)

    # -- history ----------------------------------------------------------------------------

    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        def op(tx: Tx) -> None:
            hist.add_event(tx, self._keys, profile_id, event, self.history)

        self._run(op, write=True)

    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        def op(tx: Tx) -> list[StoredEvent]:
            return hist.events(tx, self._keys, profile_id, limit, before)

        return self._run(op, write=False)

    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        def op(tx: Tx) -> int:
            return hist.delete_history(tx, self._keys, profile_id, since_ms, until_ms)

        return self._run(op, write=True)

    # -- whole profiles ---------------------------------------------------------------------

    def scan(self, after: str | None, limit: int) -> list[Profile]:
        return self._run(
            lambda tx: batch.scan(tx, self._keys, after, limit), write=False, bulk=True
        )

    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        wanted = list(dict.fromkeys(identities))
        return self._run(lambda tx: batch.load(tx, self._keys, wanted), write=False, bulk=True)

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
        moved: Collection[tuple[str, str]] | None = None,
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

    # -- separations ------------------------------------------------------------------------

    def add_separation(self, separation: Separation) -> None:
        self._run(lambda tx: separations.add(tx, self._keys, separation), write=True)

    def separations(self) -> list[Separation]:
        return self._run(lambda tx: separations.every(tx, self._keys), write=False)

    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        wanted = set(identities)
        return self._run(lambda tx: separations.delete(tx, self._keys, wanted), write=True)

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

    # -- offsets ----------------------------------------------------------------------------

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

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._route.close()
