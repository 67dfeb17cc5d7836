"""Key layout and value encodings of the Redis serving store (``clew.store.redis``).

Every key starts with the store's prefix. What belongs to one profile id shares the hash tag
``{p:<profile_id>}`` (one Redis Cluster slot); each identity index entry has its own tag
``{i:<id_type>:<value>}``; store-wide keys share ``{g}``; a consumer group's offsets have
``{o:<group>}``, an outbox group's keys ``{q:<group>}``::

    <prefix>:{p:<id>}:node      hash   everything of the id but its history (fields below)
    <prefix>:{p:<id>}:hist      zset   history: member (seq, message_id, time_ms, body), score seq
    <prefix>:{p:<id>}:timer     string the id's timer: when it is due (ms)
    <prefix>:{i:<type>:<value>} string the profile id owning the identity
    <prefix>:{g}:seq            string the last history seq handed out
    <prefix>:{g}:profiles       zset   every live profile id, all scores 0 (ordered by id)
    <prefix>:{g}:separations    hash   separation field -> (order, provenance)
    <prefix>:{g}:timers         zset   every timer: member profile id, score when due (ms)
    <prefix>:{o:<group>}        hash   (topic, partition) field -> last applied offset
    <prefix>:{q:<group>}:seq    string the last outbox seq handed out in the group
    <prefix>:{q:<group>}:outbox zset   unacknowledged payloads: member (seq, payload), score seq

In cluster mode (``Keys(prefix, cluster=True)``) the prefix itself is written in braces,
``{<prefix>}:{p:<id>}:node`` and so on: Redis hashes only the first braced part of a key, so
every key of the store is in the one slot of ``{<prefix>}`` and each transaction stays on one
node; the inner braces then only keep the names apart. Without cluster mode the names are
exactly as above.

Fields of a node: ``first``, ``last`` (ms), ``traits``, ``computed`` (JSON) while the id is a
live profile (``first`` present means live); ``i:<identity>`` -> provenance for each of its
identities; ``r:<from_id>`` -> redirect for each redirect pointing directly to it; ``to`` ->
its own redirect once merged away. One hash per id keeps a profile's snapshot to one read.
A profile's ``merged`` redirects are the tree reached by following ``r:`` fields from it.
Fields and members are JSON arrays (msgpack for history and outbox members, which hold bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from clew.store.base import Provenance, Redirect, StoredEvent, StoreError, Traits

_json = msgspec.json.Encoder()
_traits = msgspec.json.Decoder(dict[str, Any])
_pair = msgspec.json.Decoder(tuple[str, str])
_prov = msgspec.json.Decoder(tuple[str, str, int, float | None])
_redirect = msgspec.json.Decoder(tuple[str, str, str, int, float | None, int])
_offset_field = msgspec.json.Decoder(tuple[str, int])
_separation = msgspec.json.Decoder(tuple[int, str, str, int, float | None])
_separation_field = msgspec.json.Decoder(tuple[tuple[str, str], tuple[str, str]])
_event = msgspec.msgpack.Decoder(tuple[int, str, int, bytes])
_outbox = msgspec.msgpack.Decoder(tuple[int, bytes])
_msgpack = msgspec.msgpack.Encoder()


class Keys:
    """The names of a store's keys under ``prefix`` (which must not contain braces: they
    delimit Redis Cluster hash tags); with ``cluster``, all in the slot of ``{prefix}``."""

    def __init__(self, prefix: str, *, cluster: bool = False) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise StoreError(
                f"the Redis key prefix {prefix!r} must be non-empty and free of braces "
                "(they delimit Redis Cluster hash tags); pick another prefix"
            )
        if cluster:
            prefix = f"{{{prefix}}}"
        self._p = prefix
        # Any key of the store: in cluster mode, its slot is every key's slot.
        self.anchor = f"{prefix}:{{g}}:seq"
        self.sequence = f"{prefix}:{{g}}:seq"
        self.profiles = f"{prefix}:{{g}}:profiles"
        self.separations = f"{prefix}:{{g}}:separations"
        self.timers = f"{prefix}:{{g}}:timers"

    def node(self, profile_id: str) -> str:
        return f"{self._p}:{{p:{profile_id}}}:node"

    def hist(self, profile_id: str) -> str:
        return f"{self._p}:{{p:{profile_id}}}:hist"

    def timer(self, profile_id: str) -> str:
        return f"{self._p}:{{p:{profile_id}}}:timer"

    def index(self, id_type: str, value: str) -> str:
        # The value is last, so only a colon in the type could make two keys collide.
        kind = id_type.replace("%", "%25").replace(":", "%3A")
        return f"{self._p}:{{i:{kind}:{value}}}"

    def offsets(self, group: str) -> str:
        return f"{self._p}:{{o:{group}}}"

    def outbox(self, group: str) -> str:
        return f"{self._p}:{{q:{group}}}:outbox"

    def outbox_seq(self, group: str) -> str:
        return f"{self._p}:{{q:{group}}}:seq"


def encode_traits(traits: Traits) -> bytes:
    if not isinstance(traits, dict):
        raise StoreError(f"traits must be a dict, got {type(traits).__name__}")
    return _json.encode(traits)


def decode_traits(raw: bytes) -> Traits:
    return _traits.decode(raw)


ROW = (b"first", b"last", b"traits", b"computed")
TO = b"to"


def identity_field(id_type: str, value: str) -> bytes:
    return b"i:" + _json.encode((id_type, value))


def is_identity_field(field: bytes) -> bool:
    return field.startswith(b"i:")


def decode_identity_field(field: bytes) -> tuple[str, str]:
    return _pair.decode(field[2:])


def redirect_field(from_id: str) -> bytes:
    return b"r:" + from_id.encode()


def redirect_fields(node: Mapping[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The ``(from_id, redirect)`` of the redirects pointing directly to a node."""
    return [(f[2:].decode(), raw) for f, raw in node.items() if f.startswith(b"r:")]


