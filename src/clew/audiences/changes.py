"""Audience and computed-trait change records on the ``changes`` topic, beside the profile
snapshots of :mod:`clew.identity.changes`.

A record says who (``profile_id``, ``user_id`` and every identifier), what (``audience`` or
``trait`` with ``value`` and ``previous``), when (``changed_at``, clock time) and why
(``cause``: ``event``, ``timer`` or ``backfill``). ``change_id`` is the same for every copy
of one change, so a consumer that sees a record twice (after a crash, the stage re-sends
what it cannot prove it sent) can drop the copy.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from clew.audiences.engine import ComputedChange
from clew.clock import to_datetime
from clew.events import format_time
from clew.identity.identifiers import USER_ID
from clew.log.base import Message
from clew.store.base import Profile

ENTERED = "audience_entered"
EXITED = "audience_exited"
TRAIT_CHANGED = "trait_changed"
KINDS = frozenset({ENTERED, EXITED, TRAIT_CHANGED})


class AudienceChange(msgspec.Struct, omit_defaults=True):
    kind: str
    change_id: str
    profile_id: str
    changed_at: str
    cause: str
    user_id: str | None = None
    identifiers: dict[str, list[str]] = {}
    audience: str | None = None
    trait: str | None = None
    value: Any = None
    previous: Any = None
    # The profile's consent state (``{"categoryPreferences": {...}}``), enforced by
    # destinations as they enforce an event's ``context.consent``.
    consent: Any = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AudienceChange)


def records(
    profile: Profile, changes: list[ComputedChange], now_ms: int, cause: str
) -> list[Message]:
    """The change records of one profile's evaluation, keyed by profile id."""
    if not changes:
        return []
    identifiers: dict[str, list[str]] = {}
    for edge in profile.identities:
        identifiers.setdefault(edge.id_type, []).append(edge.value)
    user_ids = identifiers.get(USER_ID)
    at = format_time(to_datetime(now_ms))
    key = profile.profile_id.encode()
    consent = profile.computed.get("consent")
    out = []
    for c in changes:
        is_trait = c.kind == TRAIT_CHANGED
        digest = hashlib.blake2b(
            f"{profile.profile_id}\x00{c.kind}\x00{c.name}\x00{now_ms}".encode(), digest_size=12
        ).hexdigest()
        record = AudienceChange(
            kind=c.kind,
            change_id=digest,
            profile_id=profile.profile_id,
            changed_at=at,
            cause=cause,
            user_id=user_ids[0] if user_ids else None,
            identifiers=identifiers,
            audience=None if is_trait else c.name,
            trait=c.name if is_trait else None,
            value=c.value if is_trait else None,
            previous=c.previous if is_trait else None,
            consent=consent,
        )
        out.append(Message(value=_encoder.encode(record), key=key))
    return out


def decode(data: bytes) -> AudienceChange | None:
    """The audience or trait change in ``data``; None for another kind of record."""
    try:
        change = _decoder.decode(data)
    except msgspec.ValidationError:
        return None
    return change if change.kind in KINDS else None


def pack(messages: list[Message]) -> bytes:
    """Messages as one outbox payload."""
    return _encoder.encode([[m.key, m.value] for m in messages])


def unpack(payload: bytes) -> list[Message]:
    pairs = msgspec.json.decode(payload, type=list[tuple[bytes | None, bytes]])
    return [Message(value=v, key=k) for k, v in pairs]
