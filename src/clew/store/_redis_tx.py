"""One optimistic transaction on one Redis connection (used by ``clew.store.redis``).

A :class:`Tx` reads whole keys into a local copy and buffers its writes as Redis commands,
applying each to the local copy too, so that later reads in the transaction see them.

- Read-write mode (``snapshot=False``): each :meth:`Tx.fetch` sends ``WATCH`` for the keys,
  then reads them, in one round trip. :meth:`Tx.commit` sends the buffered commands inside
  ``MULTI``/``EXEC``: Redis applies them all at once, or none if any watched key changed
  since it was watched (then :class:`Conflict` is raised and the caller retries or gives up).
  Keys written without being read (history appends, offsets, the sorted sets of timers and
  outbox payloads) are not watched: those writes commute with other writers' (the caller's
  choice).
- Snapshot mode (``snapshot=True``, read-only): each fetch reads, inside ``MULTI``/``EXEC``,
  the new keys together with every key read before, and raises :class:`Conflict` if any of
  those changed; so what the transaction read is always one instant's state, with no
  ``WATCH`` and no commit round trip.

A savepoint is a cheap copy of the local state (values are replaced, never mutated).

On Redis Cluster a key may answer ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``CLUSTERDOWN`` (its
slot moved, is moving, or has no reachable primary). Any such reply raises
:class:`Redirected`: a read was not done, and a ``MULTI``/``EXEC`` holding one is aborted by
Redis whole (``EXECABORT``), so nothing of the transaction was written and it can run again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from clew._errors import ServiceUnavailableError
from clew.store.base import StoreConflictError, StoreError

Kind = Literal["str", "hash", "zset"]
# Longest wait for one reply of Redis (a whole transaction block is one reply): a Redis that
# hangs (stopped, swapping, a network path gone silent) makes a call fail with
# RedisUnavailableError after this, which a stage retries and the Profile API answers 503,
# instead of waiting for ever.
SOCKET_TIMEOUT_S = 10.0
_Op = tuple[str, Any]
_Cmd = tuple[str | bytes | int | float, ...]


class Connection(Protocol):
    """What a transaction uses of a redis-py connection."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None: ...

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> Any: ...

    def read_response(self, disable_decoding: bool = False) -> Any: ...

    def disconnect(self) -> None: ...


class RedisUnavailableError(StoreError, ServiceUnavailableError):
    """Redis could not be reached, or the connection broke during a call. A write that was
    under way may or may not have been applied (each is all-or-nothing)."""


class RedisConflictError(StoreConflictError):
    """Another writer kept changing what this transaction read, so it was not applied."""


class Conflict(Exception):
    """A key this transaction read changed before it could commit; nothing was written."""


