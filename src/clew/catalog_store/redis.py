"""The catalog in Redis, beside the Redis serving store (``store.backend = "redis"``), so
that every machine of a deployment sees the same sources, write keys and tokens.

Six hashes under the store's prefix, sharing one Redis Cluster hash tag::

    <prefix>:{ctl}:sources       source id -> the source (JSON)
    <prefix>:{ctl}:names         source name, lower case -> source id
    <prefix>:{ctl}:keys          write key -> {"source": id, "until": epoch s or null}
                                 (null: the source's current key; a time: retired with grace)
    <prefix>:{ctl}:tokens        token name -> {"hash", "scopes", "created_at", "expires_at"}
    <prefix>:{ctl}:token_hashes  SHA-256 of a token -> its name
    <prefix>:{ctl}:token_used    token name -> last use, epoch s

Every change is one Lua script (``_*.lua``); a change to a source checks that the source is
still as the caller read it, so two machines rotating one key at once cannot both win.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from clew._redis_shared import RedisUnreachableError, key, reaching, redis_client
from clew.catalog_store.base import (
    CatalogStore,
    CatalogUnavailableError,
    Source,
    SourceNameTakenError,
    Token,
    TokenNameTakenError,
    WriteKeyTakenError,
)
from clew.catalog_store.sqlite import scopes_text, token_of

if TYPE_CHECKING:
    from clew.config import Settings

_SCRIPTS = ("add_source", "replace_key", "mark_removed", "add_token", "delete_token", "note_use")
_T = TypeVar("_T")


def _dump(source: Source) -> str:
    return json.dumps(
        [source.id, source.name, source.write_key, source.created_at, source.removed_at]
    )


def _load(raw: bytes | str) -> Source:
    return Source(*json.loads(raw))


def _key_entry(source_id: str, until: float | None) -> str:
    return json.dumps({"source": source_id, "until": until})


class RedisCatalogStore(CatalogStore):
    """The catalog through ``client`` (a ``redis.Redis``, or a ``redis.RedisCluster``), under
    ``prefix``; closing the store closes the client."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        base = f"{prefix}:{{ctl}}"
        self._sources, self._names, self._keys = (
            f"{base}:sources",
            f"{base}:names",
            f"{base}:keys",
        )
        self._tokens, self._hashes, self._used = (
            f"{base}:tokens",
            f"{base}:token_hashes",
            f"{base}:token_used",
        )
        self._scripts = {
            name: client.register_script(
                resources.files("clew.catalog_store").joinpath(f"_{name}.lua").read_text()
            )
            for name in _SCRIPTS
        }

    @classmethod
    def open(cls, settings: Settings) -> RedisCatalogStore:
        return cls(redis_client(settings), key(settings))

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return reaching("reading or changing the catalog of sources and tokens", fn)
        except RedisUnreachableError as exc:
            raise CatalogUnavailableError(str(exc)) from exc

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self._call(lambda: self._scripts[script](keys=keys, args=args))

    def where(self) -> str:
        return f"redis {self._sources.rsplit(':', 1)[0]}:*"

    def close(self) -> None:
        self._client.close()

    # -- sources ---------------------------------------------------------------------------

    def add_source(self, source: Source) -> None:
        outcome = self._run(
            "add_source",
            [self._sources, self._names, self._keys],
            [
                source.id,
                source.name.lower(),
                source.write_key,
                _dump(source),
                _key_entry(source.id, None),
            ],
        )
        if outcome[0] == 1:
            raise SourceNameTakenError(_load(outcome[1]))
        if outcome[0] == 2:
            raise WriteKeyTakenError(source.write_key)

    def sources(self) -> list[Source]:
        raw = self._call(lambda: self._client.hvals(self._sources))
        return sorted((_load(r) for r in raw), key=lambda s: (s.created_at, s.id))

    def source_named(self, name: str) -> Source | None:
        source_id = self._call(lambda: self._client.hget(self._names, name.lower()))
        if source_id is None:
            return None
        raw = self._call(lambda: self._client.hget(self._sources, source_id))
        return None if raw is None else _load(raw)

    def replace_key(self, source: Source, write_key: str, old_key_until: float | None) -> bool:
        if source.removed_at is not None:
            return False
        after = Source(source.id, source.name, write_key, source.created_at, source.removed_at)
        outcome = self._run(
            "replace_key",
            [self._sources, self._keys],
            [
                source.id,
                _dump(source),
                _dump(after),
                write_key,
                source.write_key,
                "" if old_key_until is None else _key_entry(source.id, old_key_until),
                _key_entry(source.id, None),
            ],
        )
        if outcome == 2:
            raise WriteKeyTakenError(write_key)
        return bool(outcome == 0)

    def mark_removed(self, source: Source, removed_at: float) -> bool:
        if source.removed_at is not None:
            return False
        retired = [k for k, owner, _until in self._retired() if owner == source.id]
        after = Source(source.id, source.name, source.write_key, source.created_at, removed_at)
        done = self._run(
            "mark_removed",
            [self._sources, self._keys],
            [source.id, _dump(source), _dump(after), *retired],
        )
        return bool(done)

    def source_for_key(self, write_key: str, now: float) -> tuple[Source, float] | None:
        entry = self._call(lambda: self._client.hget(self._keys, write_key))
        if entry is None:
            return None
        found = json.loads(entry)
        until = float("inf") if found["until"] is None else float(found["until"])
        if until <= now:
            return None
        raw = self._call(lambda: self._client.hget(self._sources, found["source"]))
        if raw is None:
            return None
        source = _load(raw)
        if source.removed_at is not None:
            return None
        if found["until"] is None and source.write_key != write_key:
            return None
        return source, until

    def _retired(self) -> list[tuple[str, str, float]]:
        entries = self._call(lambda: self._client.hgetall(self._keys))
        out = []
        for write_key, raw in entries.items():
            found = json.loads(raw)
            if found["until"] is not None:
                out.append((write_key.decode(), str(found["source"]), float(found["until"])))
        return sorted(out)

    def retired_keys(self) -> list[tuple[str, str, float]]:
        return self._retired()

    # -- tokens ----------------------------------------------------------------------------

    def add_token(
        self,
        name: str,
        token_hash: str,
        scopes: tuple[str, ...] | None,
        created_at: float,
        expires_at: float | None,
    ) -> None:
        record = {
            "hash": token_hash,
            "scopes": None if scopes is None else ",".join(scopes),
            "created_at": created_at,
            "expires_at": expires_at,
        }
        outcome = self._run(
            "add_token", [self._tokens, self._hashes], [name, token_hash, json.dumps(record)]
        )
        if outcome:
            raise TokenNameTakenError(name)

    def delete_token(self, name: str) -> bool:
        return bool(self._run("delete_token", [self._tokens, self._hashes, self._used], [name]))

    def _token(self, name: str, raw: bytes, used: bytes | None) -> tuple[Token, str]:
        record = json.loads(raw)
        token = token_of(
            name,
            record["scopes"],
            record["created_at"],
            record["expires_at"],
            None if used is None else float(used),
        )
        return token, str(record["hash"])

    def tokens(self) -> list[Token]:
        records = self._call(lambda: self._client.hgetall(self._tokens))
        used = self._call(lambda: self._client.hgetall(self._used))
        return sorted(
            (self._token(n.decode(), r, used.get(n))[0] for n, r in records.items()),
            key=lambda t: t.name,
        )

    def token_named(self, name: str) -> Token | None:
        raw = self._call(lambda: self._client.hget(self._tokens, name))
        if raw is None:
            return None
        return self._token(name, raw, self._call(lambda: self._client.hget(self._used, name)))[0]

    def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        name = self._call(lambda: self._client.hget(self._hashes, token_hash))
        if name is None:
            return None
        raw = self._call(lambda: self._client.hget(self._tokens, name))
        if raw is None:
            return None
        used = self._call(lambda: self._client.hget(self._used, name))
        return self._token(name.decode(), raw, used)

    def note_token_use(self, name: str, at: float) -> None:
        self._run("note_use", [self._tokens, self._used], [name, repr(at)])

    def token_hashes(self) -> list[tuple[str, str]]:
        return [
            (n.decode(), h.decode())
            for h, n in self._call(lambda: self._client.hgetall(self._hashes)).items()
        ]

    # -- migration -------------------------------------------------------------------------

    def restore(
        self,
        sources: list[Source],
        retired: list[tuple[str, str, float]],
        tokens: list[tuple[Token, str]],
    ) -> None:
        have = {s.id for s in self.sources()}
        for s in sources:
            if s.id in have:
                continue
            try:
                self.add_source(s)
            except (SourceNameTakenError, WriteKeyTakenError):
                continue
        ids = {s.id for s in self.sources()}
        entries = {k: _key_entry(i, u) for k, i, u in retired if i in ids}
        for key_, entry in entries.items():
            self._call(partial(self._client.hsetnx, self._keys, key_, entry))
        for t, digest in tokens:
            try:
                self.add_token(t.name, digest, _scopes(t), t.created_at, t.expires_at)
            except TokenNameTakenError:
                continue
            if t.last_used_at is not None:
                self.note_token_use(t.name, t.last_used_at)


def _scopes(token: Token) -> tuple[str, ...] | None:
    text = scopes_text(token)
    return None if text is None else tuple(text.split(",")) if text else ()
