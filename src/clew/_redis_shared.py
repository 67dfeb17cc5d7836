"""A plain Redis client for the state that processes on several machines must share besides
the serving store: the validate stage's deduplication claims and the suppression list.

Used when ``store.backend = "redis"`` (decided in :mod:`clew.backends`): the deployment then
has a Redis every machine reaches, so these live there too, under the store's key prefix
(``<prefix>:dedup:...``, ``<prefix>:{supp}:...``), instead of in SQLite files of one
machine's data directory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from clew._errors import ServiceUnavailableError

if TYPE_CHECKING:
    from clew.config import Settings

_T = TypeVar("_T")


class RedisUnreachableError(ServiceUnavailableError):
    """Redis could not be reached, or stopped answering, during a call on shared state
    (deduplication claims, the suppression list, audience definitions). redis-py reconnects
    on the next call, so retrying later is all there is to do."""


def reaching(doing: str, call: Callable[[], _T]) -> _T:
    """``call()``, with redis-py's connection errors and timeouts (and a cluster's
    redirections that last too long) raised as :class:`RedisUnreachableError` naming what
    was being done."""
    import redis

    try:
        return call()
    except (
        redis.ConnectionError,
        redis.TimeoutError,
        redis.ReadOnlyError,
        redis.exceptions.ClusterError,
        redis.exceptions.TryAgainError,
        OSError,
    ) as exc:
        raise RedisUnreachableError(
            f"cannot reach Redis while {doing} ({exc}); check that it is running and reachable"
        ) from exc


def redis_client(settings: Settings) -> Any:
    """A redis-py client for ``settings.store.redis_url`` (bytes replies): a cluster client
    with ``store.redis_cluster``, which routes each key to its slot's primary. redis-py is an
    optional extra: without it, ``ImportError`` names the extra to install."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "store.backend = 'redis' needs the Redis driver: pip install 'clew[redis]'"
        ) from exc
    config = settings.store
    if config.redis_cluster:
        from clew.store._redis_route import cluster_client

        return cluster_client(config.redis_url, config.redis_cluster_nodes)()
    return redis.Redis.from_url(config.redis_url, socket_timeout=10)


def key(settings: Settings, *parts: str) -> str:
    """A key under the store's prefix."""
    return ":".join((settings.store.redis_prefix, *parts))
