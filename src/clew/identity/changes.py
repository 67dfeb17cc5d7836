"""Profile change records on the ``changes`` topic: the profiles stage announces every profile
an event batch touched as a full snapshot, and every profile that stopped existing (merged
into another, split, deleted). Consumers (the lake's ``customer_profiles`` and ``identities``
tables, destinations) upsert snapshots by ``profile_id``, so a record delivered twice, or a
newer snapshot of the same profile, is harmless.

Records are JSON objects with a ``kind`` field: ``profile`` or ``profile_deleted``. Other kinds
share the topic (volume alerts); :func:`decode_change` returns ``None`` for them.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import msgspec

from clew.events import format_time
from clew.nesting import cut
from clew.store.base import Profile

PROFILE_KIND = "profile"
DELETED_KIND = "profile_deleted"


class IdentityRow(msgspec.Struct, omit_defaults=False):
    type: str
    value: str
    message_id: str
    source_id: str
    time: str
    match_weight: float | None = None


class ProfileChange(msgspec.Struct, tag_field="kind", tag=PROFILE_KIND):
    """The whole profile after the change. ``merged_ids``: every old id that now resolves to
    it."""

    profile_id: str
    first_seen: str
    last_seen: str
    identities: list[IdentityRow]
    traits: dict[str, Any]
    computed: dict[str, Any]
    merged_ids: list[str]
    changed_at: str


class ProfileDeleted(msgspec.Struct, tag_field="kind", tag=DELETED_KIND):
    """The profile no longer exists: merged ``into`` another, or (``into`` null) split or
    deleted."""

    profile_id: str
    into: str | None
    changed_at: str


Change = ProfileChange | ProfileDeleted

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Change] = msgspec.json.Decoder(Change)


class _Kind(msgspec.Struct):
    kind: str | None = None


_kind_decoder = msgspec.json.Decoder(_Kind)


# Before 2100 a double holds ``ms / 1000`` to within a quarter of a microsecond, so the time
# formatted from the float is the whole second's text and then the milliseconds.
_EXACT_UNTIL_MS = 4_102_444_800_000


@functools.lru_cache(maxsize=1 << 16)
def _iso(ms: int) -> str:
    """``format_time`` of the instant ``ms`` (epoch milliseconds).

    >>> _iso(1_767_225_601_050)
    '2026-01-01T00:00:01.050Z'
    """
    # Cached: a profile is announced again and again with the same identifiers and times.
    # A new time (every event brings one) reuses its second's text.
    if 0 <= ms < _EXACT_UNTIL_MS:
        seconds, millis = divmod(ms, 1000)
        return f"{_iso_second(seconds)}.{millis:03d}Z"
    return format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))


@functools.lru_cache(maxsize=1 << 12)
def _iso_second(seconds: int) -> str:
    return format_time(datetime.fromtimestamp(seconds, tz=UTC)).removesuffix(".000Z")


def snapshot(profile: Profile, changed_at: datetime) -> ProfileChange:
    return ProfileChange(
        profile_id=profile.profile_id,
        first_seen=_iso(profile.first_seen_ms),
        last_seen=_iso(profile.last_seen_ms),
        identities=[
            IdentityRow(
                e.id_type,
                e.value,
                e.provenance.message_id,
                e.provenance.source_id,
                _iso(e.provenance.time_ms),
                e.provenance.match_weight,
            )
            for e in profile.identities
        ],
        traits=profile.traits,
        # Bookkeeping (``_``-prefixed: trait times, audience state) stays in the store; it can
        # be large and no consumer of snapshots needs it.
        computed={k: v for k, v in profile.computed.items() if not k.startswith("_")},
        merged_ids=[r.from_id for r in profile.merged],
        changed_at=format_time(changed_at),
    )


def deleted(profile_id: str, into: str | None, changed_at: datetime) -> ProfileDeleted:
    return ProfileDeleted(profile_id, into, format_time(changed_at))


def encode_change(change: Change) -> bytes:
    """The change as JSON. A profile whose traits or computed values nest too deep to
    encode (from events stored before the Tracking API bounded nesting) has them cut to
    :data:`~clew.nesting.MAX_DEPTH` levels, so its snapshot is still written."""
    try:
        return _encoder.encode(change)
    except RecursionError:
        if not isinstance(change, ProfileChange):
            raise
        return _encoder.encode(
            msgspec.structs.replace(
                change, traits=cut(change.traits), computed=cut(change.computed)
            )
        )


def decode_change(data: bytes) -> Change | None:
    """The change in ``data``, or ``None`` for another kind of record on the topic. Raises
    ``msgspec.DecodeError`` for a malformed profile change."""
    if _kind_decoder.decode(data).kind not in (PROFILE_KIND, DELETED_KIND):
        return None
    return _decoder.decode(data)