class Redirected(Exception):
    """Redis Cluster redirected a command of this transaction (``error``: a ``MovedError``,
    ``AskError``, ``TryAgainError`` or ``ClusterDownError``); nothing was written."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error


# Replies meaning "not here, not now" on Redis Cluster (MovedError is an AskError).
_REDIRECTS = (AskError, TryAgainError, ClusterDownError)
# The text of Redis Cluster's CROSSSLOT error (the driver drops the code itself).
_CROSS_SLOT = "hash to the same slot"


class Tx:
    """Reads and buffered writes of one transaction; see the module docstring. Not
    thread-safe: one thread uses a transaction at a time."""

    def __init__(self, conn: Connection, *, snapshot: bool, pool: Any = None) -> None:
        self.conn = conn
        # Where the connection goes back to when the transaction ends.
        self.pool = pool
        self._snapshot = snapshot
        self._strs: dict[str, bytes | None] = {}
        self._hashes: dict[str, dict[bytes, bytes]] = {}
        self._zsets: dict[str, dict[bytes, float]] = {}
        self._blind: dict[str, tuple[_Op, ...]] = {}
        self._cmds: list[_Cmd] = []
        self._read: list[tuple[str, Kind]] = []
        self.watching = False
        self.broken = False

    # -- reads ------------------------------------------------------------------------------

    def fetch(self, keys: Iterable[tuple[str, Kind]]) -> None:
        """Load the keys not loaded yet (one round trip); see the module docstring."""
        new = [kk for kk in dict.fromkeys(keys) if not self._loaded(kk[0])]
        if not new:
            return
        reads = [_read_cmd(key, kind) for key, kind in new]
        if self._snapshot:
            before = self._read
            replies = self._roundtrip(
                [("MULTI",), *(_read_cmd(k, kind) for k, kind in before), *reads, ("EXEC",)]
            )
            values = replies[-1]
            if not isinstance(values, list):
                raise StoreError(f"unexpected reply to EXEC from Redis: {values!r}")
            for (key, kind), raw in zip(before, values, strict=False):
                if _parse(kind, raw) != self._value(key, kind):
                    raise Conflict
            values = values[len(before) :]
            self._read = [*before, *new]
        else:
            # Set first: if a read is redirected, the watches still go at release.
            self.watching = True
            replies = self._roundtrip([("WATCH", *(k for k, _ in new)), *reads])
            values = replies[1:]
        for (key, kind), raw in zip(new, values, strict=True):
            self._store(key, kind, _parse(kind, raw))

    def string(self, key: str) -> bytes | None:
        return self._strs[key]

    def hash(self, key: str) -> Mapping[bytes, bytes]:
        return self._hashes[key]

    def zset(self, key: str) -> Mapping[bytes, float]:
        return self._zsets[key]

    def lex_range(self, key: str, after: str | None, count: int) -> list[str]:
        """Up to ``count`` members of a sorted set of equal scores greater than ``after``, in
        byte order, including this transaction's own writes. Not watched (no guard against
        members that other writers add or remove meanwhile)."""
        ops = self._blind.get(key, ())
        cleared = max((i + 1 for i, op in enumerate(ops) if op[0] == "del"), default=0)
        pending = ops[cleared:]
        members: set[bytes] = set()
        if not cleared:
            extra = sum(len(op[1]) for op in pending if op[0] == "zrem")
            start = "-" if after is None else b"(" + after.encode()
            reply = self.call("ZRANGEBYLEX", key, start, "+", "LIMIT", 0, count + extra)
            members.update(reply)
        for name, arg in pending:
            if name == "zadd":
                members.update(arg)
            elif name == "zrem":
                members.difference_update(arg)
        low = None if after is None else after.encode()
        ordered = sorted(m for m in members if low is None or m > low)
        return [m.decode() for m in ordered[:count]]

    def score_range(self, key: str, high: float | None, count: int) -> list[tuple[bytes, float]]:
        """Up to ``count`` ``(member, score)`` of a sorted set with scores at most ``high``
        (``None``: any), lowest first (equal scores in byte order), including this
        transaction's own writes to it (which must not include a :meth:`ztrim`). Not watched,
        like :meth:`lex_range`."""
        if count <= 0:
            return []
        if key in self._zsets:
            members = dict(self._zsets[key])
        else:
            ops = self._blind.get(key, ())
            cleared = max((i + 1 for i, op in enumerate(ops) if op[0] == "del"), default=0)
            members = {}
            if not cleared:
                # Each own write of a member can take at most one member off the server's
                # range, so that many more are asked for; a cut takes every member up to its
                # score, so only those above the highest cut are asked for.
                extra = sum(len(arg) for name, arg in ops if name in ("zadd", "zrem"))
                cut = max((arg for name, arg in ops if name == "zcut"), default=None)
                low = "-inf" if cut is None else f"({_score(cut)}"
                top = "+inf" if high is None else _score(high)
                reply = self.call(
                    "ZRANGEBYSCORE", key, low, top, "WITHSCORES", "LIMIT", 0, count + extra
                )
                members = _parse("zset", reply)
            for op in ops[cleared:]:
                members = _apply("zset", members, op)
        ordered = sorted((s, m) for m, s in members.items() if high is None or s <= high)
        return [(m, s) for s, m in ordered[:count]]

    def call(self, *cmd: str | bytes | int | float) -> Any:
        """Send one command now, outside the transaction (e.g. ``INCRBY`` of a counter)."""
        return self._roundtrip([cmd])[0]

    # -- writes -----------------------------------------------------------------------------

    def set(self, key: str, value: bytes) -> None:
        self._write(key, ("set", value), ("SET", key, value))

    def delete(self, key: str) -> None:
        self._write(key, ("del", None), ("DEL", key))

    def hset(self, key: str, mapping: Mapping[bytes, bytes]) -> None:
        if mapping:
            args = [part for item in mapping.items() for part in item]
            self._write(key, ("hset", dict(mapping)), ("HSET", key, *args))

    def hdel(self, key: str, fields: Sequence[bytes]) -> None:
        if fields:
            self._write(key, ("hdel", tuple(fields)), ("HDEL", key, *fields))

    def zadd(self, key: str, mapping: Mapping[bytes, float]) -> None:
        if mapping:
            args = [part for m, s in mapping.items() for part in (_score(s), m)]
            self._write(key, ("zadd", dict(mapping)), ("ZADD", key, *args))

    def zrem(self, key: str, members: Sequence[bytes]) -> None:
        if members:
            self._write(key, ("zrem", tuple(members)), ("ZREM", key, *members))

    def zcut(self, key: str, high: float) -> None:
        """Remove the members with scores at most ``high``."""
        self._write(key, ("zcut", high), ("ZREMRANGEBYSCORE", key, "-inf", _score(high)))

    def ztrim(self, key: str, keep: int) -> None:
        """Keep only the ``keep`` members of highest score."""
        self._write(key, ("ztrim", keep), ("ZREMRANGEBYRANK", key, 0, -keep - 1))

    # -- savepoints and the end -------------------------------------------------------------

    def savepoint(self) -> tuple[Any, ...]:
        return (
            dict(self._strs),
            dict(self._hashes),
            dict(self._zsets),
            dict(self._blind),
            len(self._cmds),
        )

    def restore(self, savepoint: tuple[Any, ...]) -> None:
        """Forget everything written since ``savepoint`` (keys read since then stay watched,
        which can only make a commit fail, never let a change through)."""
        self._strs, self._hashes, self._zsets, self._blind, n = savepoint
        del self._cmds[n:]

    def commit(self) -> None:
        """Apply every buffered write at once; raises :class:`Conflict` (nothing written) if a
        watched key changed."""
        if self._snapshot or (not self._cmds and not self.watching):
            return
        replies = self._roundtrip([("MULTI",), *self._cmds, ("EXEC",)], raising=False)
        self.watching = False
        self._cmds.clear()
        result = replies[-1]
        if result is None:
            raise Conflict
        failed = [r for r in replies[:-1] if isinstance(r, ResponseError)]
        failed += [r for r in (result if isinstance(result, list) else [result])]
        failed = [r for r in failed if isinstance(r, ResponseError)]
        if failed:
            raise StoreError(
                f"Redis refused a store transaction ({failed[0]}); another program may be "
                "writing keys of another type under this store's prefix: give each store "
                "its own prefix"
            )

    def release(self) -> None:
        """Drop the transaction's watches so the connection can be reused."""
        if self.watching and not self.broken:
            self._roundtrip([("UNWATCH",)])
            self.watching = False

    # -- internals --------------------------------------------------------------------------

    def _loaded(self, key: str) -> bool:
        return key in self._strs or key in self._hashes or key in self._zsets

    def _value(self, key: str, kind: Kind) -> object:
        if kind == "str":
            return self._strs[key]
        return self._hashes[key] if kind == "hash" else self._zsets[key]

    def _store(self, key: str, kind: Kind, value: Any) -> None:
        for op in self._blind.pop(key, ()):
            value = _apply(kind, value, op)
        if kind == "str":
            self._strs[key] = value
        elif kind == "hash":
            self._hashes[key] = value
        else:
            self._zsets[key] = value

    def _write(self, key: str, op: _Op, cmd: _Cmd) -> None:
        if self._snapshot:
            raise AssertionError("a snapshot transaction cannot write")
        if key in self._strs:
            self._strs[key] = _apply("str", self._strs[key], op)
        elif key in self._hashes:
            self._hashes[key] = _apply("hash", self._hashes[key], op)
        elif key in self._zsets:
            self._zsets[key] = _apply("zset", self._zsets[key], op)
        else:
            self._blind[key] = (*self._blind.get(key, ()), op)
        self._cmds.append(cmd)

    def _roundtrip(self, cmds: Sequence[_Cmd], *, raising: bool = True) -> list[Any]:
        conn = self.conn
        try:
            conn.send_packed_command(conn.pack_commands(cmds))
            replies: list[Any] = []
            for _ in cmds:
                try:
                    replies.append(conn.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.broken = True
            raise RedisUnavailableError(
                f"cannot talk to Redis ({exc}); check that it is running and reachable"
            ) from exc
        except BaseException:
            self.broken = True
            raise
        for reply in replies:
            if isinstance(reply, _REDIRECTS):
                raise Redirected(reply)
            if isinstance(reply, ResponseError) and _CROSS_SLOT in str(reply):
                raise StoreError(
                    f"Redis refused a transaction across slots ({reply}): the server is a "
                    "Redis Cluster node; set `redis_cluster = true` in [store] (or pass "
                    "cluster=True) to use a cluster"
                )
        if raising:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise StoreError(f"Redis refused a command of the store: {reply}")
        return replies


def _read_cmd(key: str, kind: Kind) -> _Cmd:
    if kind == "str":
        return ("GET", key)
    if kind == "hash":
        return ("HGETALL", key)
    return ("ZRANGE", key, 0, -1, "WITHSCORES")


def _parse(kind: Kind, raw: Any) -> Any:
    """A reply in the local form (RESP2 flat lists or RESP3 maps and pairs)."""
    if kind == "str":
        return raw
    if kind == "hash":
        if isinstance(raw, dict):
            return dict(raw)
        return dict(zip(raw[::2], raw[1::2], strict=True))
    if raw and isinstance(raw[0], list):
        return {m: float(s) for m, s in raw}
    return {m: float(s) for m, s in zip(raw[::2], raw[1::2], strict=True)}


def _empty(kind: Kind) -> Any:
    return None if kind == "str" else {}


def _apply(kind: Kind, value: Any, op: _Op) -> Any:
    name, arg = op
    if name == "del":
        return _empty(kind)
    if name == "set":
        return arg
    new = dict(value or {})
    if name in ("hset", "zadd"):
        new.update(arg)
    elif name in ("hdel", "zrem"):
        for item in arg:
            new.pop(item, None)
    elif name == "zcut":
        new = {m: s for m, s in new.items() if s > arg}
    elif name == "ztrim":
        ordered = sorted(new.items(), key=lambda ms: (ms[1], ms[0]))
        new = dict(ordered[max(len(ordered) - arg, 0) :]) if arg > 0 else {}
    return new


def _score(score: float) -> int | float:
    return int(score) if float(score).is_integer() else score
