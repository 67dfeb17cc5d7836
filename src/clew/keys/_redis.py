"""The key store in Redis, beside the Redis serving store (``clew.keys``).

One Redis string per data key, ``<prefix>:dk:<key id, hex>``, holding
``<generation>:<wrapped key>`` (``<generation>:`` once destroyed); keys of single records
expire with their topic's retention. Creating and destroying are Lua scripts
(``_keystore_*.lua``), so concurrent processes agree on one key per record key. On a Redis
Cluster (``store.redis_cluster``) every name carries the hash tag ``{<prefix>}``, like the
serving store's keys, so that one primary holds them all and ``MGET`` works; scripts then run
one by one with ``EVAL`` rather than pipelined.

A data key lost with Redis makes every record sealed with it unreadable, as if shredded, so
:meth:`RedisKeyStore.require_persistence` (called when a deployment opens its key ring, unless
``privacy.key_store_persistence = "assumed"``) refuses a Redis that keeps no append-only
file; docs/privacy.md says why an append-only file, not a backup topic in Kafka.

What Redis keeps of a destroyed key outside its memory (RDB snapshots, the append-only file,
replicas behind) is said in docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

from clew.config import ConfigError
from clew.keys.ring import KeyStore, KeyStoreError, StoredKey

try:
    import redis as redis_py
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Redis key store needs the Redis driver: pip install 'clew[redis]'"
    ) from exc

_UNREACHABLE = (redis_py.ConnectionError, redis_py.TimeoutError, OSError)


class KeyStoreNotDurableError(KeyStoreError, ConfigError):
    """The Redis that would hold the data keys may lose them (no append-only file), or cannot
    be asked: a configuration to change, so the CLI tells it in one line, as a settings
    error."""


def _script(name: str) -> str:
    return resources.files("clew.keys").joinpath(name).read_text()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(value: bytes) -> StoredKey:
    generation, _, wrapped = value.partition(b":")
    return StoredKey(int(generation), wrapped or None)


class RedisKeyStore(KeyStore):
    """Keys in the Redis at ``url``, or through ``client`` (a ``redis.Redis`` or, with
    ``cluster``, a ``redis.RedisCluster``), which it then closes too."""

    def __init__(
        self, url: str = "", *, prefix: str = "clew", client: Any = None, cluster: bool = False
    ) -> None:
        self._client: Any = client if client is not None else redis_py.Redis.from_url(url)
        self._cluster = cluster
        self._prefix = f"{{{prefix}}}:dk:" if cluster else f"{prefix}:dk:"
        self._sources = {
            "get_or_create": _script("_keystore_get_or_create.lua"),
            "destroy": _script("_keystore_destroy.lua"),
        }
        self._get_or_create = self._client.register_script(self._sources["get_or_create"])
        self._destroy = self._client.register_script(self._sources["destroy"])

    def require_persistence(self) -> None:
        """Raise :class:`KeyStoreNotDurableError` unless the Redis holding the keys (on a
        cluster, the primary of their slot) writes every change to its append-only file
        (``appendonly yes``, ``appendfsync`` ``always`` or ``everysec``). RDB snapshots alone
        do not do: a key made after the last one is lost with a restart, and the records
        sealed with it are acknowledged already."""
        check = self._prefix + "check"
        try:
            if self._cluster:
                node = self._client.get_node_from_key(check)
                config = self._client.config_get("append*", target_nodes=node)
            else:
                config = self._client.config_get("append*")
        except redis_py.ResponseError as exc:
            raise KeyStoreNotDurableError(
                f"cannot ask Redis whether it keeps the data keys on disk (CONFIG GET: {exc}); "
                "if it persists them (appendonly yes, or a managed Redis with persistence), set "
                'privacy.key_store_persistence = "assumed"'
            ) from exc
        except _UNREACHABLE as exc:
            raise KeyStoreError(
                f"cannot reach Redis for the data keys ({exc}); check that it is running and "
                "reachable (store.redis_url)"
            ) from exc
        found = {_text(k): _text(v) for k, v in config.items()}
        appendonly, fsync = found.get("appendonly", "no"), found.get("appendfsync", "everysec")
        if appendonly != "yes" or fsync not in ("always", "everysec"):
            raise KeyStoreNotDurableError(
                f"Redis keeps the data keys that decrypt Kafka records without an append-only "
                f"file (appendonly {appendonly}, appendfsync {fsync}), so a Redis restart would "
                "make records unreadable: set `appendonly yes` (appendfsync always or everysec) "
                'in redis.conf, or privacy.key_store_persistence = "assumed" if it persists '
                "otherwise"
            )

    def _name(self, key_id: bytes) -> str:
        return self._prefix + key_id.hex()

    def _call(self, doing: str, fn: Any) -> Any:
        try:
            return fn()
        except _UNREACHABLE as exc:
            raise KeyStoreError(
                f"cannot reach Redis for the data keys while {doing} ({exc}); check that it "
                "is running and reachable"
            ) from exc

    def get(self, key_ids: Collection[bytes]) -> dict[bytes, StoredKey]:
        ids = list(key_ids)
        if not ids:
            return {}
        values = self._call("reading keys", lambda: self._client.mget([self._name(k) for k in ids]))
        return {k: _parse(v) for k, v in zip(ids, values, strict=True) if v is not None}

    def get_or_create(self, candidates: Mapping[bytes, bytes]) -> dict[bytes, StoredKey]:
        ids = list(candidates)

        def run() -> list[bytes]:
            if self._cluster:
                lua = self._sources["get_or_create"]
                return [self._client.eval(lua, 1, self._name(k), candidates[k]) for k in ids]
            pipe = self._client.pipeline(transaction=False)
            for k in ids:
                self._get_or_create(keys=[self._name(k)], args=[candidates[k]], client=pipe)
            return list(pipe.execute())

        values = self._call("creating keys", run)
        return {k: _parse(v) for k, v in zip(ids, values, strict=True)}

    def put(self, entries: Mapping[bytes, bytes], ttl_ms: int | None) -> None:
        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for k, wrapped in entries.items():
                pipe.set(self._name(k), b"1:" + wrapped, px=ttl_ms)
            pipe.execute()

        self._call("storing keys", run)

    def destroy(self, key_ids: Collection[bytes]) -> int:
        ids = list(key_ids)

        def run() -> list[int]:
            if self._cluster:
                lua = self._sources["destroy"]
                return [self._client.eval(lua, 1, self._name(k)) for k in ids]
            pipe = self._client.pipeline(transaction=False)
            for k in ids:
                self._destroy(keys=[self._name(k)], client=pipe)
            return list(pipe.execute())

        return sum(int(v) for v in self._call("destroying keys", run))

    def check(self, value: bytes) -> bytes:
        name = self._prefix + "check"

        def run() -> bytes:
            self._client.set(name, value, nx=True)
            return bytes(self._client.get(name))

        return bytes(self._call("checking the master key", run))

    def close(self) -> None:
        self._client.close()
