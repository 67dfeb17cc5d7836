"""Opens the serving store chosen in ``settings.store`` (SQLite by default, or Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clew.store.base import ProfileStore

if TYPE_CHECKING:
    from clew.config import Settings


def open_store(settings: Settings) -> ProfileStore:
    """A new handle on the configured serving store; the caller closes it.

    ``sqlite`` opens (and creates) ``settings.profiles_path``; ``redis`` connects to
    ``settings.store.redis_url`` (a Redis Cluster with ``redis_cluster``, discovered from it
    and ``redis_cluster_nodes``) with the configured key prefix on first use, so an
    unreachable server surfaces as :class:`~clew.store.redis.RedisUnavailableError` from the
    first call, not here. Choosing ``redis`` without the driver raises ``ImportError`` naming
    the extra to install (``pip install 'clew[redis]'``)."""
    config = settings.store
    history = settings.identity.history
    if config.backend == "redis":
        # Imported here: redis-py is an optional extra.
        from clew.store.redis import RedisProfileStore

        return RedisProfileStore(
            config.redis_url,
            prefix=config.redis_prefix,
            history=history,
            cluster=config.redis_cluster,
            startup_nodes=config.redis_cluster_nodes,
        )
    from clew.store.sqlite import SQLiteProfileStore

    return SQLiteProfileStore(settings.profiles_path, history=history)


def open_existing_store(settings: Settings) -> ProfileStore | None:
    """Like :func:`open_store`, but ``None`` when the SQLite store has no file yet (nothing
    processed, so nothing to read), instead of creating an empty one. A Redis store is always
    opened: an empty one reads as a store without profiles."""
    if settings.store.backend == "sqlite" and not settings.profiles_path.exists():
        return None
    return open_store(settings)
