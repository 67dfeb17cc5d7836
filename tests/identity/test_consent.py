"""Consent on the profile: the latest category preferences by event time, with history,
combined on merge, usable in audiences, and carried by audience change records so that
destinations enforce the person's current choice."""

from __future__ import annotations

import itertools
from typing import Any

from clew.audiences.changes import records
from clew.audiences.definitions import AudienceCatalog, parse_document
from clew.audiences.engine import ComputedChange, Engine
from clew.destinations.routing import consent_allows, read_change
from clew.events import Event
from clew.identity.consent import CONSENT, CONSENT_HISTORY
from clew.identity.unifier import Unifier
from clew.store.memory import MemoryProfileStore

_ids = itertools.count()


def event(ts: str, prefs: dict[str, Any] | None, **ids: str) -> Event:
    context = {} if prefs is None else {"consent": {"categoryPreferences": prefs}}
    return Event(
        type="track",
        event="Page Viewed",
        message_id=f"m{next(_ids)}",
        timestamp=ts,
        received_at=ts,
        source_id="web",
        context=context,
        **ids,
    )


def consent_of(store: MemoryProfileStore, user: str) -> Any:
    pid = store.lookup("user_id", user)
    assert pid is not None
    profile = store.get(pid)
    assert profile is not None
    return profile.computed


def test_latest_consent_by_event_time_wins_and_history_is_kept() -> None:
    store = MemoryProfileStore()
    u = Unifier(store)
    u.apply(event("2026-03-01T10:00:00Z", {"Advertising": True, "Analytics": True}, user_id="a"))
    u.apply(event("2026-03-02T10:00:00Z", {"Advertising": False, "Analytics": True}, user_id="a"))
    # A late event with an older choice does not override the newer one.
    u.apply(event("2026-03-01T12:00:00Z", {"Advertising": True}, user_id="a"))
    u.apply(event("2026-03-03T10:00:00Z", None, user_id="a"))  # no consent: no change
    c = consent_of(store, "a")
    assert c[CONSENT] == {"categoryPreferences": {"Advertising": False, "Analytics": True}}
    assert [h["categoryPreferences"].get("Advertising") for h in c[CONSENT_HISTORY]] == [
        True,
        True,
        False,
    ]


def test_a_merge_keeps_the_newer_choice_of_either_profile() -> None:
    store = MemoryProfileStore()
    u = Unifier(store)
    u.apply(event("2026-03-05T10:00:00Z", {"Advertising": False}, anonymous_id="phone"))
    u.apply(event("2026-03-01T10:00:00Z", {"Advertising": True}, user_id="b"))
    u.apply(event("2026-03-01T11:00:00Z", None, user_id="b", anonymous_id="phone"))
    c = consent_of(store, "b")
    assert c[CONSENT] == {"categoryPreferences": {"Advertising": False}}
    assert len(c[CONSENT_HISTORY]) == 2


def test_audiences_can_require_consent() -> None:
    doc = {
        "audiences": [
            {"name": "ads_ok", "condition": {"consent": "Advertising"}},
            {"name": "ads_refused", "condition": {"consent": "Advertising", "granted": False}},
        ]
    }
    engine = Engine(AudienceCatalog.of(parse_document(doc)))
    granted = {CONSENT: {"categoryPreferences": {"Advertising": True}}}
    refused = {CONSENT: {"categoryPreferences": {"Advertising": False}}}
    assert engine.evaluate({}, granted, 0).computed["audiences"] == ["ads_ok"]
    assert engine.evaluate({}, refused, 0).computed["audiences"] == ["ads_refused"]
    assert engine.evaluate({}, {}, 0).computed["audiences"] == []


def test_change_records_carry_the_profiles_consent_to_destinations() -> None:
    store = MemoryProfileStore()
    u = Unifier(store)
    u.apply(event("2026-03-01T10:00:00Z", {"Advertising": True}, user_id="c"))
    pid = store.lookup("user_id", "c")
    assert pid is not None
    before = store.get(pid)
    assert before is not None
    entered = records(before, [ComputedChange("audience_entered", "vip")], 0, "event")[0]
    item = read_change(entered.value)
    assert item is not None and consent_allows(frozenset({"Advertising"}), item.consent)
    # Revoked on the next event: the next change is not for advertising destinations.
    u.apply(event("2026-03-01T11:00:00Z", {"Advertising": False}, user_id="c"))
    after = store.get(pid)
    assert after is not None
    exited = records(after, [ComputedChange("audience_exited", "vip")], 0, "event")[0]
    item = read_change(exited.value)
    assert item is not None and not consent_allows(frozenset({"Advertising"}), item.consent)
