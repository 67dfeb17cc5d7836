"""Erasing a person from a running embedded Clew (collector over HTTP, every stage in threads):
a person seen on two devices with an email and a user id, mixed with other people, forwarded
to webhook destinations. After whole-person erasure nothing of them is left anywhere, everyone
else's data is as it was, and an opted-in destination got a signed deletion notice; a
time-range erasure removes only the events in the range and keeps the profile."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from _support import WRITE_KEY, drained, make_settings, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.config import Settings
from clew.destinations import DestinationConfig, DestinationDirectory, destinations_dir
from clew.identity import Identifier, profile_id_for
from clew.lake.query import Lake
from clew.lake.tables import CUSTOMER_PROFILES_SCHEMA, IDENTITIES_SCHEMA
from clew.log.base import Log
from clew.privacy._erase_match import Matcher
from clew.privacy.erase import Subject, erase, resolve_person, resolve_subject
from clew.privacy.verify import verify
from clew.store import SQLiteProfileStore
from destinations._receiver import Receiver

SECRET = "notice-secret"
ADA_EMAIL = "ada.lovelace@analytical.test"
ADA_USER = "user-ada-1815"
ADA_PHONE_ANON = "anon-ada-phone-7f3a"
ADA_LAPTOP_ANON = "anon-ada-laptop-91c2"
BOB_USER = "user-bob-2001"
CY_ANON = "anon-cy-tablet-5e1d"


def _day(day: int, hour: int = 10) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:00:00.000Z"


def _track(who: dict[str, str], mid: str, day: int, **extra: Any) -> dict[str, Any]:
    base = {"type": "track", "event": "Product Viewed", "messageId": mid, "timestamp": _day(day)}
    return base | who | extra


def _story() -> list[list[dict[str, Any]]]:
    """The requests sent, in order: Ada browses on her phone and laptop over three days, then
    identifies on both (which merges the two devices); Bob and Cy do their own things, and one
    request carries Ada's and Bob's events together."""
    phone, laptop = {"anonymousId": ADA_PHONE_ANON}, {"anonymousId": ADA_LAPTOP_ANON}
    bob, cy = {"userId": BOB_USER}, {"anonymousId": CY_ANON}
    ada_id = {"userId": ADA_USER, "traits": {"email": "Ada.Lovelace@Analytical.test"}}
    return [
        [_track(phone, f"ada-p{d}", d) for d in (1, 2, 3)],
        [_track(laptop, f"ada-l{d}", d) for d in (1, 2, 3)],
        [_track(bob, f"bob-{d}", d) for d in (1, 2, 3, 5)] + [_track(cy, "cy-1", 2)],
        [{"type": "identify", "messageId": "ada-id1", "timestamp": _day(3, 11)} | phone | ada_id],
        [{"type": "identify", "messageId": "ada-id2", "timestamp": _day(3, 12)} | laptop | ada_id],
        # A mixed request: one raw record holding two people's events.
        [_track({"userId": ADA_USER}, "ada-mixed", 2), _track(bob, "bob-mixed", 2)],
        # Dead letters (an unreadable timestamp), one each.
        [_track({"userId": ADA_USER}, "ada-bad", 1, timestamp="yesterday")],
        [_track(bob, "bob-bad", 1, timestamp="yesterday")],
    ]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def hooks() -> Iterator[tuple[Receiver, Receiver]]:
    made = (Receiver().start(), Receiver().start())
    yield made
    for r in made:
        r.stop()


@pytest.fixture
def running(settings: Settings, hooks: tuple[Receiver, Receiver]) -> Iterator[BackgroundServer]:
    crm, ads = hooks
    directory = DestinationDirectory(destinations_dir(settings.data_dir))
    fast = {"max_batch_wait_ms": 100, "retry_initial_s": 0.05}
    directory.save(
        DestinationConfig(name="crm", url=crm.url, secret=SECRET, deletion_notices=True, **fast)
    )
    directory.save(DestinationConfig(name="ads", url=ads.url, **fast))
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("tests", WRITE_KEY)
        for batch in _story():
            r = httpx.post(server.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
            assert r.status_code == 200, r.text
        events = sum(len(b) for b in _story()) - 2  # the two dead letters are not forwarded
        wait_for(lambda: len(crm.events()) == events and len(ads.events()) == events, 30)
        wait_for(lambda: drained(server.url) and _lake(settings, "dlq") == 2, 30)
        wait_for(lambda: _lake(settings, "customer_profiles") == 3, 30)
        yield server


def _lake(settings: Settings, table: str, where: str = "true") -> int:
    return int(
        Lake(settings.lake_path).sql(f"SELECT count(*) FROM {table} WHERE {where}").rows[0][0]
    )


def _subject(store: SQLiteProfileStore, id_type: str, value: str) -> Subject:
    subject = resolve_subject(store, id_type, value)
    assert subject.profile_ids, f"no profile holds {id_type}:{value}"
    return subject


def _log_counts(settings: Settings, log: Log, subject: Subject) -> dict[str, int]:
    matcher = Matcher(subject, settings.identity.rules)
    out = {}
    for topic, spec in log.topics().items():
        n = 0
        for p in range(spec.partitions):
            for rec in log.read(topic, p, 0, 100_000):
                n += bool(matcher.raw(rec)[0]) if topic == "raw" else matcher.record(rec)
        out[topic] = n
    return out


def _footprint(
    settings: Settings, server: BackgroundServer, store: SQLiteProfileStore, who: Subject
) -> dict[str, Any]:
    """What a person has in each store, to compare before and after someone else's erasure."""
    user = next(v for t, v in who.identifiers if t in ("user_id", "anonymous_id"))
    pid = who.profile_ids[0]
    profile = store.get(pid)
    assert profile is not None
    return {
        "log": _log_counts(settings, server.clew.log, who),
        "events": _lake(settings, "events", f"user_id = '{user}' OR anonymous_id = '{user}'"),
        "dlq": _lake(settings, "dlq", f"payload LIKE '%{user}%'"),
        "customer_profiles": _lake(settings, "customer_profiles", f"profile_id = '{pid}'"),
        "identities": _lake(settings, "identities", f"profile_id = '{pid}'"),
        "profile": (len(profile.identities), profile.traits, len(store.events(pid, 1000))),
    }


