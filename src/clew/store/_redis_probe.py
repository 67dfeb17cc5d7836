"""Whether a Redis server answers a ``PING``, asked on a connection of its own with short
timeouts (not the store's pool, whose calls wait up to 10 s), for the startup check and the
dependency watch (:mod:`clew.dependencies`)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from clew.store.base import StoreError


def address(url: str) -> str:
    """``host:port`` of a Redis URL, without its user or password (``redis-1:6379``)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def probe(url: str, timeout_s: float, nodes: Sequence[str] = ()) -> None:
    """``PING`` the server of ``url`` (any node of a cluster answers alike), or else one of a
    cluster's other ``nodes`` (``host:port``, as ``store.redis_cluster_nodes``: the node of
    the URL may be a primary that died and was replaced); raises
    :class:`~clew.store.base.StoreError` with redis-py's reason for ``url`` within about
    ``timeout_s`` per node."""
    import redis

    first: StoreError | None = None
    for at in [url, *(_at_node(url, n) for n in nodes)]:
        client = redis.Redis.from_url(
            at, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
        )
        try:
            client.ping()
            return
        except (redis.RedisError, OSError) as exc:
            if first is None:
                first = StoreError(_reason(exc))
                first.__cause__ = exc
        finally:
            client.close()
    assert first is not None
    raise first


def _at_node(url: str, node: str) -> str:
    """``url`` with its host and port replaced by ``node`` (``host:port``), keeping the
    scheme, credentials, database and options."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials}@{node}" if credentials else node).geturl()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # "Error 111 connecting to 127.0.0.1:1. Connection refused." → "Connection refused"
    if text.startswith("Error ") and ". " in text:
        text = text.split(". ", 1)[1]
    return text.rstrip(".") or type(exc).__name__
