"""Destinations in Redis, beside the Redis serving store (``store.backend = "redis"``), so
that `clew destinations add` on any machine reaches the destinations worker, the CLI and the
console of every machine within a second.

Two keys under the store's prefix, sharing one Redis Cluster hash tag::

    <prefix>:{dst}:defs   hash    destination name -> its settings (JSON)
    <prefix>:{dst}:gen    string  bumped by every change; readers read again when it moves

Each change is one Lua script (``_put.lua``, ``_delete.lua``) that writes and bumps the
version together, so a reader never sees a change without its version moving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from clew._redis_shared import key, reaching, redis_client
from clew.destination_store.base import DestinationStore, DestinationTakenError, StoredDestination

if TYPE_CHECKING:
    from clew.config import Settings

_READING = "reading destinations"
_WRITING = "changing destinations"


class RedisDestinationStore(DestinationStore):
    """The destinations through ``client`` (a ``redis.Redis`` or ``redis.RedisCluster``)
    under ``prefix``; closing the store closes the client."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._defs = f"{prefix}:{{dst}}:defs"
        self._gen = f"{prefix}:{{dst}}:gen"
        scripts = resources.files("clew.destination_store")
        self._put = client.register_script(scripts.joinpath("_put.lua").read_text())
        self._delete = client.register_script(scripts.joinpath("_delete.lua").read_text())

    @classmethod
    def open(cls, settings: Settings) -> RedisDestinationStore:
        return cls(redis_client(settings), key(settings))

    def read_all(self) -> list[StoredDestination]:
        raw = reaching(_READING, lambda: self._client.hgetall(self._defs))
        found = []
        for field, value in sorted(raw.items()):
            name = field.decode()
            origin = self.where(name)
            try:
                data = json.loads(value)
            except ValueError as exc:
                found.append(
                    StoredDestination(origin, name, None, f"{origin}: cannot read it ({exc})")
                )
                continue
            if not isinstance(data, dict):
                problem = f"{origin}: expected a mapping of destination settings"
                found.append(StoredDestination(origin, name, None, problem))
                continue
            found.append(StoredDestination(origin, name, {**data, "name": name}))
        return found

    def version(self) -> int:
        value = reaching(_READING, lambda: self._client.get(self._gen))
        return int(value) if value is not None else 0

    def put(self, settings: Mapping[str, Any], *, replace: bool = False) -> str:
        name = str(settings["name"])
        document = json.dumps(dict(settings))
        done = reaching(
            _WRITING,
            lambda: self._put(
                keys=[self._defs, self._gen], args=[name, document, "1" if replace else "0"]
            ),
        )
        if not done:
            raise DestinationTakenError(name, self.where(name))
        return self.where(name)

    def delete(self, name: str) -> str | None:
        done = reaching(_WRITING, lambda: self._delete(keys=[self._defs, self._gen], args=[name]))
        return self.where(name) if done else None

    def where(self, name: str | None = None) -> str:
        return f"redis {self._defs}" + ("" if name is None else f" [{name}]")

    def close(self) -> None:
        self._client.close()