def test_whole_person_erasure_leaves_no_trace_and_spares_everyone_else(
    settings: Settings, running: BackgroundServer, hooks: tuple[Receiver, Receiver]
) -> None:
    crm, ads = hooks
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        ada = _subject(store, "email", "Ada.Lovelace@Analytical.test ")
        assert set(ada.identifiers) == {
            ("email", ADA_EMAIL),
            ("user_id", ADA_USER),
            ("anonymous_id", ADA_PHONE_ANON),
            ("anonymous_id", ADA_LAPTOP_ANON),
        }
        # Each device's profile was merged into the profile of Ada's user id.
        assert set(ada.profile_ids) == {
            profile_id_for(Identifier(t, v))
            for t, v in [
                ("user_id", ADA_USER),
                ("anonymous_id", ADA_PHONE_ANON),
                ("anonymous_id", ADA_LAPTOP_ANON),
            ]
        }
        others = [_subject(store, "user_id", BOB_USER), _subject(store, "anonymous_id", CY_ANON)]
        before = [_footprint(settings, running, store, o) for o in others]
        assert before[0]["log"]["raw"] == 3 and before[0]["events"] == 5
        found = verify(settings, ada, store=store, log=running.clew.log)
        assert {t.store for t in found.traces} >= {"log", "sqlite", "lake", "serving store"}
        values = [v for _, v in ada.identifiers] + list(ada.profile_ids)
        assert not [t for t in found.traces if any(v in t.where for v in values)]

        report = erase(settings, ada, store=store, log=running.clew.log)

        assert report.ok, report.stores
        assert not [v for v in values if v in repr(report)], "the report names no one"
        by_store = {s.store: s for s in report.stores}
        assert by_store["log"].removed >= 15
        assert by_store["lake"].removed >= 9 + 1 + 1, by_store["lake"].detail
        # Ada's three event days and one dead-letter day; not Bob's day 5.
        assert "4 partition(s) rewritten, 16 row(s) read" in by_store["lake"].detail
        assert by_store["serving store"].removed == 1
        assert by_store["deletion notices"].removed == 1

        result = verify(settings, ada, store=store, log=running.clew.log)
        assert result.clean, result.traces
        assert any("SQLite" in c for c in result.checked)

        after = [_footprint(settings, running, store, o) for o in others]
        # Bob's mixed raw record also held Ada's events: raw records are deleted whole.
        before[0]["log"]["raw"] -= 1
        assert after == before

        notices = [r for r in crm.requests if r.headers.get("x-clew-notice") == "deletion"]
        assert len(notices) == 1
        body = json.loads(notices[0].body)
        assert {(i["type"], i["value"]) for i in body["identifiers"]} == set(ada.identifiers)
        assert sorted(body["profileIds"]) == sorted(ada.profile_ids)
        signature = hmac.new(SECRET.encode(), notices[0].body, hashlib.sha256).hexdigest()
        assert notices[0].headers["x-clew-signature"] == f"sha256={signature}"
        assert not [r for r in ads.requests if r.headers.get("x-clew-notice")]
    finally:
        store.close()


