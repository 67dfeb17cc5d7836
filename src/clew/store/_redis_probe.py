"""Whether a Redis server answers a ``PING``, asked on a connection of its own with short
timeouts (not the store's pool, whose calls wait up to 10 s), for the startup check and the
dependency watch (:mod:`clew.dependencies`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from clew.store.base import StoreError


def address(url: str) -> str:
    """``host:port`` of a Redis URL, without its user or password (``redis-1:6379``)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def probe(url: str, timeout_s: float) -> None:
    """``PING`` the server of ``url`` (any node of a cluster answers alike); raises
    :class:`~clew.store.base.StoreError` with redis-py's reason within about ``timeout_s``."""
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise StoreError(_reason(exc)) from exc
    finally:
        client.close()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # "Error 111 connecting to 127.0.0.1:1. Connection refused." → "Connection refused"
    if text.startswith("Error ") and ". " in text:
        text = text.split(". ", 1)[1]
    return text.rstrip(".") or type(exc).__name__
