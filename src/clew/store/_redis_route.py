"""Where the Redis serving store's connections come from (used by ``clew.store.redis``).

A :class:`NodeRoute` hands out connections of one client's pool (one Redis primary). A
:class:`ClusterRoute` hands out connections to the Redis Cluster primary that owns the
store's one slot (every key of a store in cluster mode shares the hash tag ``{<prefix>}``,
see ``clew.store._redis_keys``), so each transaction runs on one node, as on a single
server.

The cluster client (redis-py's ``RedisCluster``) is used only for its map of slots to nodes
and for its per-node connection pools; commands go over the raw connection, pipelined
(``clew.store._redis_tx``). When a reply says the slot lives elsewhere (``MOVED``, after a
resharding or a failover) or is being moved (``ASK``, ``TRYAGAIN``) or the cluster is down
(``CLUSTERDOWN``), the transaction raises :class:`~clew.store._redis_tx.Redirected`, nothing
of it applied; :meth:`ClusterRoute.redirected` then reloads the slot map, and the store runs
the transaction again on the right node. A broken connection also reloads the map before the
next transaction, so that after a failover the next call reaches the promoted replica.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis as redis_py
from redis.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError

from clew.store._redis_tx import SOCKET_TIMEOUT_S, Connection, RedisUnavailableError
from clew.store.base import StoreError

if TYPE_CHECKING:
    from redis.connection import ConnectionPool

# Failures to reach a node (or to learn the cluster's shape) that a later call may not meet.
_UNREACHABLE = (
    redis_py.ConnectionError,
    redis_py.TimeoutError,
    OSError,
    RedisClusterException,
)


class Route(Protocol):
    """Lends the connections a store's transactions run on."""

    def connect(self) -> tuple[Connection, Any]:
        """A connection and the pool it goes back to; raises :class:`RedisUnavailableError`
        if Redis cannot be reached."""
        ...

    def release(self, conn: Connection, pool: Any, *, broken: bool) -> None:
        """Give ``conn`` back (closed first if ``broken``)."""
        ...

    def redirected(self, error: RedisError) -> None:
        """A transaction met ``error`` (a cluster redirection): look where the slot is now."""
        ...

    def close(self) -> None: ...


class NodeRoute:
    """One Redis primary through ``client``'s pool; closes the client only if ``owned``."""

    def __init__(self, client: redis_py.Redis, *, owned: bool) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._owned = owned

    def connect(self) -> tuple[Connection, Any]:
        try:
            return self._pool.get_connection(), self._pool
        except _UNREACHABLE as exc:
            raise RedisUnavailableError(
                f"cannot connect to Redis ({exc}); check that it is running and reachable"
            ) from exc

    def release(self, conn: Connection, pool: Any, *, broken: bool) -> None:
        _release(conn, pool, broken=broken)

    def redirected(self, error: RedisError) -> None:
        # A single server only redirects if it is a cluster node: the store was pointed at a
        # cluster without cluster mode.
        raise RedisUnavailableError(
            f"Redis answered {error!s}: it is a Redis Cluster node; set `redis_cluster = true` "
            "in [store] (or pass its URL with cluster=True, or a redis.RedisCluster client)"
        )

    def close(self) -> None:
        if self._owned:
            self._client.close()


class ClusterRoute:
    """The primary owning the slot of ``anchor`` in a Redis Cluster. ``cluster`` is a client
    (borrowed: :meth:`close` leaves it open) or a function making one (owned); it is called at
    the first :meth:`connect`, since making a client already connects to the cluster."""

    def __init__(
        self, cluster: redis_py.RedisCluster | Callable[[], redis_py.RedisCluster], anchor: str
    ) -> None:
        if isinstance(cluster, redis_py.RedisCluster):
            self._client: redis_py.RedisCluster | None = cluster
            self._make: Callable[[], redis_py.RedisCluster] | None = None
        else:
            self._client, self._make = None, cluster
        self.slot = key_slot(anchor.encode())
        self._lock = threading.Lock()
        self._stale = False
        # The pool of the slot's primary, looked up again once the map is stale.
        self._pool: ConnectionPool | None = None

    def connect(self) -> tuple[Connection, Any]:
        try:
            pool = self._primary()
            return pool.get_connection(), pool
        except _UNREACHABLE as exc:
            self._stale = True
            raise RedisUnavailableError(
                f"cannot reach the Redis Cluster node of slot {self.slot} ({exc}); check that "
                "the cluster is up (CLUSTER INFO says cluster_state:ok) and reachable"
            ) from exc

    def release(self, conn: Connection, pool: Any, *, broken: bool) -> None:
        _release(conn, pool, broken=broken)
        if broken:
            # Perhaps the node failed and a replica took over: learn the map again first.
            self._stale = True

    def redirected(self, error: RedisError) -> None:
        # Only a moved slot changes the map; ASK, TRYAGAIN and CLUSTERDOWN pass by themselves
        # (a migration or failover under way), and the store waits and tries again.
        if isinstance(error, MovedError) or self._client is None:
            self._stale = True

    def close(self) -> None:
        with self._lock:
            if self._make is not None and self._client is not None:
                self._client.close()
            self._client, self._make, self._pool = None, None, None

    def _primary(self) -> ConnectionPool:
        """The connection pool of the slot's primary, making the client or reloading the
        slot map first when needed."""
        with self._lock:
            if self._client is None:
                if self._make is None:
                    raise RedisUnavailableError("the profile store's cluster client is closed")
                self._client = self._make()
                self._stale, self._pool = False, None
            elif self._stale:
                self._client.nodes_manager.initialize()  # type: ignore[no-untyped-call]
                self._stale, self._pool = False, None
            if self._pool is None:
                node = self._client.nodes_manager.get_node_from_slot(self.slot)
                self._pool = self._client.get_redis_connection(node).connection_pool
            return self._pool


def cluster_client(url: str, startup_nodes: Sequence[str]) -> Callable[[], redis_py.RedisCluster]:
    """A function making a cluster client that discovers the cluster from the node of ``url``
    or, if it is down, from ``startup_nodes`` (``host:port``)."""
    nodes = []
    for address in startup_nodes:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise StoreError(f"a Redis Cluster startup node must be host:port, got {address!r}")
        nodes.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]

    def make() -> redis_py.RedisCluster:
        client = redis_py.RedisCluster.from_url(  # type: ignore[no-untyped-call]
            url, startup_nodes=nodes, socket_timeout=SOCKET_TIMEOUT_S
        )
        return cast("redis_py.RedisCluster", client)

    return make


def _release(conn: Connection, pool: Any, *, broken: bool) -> None:
    try:
        if broken:
            conn.disconnect()
    finally:
        cast("ConnectionPool", pool).release(cast("Any", conn))
