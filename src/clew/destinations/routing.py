"""Which destinations a record goes to: selection (event names and types, change kinds,
audiences, traits), the ``integrations`` object, then consent.

Consent follows Segment's consent enforcement, so data stamped by an existing consent
management platform behaves the same here:

- a record with no consent object, an empty one, one without ``categoryPreferences``, or a
  ``consent`` that is not an object, is sent to every destination it is selected for (no
  consent information, no enforcement);
- a record with ``categoryPreferences`` (even ``{}``) goes to a destination only when every
  category of the destination is granted with JSON ``true`` there; a category that is missing
  counts as not granted. A destination with no categories is not subject to consent;
- a ``categoryPreferences`` that is not an object is taken as "nothing granted" (fail closed).

Consent is read from each record, so a revoked category takes effect from the next event the
person sends. Events carry it in ``context.consent``; change records may carry it in
``consent`` or ``context.consent``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from clew.destinations.config import ALL_EVENTS, DestinationConfig

# Why a record was not sent to a destination (the ``reason`` label of the filtered counter).
NOT_SELECTED_EVENT = "event"
NOT_SELECTED_CHANGE = "change"
INTEGRATIONS = "integrations"
CONSENT = "consent"

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
_AUDIENCE_KINDS = frozenset({"audience_entered", "audience_exited"})
_TRAIT_KIND = "trait_changed"


class _Context(msgspec.Struct):
    consent: Any = None


class _EventView(msgspec.Struct):
    type: str = ""
    event: str | None = None
    context: _Context = msgspec.field(default_factory=_Context)
    integrations: Any = None


class _ChangeView(msgspec.Struct):
    kind: Any = None
    audience: Any = None
    trait: Any = None
    consent: Any = None
    context: _Context = msgspec.field(default_factory=_Context)


_event_decoder = msgspec.json.Decoder(_EventView)
_change_decoder = msgspec.json.Decoder(_ChangeView)


class Item(msgspec.Struct, frozen=True):
    """What routing needs of one record. ``is_event``: from the ``events`` topic (``kind`` is
    then the event type and ``name`` the track event name), else a change record."""

    is_event: bool
    kind: str
    name: str | None = None
    audience: frozenset[str] = frozenset()
    trait: frozenset[str] = frozenset()
    consent: Any = None
    integrations: Any = None


def read_event(value: bytes) -> Item:
    """Raises ``msgspec.DecodeError`` for a record that is not a JSON event object."""
    view = _event_decoder.decode(value)
    return Item(
        True, view.type, view.event, consent=view.context.consent, integrations=view.integrations
    )


def read_change(value: bytes) -> Item | None:
    """The change record in ``value``; None for a record without a string ``kind``. Raises
    ``msgspec.DecodeError`` for a record that is not a JSON object."""
    view = _change_decoder.decode(value)
    if not isinstance(view.kind, str):
        return None
    consent = view.consent if view.consent is not None else view.context.consent
    return Item(False, view.kind, None, _names(view.audience), _names(view.trait), consent)


def _names(ref: Any) -> frozenset[str]:
    """An audience or trait may be referred to by a string or by an object with a name, key,
    slug or id; a filter entry matches any of them."""
    if isinstance(ref, str):
        return frozenset((ref,))
    if isinstance(ref, dict):
        return frozenset(
            str(ref[k]) for k in ("name", "key", "slug", "id") if isinstance(ref.get(k), str | int)
        )
    return frozenset()


def consent_allows(categories: frozenset[str], consent: Any) -> bool:
    """True when a record with this consent object may go to a destination in ``categories``
    (the policy in the module docstring)."""
    if not categories or not isinstance(consent, dict):
        # A consent "object" that is not an object carries no preferences either.
        return True
    prefs = consent.get("categoryPreferences")
    if prefs is None:
        return True
    if not isinstance(prefs, dict):
        return False
    return all(prefs.get(c) is True for c in categories)


def integrations_allow(name: str, integrations: Any) -> bool:
    """Segment's ``integrations`` object: ``{"<destination name>": false}`` skips one
    destination, ``{"All": false}`` all of them except those set to true (or to an options
    object)."""
    if not isinstance(integrations, dict):
        return True
    value = integrations.get(name)
    if value is None:
        value = integrations.get("All", True)
    return value is not False


class Route:
    """A destination's filters, compiled for fast matching."""

    def __init__(self, config: DestinationConfig, since_ms: int = 0) -> None:
        self.config = config
        self.name = config.name
        # Records appended to the log before this (when the destination was added) are not
        # for it.
        self.since_ms = since_ms
        events = frozenset(config.events)
        self._all_events = ALL_EVENTS in events
        self._types = events & EVENT_TYPES
        self._names = events - EVENT_TYPES
        self._kinds = frozenset(config.changes)
        self._audiences = frozenset(config.audiences)
        self._traits = frozenset(config.traits)
        self._categories = frozenset(config.categories)

    def reject_reason(self, item: Item) -> str | None:
        """None when ``item`` goes to this destination, else the reason it does not."""
        if item.is_event:
            if not self._selects_event(item):
                return NOT_SELECTED_EVENT
            if not integrations_allow(self.name, item.integrations):
                return INTEGRATIONS
        elif not self._selects_change(item):
            return NOT_SELECTED_CHANGE
        if not consent_allows(self._categories, item.consent):
            return CONSENT
        return None

    def _selects_event(self, item: Item) -> bool:
        if self._all_events or item.kind in self._types:
            return True
        return item.kind == "track" and item.name is not None and item.name in self._names

    def _selects_change(self, item: Item) -> bool:
        if item.kind not in self._kinds:
            return False
        if item.kind in _AUDIENCE_KINDS and self._audiences:
            return not self._audiences.isdisjoint(item.audience)
        if item.kind == _TRAIT_KIND and self._traits:
            return not self._traits.isdisjoint(item.trait)
        return True
