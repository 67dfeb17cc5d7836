"""What a definition looks like from the serving store: how many profiles an audience holds and
whether a definition's backfill from the lake has run (for ``clew audiences`` and the Admin
API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clew.audiences.definitions import Definition
from clew.events import format_time
from clew.store.base import BulkStore, OffsetStore

BACKFILL_GROUP = "audiences-backfill"
"""The offsets group in which the engine records, per definition version, when its backfill
from the lake finished: ``backfill_key(definition) -> backfilled_at_ms``."""

# The computed key listing a profile's audiences (engine.AUDIENCES; not imported, because the
# engine imports this module).
_MEMBERSHIP = "audiences"

_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def backfill_key(definition: Definition) -> tuple[str, int]:
    """The key of ``definition``'s backfill record: a changed definition has a new
    fingerprint, so it is backfilled again."""
    return (f"{definition.name}@{definition.fingerprint}", 0)


def audience_size(store: BulkStore, name: str) -> int:
    """The number of profiles currently in the audience ``name`` (0 for an unknown one).
    Reads every profile, page by page: its cost grows with the number of profiles."""
    size = 0
    after: str | None = None
    while True:
        page = store.scan(after, _PAGE)
        for profile in page:
            members = profile.computed.get(_MEMBERSHIP)
            if isinstance(members, list) and name in members:
                size += 1
        if len(page) < _PAGE:
            return size
        after = page[-1].profile_id


def backfill_state(store: OffsetStore, definition: Definition) -> str | None:
    """When the backfill of this version of ``definition`` finished (ISO-8601 UTC), or None
    while it is pending."""
    done_ms = store.load_offsets(BACKFILL_GROUP).get(backfill_key(definition))
    if done_ms is None:
        return None
    return format_time(_EPOCH + timedelta(milliseconds=done_ms))