def test_time_range_erasure_keeps_the_profile_and_other_events(
    settings: Settings, running: BackgroundServer, hooks: tuple[Receiver, Receiver]
) -> None:
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        ada = _subject(store, "user_id", ADA_USER)
        bob = _subject(store, "user_id", BOB_USER)
        bob_before = _footprint(settings, running, store, bob)
        ada_ids = (
            f"anonymous_id IN ('{ADA_PHONE_ANON}', '{ADA_LAPTOP_ANON}') OR user_id = '{ADA_USER}'"
        )
        day2 = "event_date = DATE '2026-03-02'"
        assert _lake(settings, "events", f"({ada_ids}) AND {day2}") == 3

        since, until = 1_772_409_600_000, 1_772_496_000_000  # 2026-03-02T00:00Z .. 03-03
        report = erase(
            settings, ada, store=store, log=running.clew.log, since_ms=since, until_ms=until
        )

        assert report.ok, report.stores
        assert {s.store for s in report.stores} == {
            "log",
            "serving store",
            "lake",
            "destinations outbox",
        }
        lake = next(s for s in report.stores if s.store == "lake")
        # Day 2's events and the dead letters' day, of Ada's three event days.
        assert "1 partition(s) rewritten, 8 row(s) read" in lake.detail, lake.detail
        assert _lake(settings, "events", f"({ada_ids}) AND {day2}") == 0
        assert _lake(settings, "events", f"({ada_ids}) AND NOT {day2}") == 6
        profile = store.get(ada.profile_ids[0])
        assert profile is not None and len(profile.identities) == 4, "the profile stays"
        history = store.events(ada.profile_ids[0], 100)
        assert history and all(not since <= e.time_ms < until for e in history)
        assert _lake(settings, "customer_profiles", f"profile_id = '{ada.profile_ids[0]}'") == 1
        assert _log_counts(settings, running.clew.log, ada)["events"] == 9 - 3
        bob_before["log"]["raw"] -= 1  # the mixed request held an Ada event of day 2
        assert _footprint(settings, running, store, bob) == bob_before
        assert not any(r.headers.get("x-clew-notice") for h in hooks for r in h.requests)
    finally:
        store.close()


def test_a_refused_notice_is_retried_then_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    crm = Receiver(script=[(503, {}), (500, {}), (500, {})]).start()
    try:
        DestinationDirectory(destinations_dir(settings.data_dir)).save(
            DestinationConfig(name="crm", url=crm.url, deletion_notices=True)
        )
        log = open_log(settings)
        store = SQLiteProfileStore(settings.profiles_path)
        try:
            ada = Subject(("p-ada",), (("email", ADA_EMAIL),))
            report = erase(settings, ada, store=store, log=log)
        finally:
            store.close()
            log.close()
    finally:
        crm.stop()
    notices = next(s for s in report.stores if s.store == "deletion notices")
    assert not report.ok and notices.removed == 0
    assert notices.error == "crm: HTTP 500"
    assert len(crm.requests) == 3
    assert len({r.headers["x-clew-delivery"] for r in crm.requests}) == 1, "one notice id"


def test_the_lake_links_a_person_whose_profile_graph_is_gone(tmp_path: Path) -> None:
    """The serving store no longer knows Ada (a deletion's first attempt removed her profile);
    the lake's profile tables still link her identifiers and her merged-away profile."""
    settings = make_settings(tmp_path / "data")
    lake = settings.lake_location
    rows = [
        ("email", ADA_EMAIL, "p-ada"),
        ("user_id", ADA_USER, "p-ada"),
        ("anonymous_id", ADA_PHONE_ANON, "p-ada"),
        ("user_id", BOB_USER, "p-bob"),
    ]
    identities = [{"id_type": t, "value": v, "profile_id": p} for t, v, p in rows]
    write_deltalake(
        str(lake.table("identities")), pa.Table.from_pylist(identities, IDENTITIES_SCHEMA)
    )
    profiles = [
        {"profile_id": "p-ada", "merged_ids": ["p-ada-laptop"]},
        {"profile_id": "p-bob", "merged_ids": []},
    ]
    write_deltalake(
        str(lake.table("customer_profiles")),
        pa.Table.from_pylist(profiles, CUSTOMER_PROFILES_SCHEMA),
    )
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        ada = resolve_person(settings, store, "user_id", ADA_USER)
        nobody = resolve_person(settings, store, "user_id", "user-unknown-1")
    finally:
        store.close()
    assert set(ada.identifiers) == {
        ("email", ADA_EMAIL),
        ("user_id", ADA_USER),
        ("anonymous_id", ADA_PHONE_ANON),
    }
    assert set(ada.profile_ids) == {"p-ada", "p-ada-laptop"}
    assert nobody == Subject((), (("user_id", "user-unknown-1"),))