def encode_provenance(p: Provenance) -> bytes:
    return _json.encode((p.message_id, p.source_id, p.time_ms, p.match_weight))


def decode_provenance(raw: bytes) -> Provenance:
    return Provenance(*_prov.decode(raw))


class RedirectRecord(NamedTuple):
    """A stored redirect; ``stamp`` orders redirects of equal event time (insertion order)."""

    redirect: Redirect
    stamp: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.redirect.provenance.time_ms, self.stamp)


def encode_redirect(into_id: str, p: Provenance, stamp: int) -> bytes:
    return _json.encode((into_id, p.message_id, p.source_id, p.time_ms, p.match_weight, stamp))


def decode_redirect(from_id: str, raw: bytes) -> RedirectRecord:
    into_id, message_id, source_id, time_ms, weight, stamp = _redirect.decode(raw)
    return RedirectRecord(
        Redirect(from_id, into_id, Provenance(message_id, source_id, time_ms, weight)), stamp
    )


def encode_event(seq: int, event: StoredEvent) -> bytes:
    return _msgpack.encode((seq, event.message_id, event.time_ms, event.body))


def decode_event(raw: bytes) -> StoredEvent:
    return StoredEvent(*_event.decode(raw))


def encode_outbox(seq: int, payload: bytes) -> bytes:
    return _msgpack.encode((seq, payload))


def decode_outbox(raw: bytes) -> tuple[int, bytes]:
    return _outbox.decode(raw)


def offset_field(topic: str, partition: int) -> bytes:
    return _json.encode((topic, partition))


def decode_offset_field(raw: bytes) -> tuple[str, int]:
    return _offset_field.decode(raw)


def separation_field(a: tuple[str, str], b: tuple[str, str]) -> bytes:
    return _json.encode((a, b))


def encode_separation(order: int, p: Provenance) -> bytes:
    return _json.encode((order, p.message_id, p.source_id, p.time_ms, p.match_weight))


def decode_separation(
    field: bytes, raw: bytes
) -> tuple[int, tuple[str, str], tuple[str, str], Provenance]:
    a, b = _separation_field.decode(field)
    order, message_id, source_id, time_ms, weight = _separation.decode(raw)
    return order, a, b, Provenance(message_id, source_id, time_ms, weight)
