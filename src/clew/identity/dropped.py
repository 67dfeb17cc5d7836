"""Identifiers a profile's events carried that the profile does not hold, and why (the
``dropped`` section of ``clew identity explain``).

The events are re-read from the profile's recent history in the serving store and their
identifiers extracted again under the current rules. Extraction itself says why it dropped a
placeholder or an unusable value. Why resolution did not attach a usable identifier is not
stored; what the store shows is reported instead: another profile holds it, an operator's
split keeps it apart from one the profile holds, or (the identifier recorded as contested on
the profile, or held by nobody) an identity rule refused it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from clew.events import Event
from clew.identity.identifiers import (
    ANONYMOUS_ID,
    USER_ID,
    Identifier,
    extract,
    placeholder_rule,
)
from clew.identity.rules import IdentityRules
from clew.identity.traits import CONTESTED
from clew.store.base import ProfileReader, ProfileStore, UnknownProfileError

REFUSED = "refused by an identity rule (a limit or a separation)"


@dataclass(slots=True, frozen=True)
class DroppedIdentifier:
    """An identifier an event of the profile carried, not held by the profile: ``reason``
    says why, ``message_id`` names the newest such event."""

    identifier: Identifier
    reason: str
    message_id: str


@dataclass(slots=True, frozen=True)
class DroppedIdentifiers:
    """What :func:`dropped_identifiers` found in ``events_read`` events. ``history_full``:
    the history held as many events as it keeps, so older events (and what they carried)
    may have gone from it."""

    items: tuple[DroppedIdentifier, ...]
    events_read: int
    history_full: bool


def dropped_identifiers(
    store: ProfileStore, profile_id: str, rules: IdentityRules
) -> DroppedIdentifiers:
    """Every identifier the recent events of the profile ``profile_id`` resolves to carried
    and the profile does not hold, once each, in the order of the newest event first. Raises
    :class:`UnknownProfileError` if the id does not resolve."""
    pid = store.resolve(profile_id)
    profile = store.get(pid) if pid is not None else None
    if pid is None or profile is None:
        raise UnknownProfileError(profile_id)
    held = {(e.id_type, e.value) for e in profile.identities}
    contested = set(profile.computed.get(CONTESTED, ()))
    apart: dict[tuple[str, str], tuple[str, str]] = {}
    for sep in store.separations():
        if sep.a in held:
            apart.setdefault(sep.b, sep.a)
        if sep.b in held:
            apart.setdefault(sep.a, sep.b)
    table = rules.table()
    events = store.events(pid, store.history)
    found: dict[Identifier, DroppedIdentifier] = {}

    def add(ident: Identifier, reason: str, message_id: str) -> None:
        if ident not in found:
            found[ident] = DroppedIdentifier(ident, reason, message_id)

    for stored in events:
        try:
            event = msgspec.json.decode(stored.body, type=Event)
        except msgspec.DecodeError:
            # A body that is not an event carries no identifiers to report.
            continue
        extraction = extract(
            event, rules, previous_id_type=_previous_id_type(store, event, rules), table=table
        )
        for d in extraction.dropped:
            ident = Identifier(d.id_type, d.value)
            rule = placeholder_rule(ident, rules)
            add(ident, d.reason if rule is None else f"{d.reason}: {rule}", stored.message_id)
        for ident in extraction.identifiers:
            key = (ident.id_type, ident.value)
            if key not in held:
                add(
                    ident, _why_not_held(store, ident, contested, apart.get(key)), stored.message_id
                )
    return DroppedIdentifiers(
        tuple(found.values()), len(events), store.history > 0 and len(events) >= store.history
    )


def _why_not_held(
    store: ProfileReader,
    ident: Identifier,
    contested: set[str],
    kept_apart_from: tuple[str, str] | None,
) -> str:
    if kept_apart_from is not None:
        other = Identifier(*kept_apart_from)
        return f"kept apart from {other} by a split (clew identity split)"
    owner = store.lookup(ident.id_type, ident.value)
    if owner is None:
        return REFUSED
    if str(ident) in contested:
        return f"held by profile {owner}; {REFUSED} here"
    return f"held by profile {owner}"


def _previous_id_type(store: ProfileReader, event: Event, rules: IdentityRules) -> str:
    # As the resolver reads an alias's previousId: a known user id, otherwise an anonymous id
    # (today's index decides, which may differ from the one the event met).
    if rules.previous_id_type is not None:
        return rules.previous_id_type
    if event.type != "alias" or event.previous_id is None:
        return USER_ID
    known = store.lookup(USER_ID, event.previous_id.strip()) is not None
    return USER_ID if known else ANONYMOUS_ID
