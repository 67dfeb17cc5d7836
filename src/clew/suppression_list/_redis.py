"""The suppression list in Redis (see :mod:`clew.suppression_list`).

Two keys under the store's prefix, sharing one Redis Cluster hash tag so that a change and its
generation bump are one ``MULTI``/``EXEC``::

    <prefix>:{supp}:entries  hash    JSON [hash, request_id] -> JSON [id_type, temporary, at]
    <prefix>:{supp}:gen       string bumped by every change; checkers reload when it moves

Lists are small (one entry per suppressed identifier), so reads take the whole hash. Changes
are Lua scripts on those two keys (one slot, so they run on a Redis Cluster too): an entry
set or removed and the generation bumped at once. A removal deletes the entries chosen from a
read just before it; an entry a request adds in between stays (requests add their entries
once, when they start).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from clew._redis_shared import key, reaching, redis_client

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.suppression_list import SuppressedHash

_encode = msgspec.json.encode
_field = msgspec.json.Decoder(tuple[str, str])
_value = msgspec.json.Decoder(tuple[str, int, float])

_Entries = dict[tuple[str, str], tuple[str, int, float]]

# KEYS: entries, generation. ARGV: field, value, field, value, ... Returns entries added.
_ADD = """
local added = 0
for i = 1, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
if added > 0 then redis.call('INCR', KEYS[2]) end
return added
"""
# KEYS: entries, generation. ARGV: fields. Returns entries removed.
_REMOVE = """
local removed = redis.call('HDEL', KEYS[1], unpack(ARGV))
if removed > 0 then redis.call('INCR', KEYS[2]) end
return removed
"""


class RedisSuppressionList:
    """Writer and checker source at once; thread-safe (redis-py pools connections)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._entries = f"{prefix}:{{supp}}:entries"
        self._gen = f"{prefix}:{{supp}}:gen"
        self._add = client.register_script(_ADD)
        self._remove_fields = client.register_script(_REMOVE)

    @classmethod
    def open(cls, settings: Settings) -> RedisSuppressionList:
        return cls(redis_client(settings), key(settings))

    # -- writer ---------------------------------------------------------------------------

    def add(self, request_id: str, hashes: Iterable[SuppressedHash], *, temporary: bool) -> int:
        now = time.time()
        fields = {
            _encode((h.hash, request_id)): _encode((h.id_type, int(temporary), now)) for h in hashes
        }
        if not fields:
            return 0
        args = [part for pair in fields.items() for part in pair]
        return int(
            reaching(
                "adding to the suppression list",
                lambda: self._add(keys=[self._entries, self._gen], args=args),
            )
        )

    def lift_request(self, request_id: str) -> int:
        return self._remove(lambda entries: [k for k in entries if k[1] == request_id])

    def lift(self, hashes: Iterable[str]) -> int:
        wanted = set(hashes)

        def chosen(entries: _Entries) -> list[tuple[str, str]]:
            requests = {
                rid for (h, rid), (_, temp, _) in entries.items() if not temp and h in wanted
            }
            return [k for k, (_, temp, _) in entries.items() if not temp and k[1] in requests]

        return self._remove(chosen) if wanted else 0

    def _remove(self, chosen: Callable[[_Entries], list[tuple[str, str]]]) -> int:
        entries = reaching(
            "reading the suppression list", lambda: self._client.hgetall(self._entries)
        )
        doomed = chosen(_decode(entries))
        if not doomed:
            return 0
        args = [_encode(k) for k in doomed]
        return int(
            reaching(
                "lifting suppressions",
                lambda: self._remove_fields(keys=[self._entries, self._gen], args=args),
            )
        )

    def contains(self, hash_: str) -> bool:
        return any(h == hash_ for h, _ in self._fields())

    def counts(self) -> Counter[str]:
        permanent: dict[str, bool] = {}
        for (h, _), (_, temp, _) in _decode(self._client.hgetall(self._entries)).items():
            permanent[h] = permanent.get(h, False) or not temp
        return Counter("permanent" if p else "temporary" for p in permanent.values())

    # -- checker source -------------------------------------------------------------------

    def generation(self) -> int:
        """Raises :class:`~clew._redis_shared.RedisUnreachableError` while Redis is away (so
        do :meth:`hashes` and the writer's methods)."""
        value = reaching("reading the suppression list", lambda: self._client.get(self._gen))
        return int(value) if value is not None else 0

    def hashes(self) -> set[str]:
        return {h for h, _ in self._fields()}

    def _fields(self) -> list[tuple[str, str]]:
        keys = reaching("reading the suppression list", lambda: self._client.hkeys(self._entries))
        return [_field.decode(f) for f in keys]

    def close(self) -> None:
        self._client.close()


def _decode(raw: dict[bytes, bytes]) -> _Entries:
    return {_field.decode(f): _value.decode(v) for f, v in raw.items()}
