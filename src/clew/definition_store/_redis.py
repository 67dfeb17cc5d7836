"""Audience and trait definitions in Redis (see :mod:`clew.definition_store`), used when
the serving store is Redis, so that `clew audiences push` on any machine reaches the profiles
workers, CLI and Admin API of every machine at once.

Three keys under the store's prefix, sharing one Redis Cluster hash tag::

    <prefix>:{aud}:defs   hash    definition name -> its JSON document
    <prefix>:{aud}:gen    string  bumped after every change; readers reload when it moves
    <prefix>:{aud}:lock   string  held by a writer while it checks and writes (expires)

The schema registry's document is kept the same way under ``{reg}``
(:mod:`clew.schema._registry_db`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from clew._redis_shared import key, reaching, redis_client
from clew.definition_store import StorageBusyError, Version

if TYPE_CHECKING:
    from clew.config import Settings

# A writer that dies holding the lock releases it after this long.
_LOCK_MS = 30_000
_LOCK_WAIT_S = 60.0

# Deletes the lock only if this writer still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStorage:
    def __init__(self, client: Any, prefix: str, tag: str = "aud") -> None:
        self._client = client
        self._defs = f"{prefix}:{{{tag}}}:defs"
        self._gen = f"{prefix}:{{{tag}}}:gen"
        self._lock = f"{prefix}:{{{tag}}}:lock"
        self._release = client.register_script(_RELEASE)

    @classmethod
    def open(cls, settings: Settings, tag: str = "aud") -> RedisStorage:
        """Documents under ``<prefix>:{<tag>}:``: ``aud`` for audience definitions, ``reg``
        for the schema registry."""
        return cls(redis_client(settings), key(settings), tag)

    def names(self) -> list[str]:
        names = reaching("reading audience definitions", lambda: self._client.hkeys(self._defs))
        return sorted(n.decode() for n in names)

    def read(self, name: str) -> bytes:
        content = reaching(
            "reading audience definitions", lambda: self._client.hget(self._defs, name)
        )
        if content is None:
            raise FileNotFoundError(name)
        return bytes(content)

    def write(self, name: str, content: bytes) -> None:
        self._client.hset(self._defs, name, content)

    def delete(self, name: str) -> None:
        self._client.hdel(self._defs, name)

    def version(self) -> Version:
        value = reaching("reading audience definitions", lambda: self._client.get(self._gen))
        return (("redis", int(value) if value is not None else 0, 0),)

    def bump(self) -> None:
        self._client.incr(self._gen)

    def close(self) -> None:
        self._client.close()

    def where(self, name: str | None = None) -> str:
        return f"redis {self._defs}" + ("" if name is None else f" [{name}]")

    @contextmanager
    def locked(self) -> Iterator[None]:
        token = secrets.token_hex(8)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while not self._client.set(self._lock, token, nx=True, px=_LOCK_MS):
            if time.monotonic() > deadline:
                raise StorageBusyError(
                    f"another writer has held {self._lock} for {_LOCK_WAIT_S:.0f} s; try again"
                )
            time.sleep(0.05)
        try:
            yield
        finally:
            self._release(keys=[self._lock], args=[token])
