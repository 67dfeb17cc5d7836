"""Consent on the profile: the latest ``context.consent.categoryPreferences`` a person's events
carried (by event time, so a late event never overrides a newer choice), with a short history.

Kept in the profile's computed values: ``consent`` is ``{"categoryPreferences": {...}}`` (the
shape Segment's consent object has, so destinations enforce it the same way on change records
as on events), ``_consent_time`` the event time of that state, and ``_consent_history`` the
last states with their event time and message id, oldest first.
"""

from __future__ import annotations

from typing import Any

from clew.events import Event
from clew.store.base import Traits

CONSENT = "consent"
CONSENT_TIME = "_consent_time"
CONSENT_HISTORY = "_consent_history"
HISTORY_LIMIT = 20


def preferences(event: Event) -> dict[str, bool] | None:
    """The event's category preferences (categories with a true/false value), or None when it
    carries none."""
    consent = event.context.get("consent") if event.context else None
    prefs = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(prefs, dict):
        return None
    kept = {str(k): v for k, v in prefs.items() if isinstance(v, bool)}
    return kept or None


def record(computed: Traits, prefs: dict[str, bool], time_ms: int, message_id: str) -> Traits:
    """``computed`` with one more consent state; it becomes the current one unless a newer
    state is already there."""
    out = dict(computed)
    entry = {"time_ms": time_ms, "categoryPreferences": prefs, "message_id": message_id}
    out[CONSENT_HISTORY] = _history([*computed.get(CONSENT_HISTORY, []), entry])
    if time_ms >= computed.get(CONSENT_TIME, -1):
        out[CONSENT] = {"categoryPreferences": prefs}
        out[CONSENT_TIME] = time_ms
    return out


def merge(out: Traits, into: Traits, from_: Traits) -> Traits:
    """``out`` (two profiles' merged computed values) with the newer consent state and both
    histories."""
    if CONSENT_HISTORY not in into and CONSENT_HISTORY not in from_:
        return out
    result = dict(out)
    newer = from_ if from_.get(CONSENT_TIME, -1) > into.get(CONSENT_TIME, -1) else into
    for key in (CONSENT, CONSENT_TIME):
        if key in newer:
            result[key] = newer[key]
    result[CONSENT_HISTORY] = _history(
        [*into.get(CONSENT_HISTORY, []), *from_.get(CONSENT_HISTORY, [])]
    )
    return result


def _history(entries: list[Any]) -> list[Any]:
    unique = {(e["time_ms"], e["message_id"]): e for e in entries}
    ordered = sorted(unique.values(), key=lambda e: (e["time_ms"], e["message_id"]))
    return ordered[-HISTORY_LIMIT:]
