"""`clew identity explain` and `clew identity split` against a running Clew: a family shares
one (real, non-placeholder) email address, so two people's profiles were merged; the operator
sees why, splits one device off, and each person keeps their own orders from then on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from typer.testing import CliRunner, Result

from _support import WRITE_KEY, lake_count, make_settings, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.batch.split import split_profile
from clew.cli import app
from clew.config import Settings
from clew.events import Event
from clew.identity import Identifier, profile_id_for
from clew.identity.changes import ProfileChange, ProfileDeleted, decode_change
from clew.lake.query import Lake
from clew.log.base import Message
from clew.stages.runner import StageRunner
from clew.stages.workers import build_stage
from clew.store import Profile, SQLiteProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC, RAW_TOPIC

runner = CliRunner()

FAMILY = "family@home.test"


def page(mid: str, anon: str, ts: str) -> dict[str, Any]:
    return {"type": "page", "name": "Home", "anonymousId": anon, "messageId": mid, "timestamp": ts}


def order(mid: str, anon: str, ts: str, revenue: float) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "anonymousId": anon,
        "messageId": mid,
        "timestamp": ts,
        "properties": {"revenue": revenue},
    }


def identify(mid: str, anon: str, ts: str, email: str, name: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "anonymousId": anon,
        "messageId": mid,
        "timestamp": ts,
        "traits": {"email": email, "name": name},
    }


# Alex shops on the laptop, Billie on the tablet; both sign up with the family's address.
ALEX = [
    page("m-a1", "laptop", "2026-03-01T10:00:00Z"),
    order("m-a2", "laptop", "2026-03-01T10:05:00Z", 30.0),
    identify("m-a3", "laptop", "2026-03-01T10:10:00Z", "Family@Home.test", "Alex"),
]
BILLIE = [
    page("m-b1", "tablet", "2026-03-01T11:00:00Z"),
    order("m-b2", "tablet", "2026-03-01T11:05:00Z", 50.0),
    identify("m-b3", "tablet", "2026-03-01T11:10:00Z", FAMILY, "Billie"),
]


def send(server: BackgroundServer, *events: dict[str, Any]) -> None:
    response = httpx.post(
        f"{server.url}/v1/batch", json={"batch": list(events)}, auth=(WRITE_KEY, ""), timeout=10
    )
    assert response.status_code == 200, response.text


def clew(settings: Settings, *args: str) -> Result:
    # Wide enough that tables do not wrap identifiers and message ids.
    return runner.invoke(app, [*args, "--data-dir", str(settings.data_dir)], env={"COLUMNS": "200"})


def clew_json(settings: Settings, *args: str) -> Any:
    result = clew(settings, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def applied(server: BackgroundServer) -> bool:
    """Everything sent so far is validated and applied to profiles (whatever the lake does)."""
    log = server.clew.log
    return (
        log.lag("validate", RAW_TOPIC).total == 0 and log.lag("profiles", EVENTS_TOPIC).total == 0
    )


def stage(server: BackgroundServer, group: str) -> StageRunner:
    return next(r for r in server.clew.runners if r.stage.group == group)


def profile_of(settings: Settings, id_type: str, value: str) -> Profile | None:
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        pid = store.lookup(id_type, value)
        return store.get(pid) if pid is not None else None
    finally:
        store.close()


def resolve(settings: Settings, profile_id: str) -> str | None:
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        return store.resolve(profile_id)
    finally:
        store.close()


def ids(profile: Profile | None) -> set[str]:
    assert profile is not None
    return {f"{e.id_type}:{e.value}" for e in profile.identities}


def ltv(profile: Profile | None) -> float:
    assert profile is not None
    return float(profile.computed.get("total_lifetime_value", 0.0))


def changes(server: BackgroundServer) -> list[ProfileChange | ProfileDeleted]:
    log = server.clew.log
    out: list[ProfileChange | ProfileDeleted] = []
    for p in log.end_offsets(CHANGES_TOPIC):
        for rec in log.read(CHANGES_TOPIC, p, 0, 100_000):
            change = decode_change(rec.value)
            if change is not None:
                out.append(change)
    return out


@pytest.fixture
def family(server: BackgroundServer) -> Iterator[BackgroundServer]:
    """Alex's and Billie's events, processed: one wrongly merged profile."""
    send(server, *ALEX)
    wait_for(server.clew.drained)
    send(server, *BILLIE)
    wait_for(server.clew.drained)
    merged = profile_of(server.settings, "email", FAMILY)
    assert ids(merged) == {"anonymous_id:laptop", "anonymous_id:tablet", f"email:{FAMILY}"}
    assert ltv(merged) == 80.0, "both people's orders were added up in one profile"
    yield server


def test_explain_shows_the_event_behind_every_identifier_and_merge(
    family: BackgroundServer,
) -> None:
    s = family.settings
    doc = clew_json(s, "identity", "explain", "email:Family@Home.test")
    merged = profile_of(s, "email", FAMILY)
    assert merged is not None and doc["profile_id"] == merged.profile_id
    why = {r["identifier"]: r for r in doc["reasons"] if r["kind"] == "identity"}
    assert {k: why[k]["message_id"] for k in why} == {
        "anonymous_id:laptop": "m-a1",
        f"email:{FAMILY}": "m-a3",
        "anonymous_id:tablet": "m-b1",
    }
    assert all(r["source"] == "tests" and r["match_weight"] is None for r in doc["reasons"])
    assert why["anonymous_id:laptop"]["time"] == "2026-03-01T10:00:00.000Z"
    merges = {r["message_id"]: r for r in doc["reasons"] if r["kind"] == "merge"}
    # Alex's sign-up renamed the laptop's profile after the email (its most trusted
    # identifier); Billie's identify with the family email merged her tablet's profile in.
    assert set(merges) == {"m-a3", "m-b3"}
    merge = merges["m-b3"]
    assert merge["merged_profile"] == profile_id_for(Identifier("anonymous_id", "tablet"))
    times = [r["time"] for r in doc["reasons"]]
    assert times == sorted(times), "oldest first"
    # The same answer as a table, for people, by any of the profile's references.
    table = clew(s, "identity", "explain", merge["merged_profile"])
    assert table.exit_code == 0, table.output
    for text in ("m-a1", "m-a3", "m-b1", "m-b3", "merged in", "anonymous_id:tablet"):
        assert text in table.stdout


def test_split_gives_each_person_their_own_profile_and_orders(family: BackgroundServer) -> None:
    s = family.settings
    before = clew_json(s, "identity", "explain", f"email:{FAMILY}")
    old_id = before["profile_id"]
    billie_old_id = next(
        r["merged_profile"]
        for r in before["reasons"]
        if r["kind"] == "merge" and r["message_id"] == "m-b3"
    )
    seen = changes(family)

    doc = clew_json(
        s,
        "identity",
        "split",
        old_id,
        "--identifier",
        "anonymous_id:tablet",
        "--operator",
        "ops@shop.test",
    )
    assert doc["apart_from"] == f"email:{FAMILY}", "the most trusted other identifier"
    assert doc["events_replayed"] == 6 and doc["events_missing"] == 0
    by_id = {frozenset(p["identifiers"]): p for p in doc["profiles"]}
    assert set(by_id) == {
        frozenset({"anonymous_id:laptop", f"email:{FAMILY}"}),
        frozenset({"anonymous_id:tablet"}),
    }

    alex, billie = profile_of(s, "email", FAMILY), profile_of(s, "anonymous_id", "tablet")
    assert ids(alex) == {"anonymous_id:laptop", f"email:{FAMILY}"}
    assert ids(billie) == {"anonymous_id:tablet"}
    assert (ltv(alex), ltv(billie)) == (30.0, 50.0), "each keeps their own orders"
    assert alex is not None and billie is not None
    assert alex.computed["orders_count"] == billie.computed["orders_count"] == 1
    assert resolve(s, old_id) == alex.profile_id, "the old id leads to Alex only"
    assert resolve(s, billie_old_id) == billie.profile_id, "Billie's first id is hers again"

    # Changes are keyed by profile id, so they spread over the topic's partitions.
    announced = [c for c in changes(family) if c not in seen]
    snapshots = {c.profile_id: c for c in announced if isinstance(c, ProfileChange)}
    assert set(snapshots) == {alex.profile_id, billie.profile_id}
    assert {f"{i.type}:{i.value}" for i in snapshots[billie.profile_id].identities} == {
        "anonymous_id:tablet"
    }
    assert snapshots[billie.profile_id].computed["total_lifetime_value"] == 50.0
    assert_lake_customer_profiles_follow_split(
        s,
        {
            alex.profile_id: ({"anonymous_id:laptop", f"email:{FAMILY}"}, 30.0),
            billie.profile_id: ({"anonymous_id:tablet"}, 50.0),
        },
    )

    # The Profile API serves the two people apart, by any of their references.
    token = family.clew.catalog.create_token("split-test")
    api: dict[str, tuple[str, float]] = {}
    for ref in (f"email:{FAMILY}", "anonymous_id:laptop", "anonymous_id:tablet", old_id):
        got = httpx.get(
            family.url + f"/v1/profiles/{ref if ':' in ref else 'profile_id:' + ref}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert got.status_code == 200, got.text
        body = got.json()
        api[ref] = (body["profile_id"], body["computed_traits"]["total_lifetime_value"])
    assert api[f"email:{FAMILY}"] == api["anonymous_id:laptop"] == (alex.profile_id, 30.0)
    assert api["anonymous_id:tablet"] == (billie.profile_id, 50.0)
    assert api[old_id] == (alex.profile_id, 30.0)

    # Billie identifies again with the family address and orders: the live profiles stage
    # keeps the two apart (the tablet loses the conflict) and her order stays hers.
    send(
        family,
        identify("m-b4", "tablet", "2026-03-02T09:00:00Z", FAMILY, "Billie"),
        order("m-b5", "tablet", "2026-03-02T09:05:00Z", 5.0),
    )
    wait_for(family.clew.drained)
    alex, billie = profile_of(s, "email", FAMILY), profile_of(s, "anonymous_id", "tablet")
    assert ids(alex) == {"anonymous_id:laptop", f"email:{FAMILY}"}
    assert ids(billie) == {"anonymous_id:tablet"}
    assert (ltv(alex), ltv(billie)) == (30.0, 55.0)

    after = clew_json(s, "identity", "explain", "anonymous_id:laptop")
    assert after["separations"] == [
        {
            "identifier": "anonymous_id:tablet",
            "apart_from": f"email:{FAMILY}",
            "by": "operator:ops@shop.test",
            "time": after["separations"][0]["time"],
        }
    ]


def assert_lake_customer_profiles_follow_split(
    settings: Settings, expected: dict[str, tuple[set[str], float]]
) -> None:
    """The lake's ``customer_profiles`` table, which the profiles-lake stage builds from the
    ``changes`` records the caller asserted: each re-derived profile's row shows its own
    identifiers and lifetime value."""
    lake = Lake(settings.lake_path)

    def rows() -> dict[str, tuple[set[str], float]]:
        result = lake.sql(
            "SELECT profile_id, identifiers, total_lifetime_value FROM customer_profiles"
        )
        return {pid: (set(idents), value) for pid, idents, value in result.rows}

    wait_for(lambda: rows() == expected)


def test_split_refuses_wrong_references_and_leaves_the_profile_alone(
    family: BackgroundServer,
) -> None:
    s = family.settings
    send(family, page("m-c1", "phone-c", "2026-03-01T12:00:00Z"))
    wait_for(family.clew.drained)
    cases = [
        (
            ["identity", "explain", "email:stranger@home.test"],
            "no profile holds the identifier email:stranger@home.test",
        ),
        (
            ["identity", "split", "no-such-profile", "--identifier", "anonymous_id:tablet"],
            "no profile has the id 'no-such-profile'",
        ),
        (
            ["identity", "split", f"email:{FAMILY}", "--identifier", "anonymous_id:phone-c"],
            "anonymous_id:phone-c is not an identifier of profile",
        ),
        (
            ["identity", "split", "anonymous_id:phone-c", "--identifier", "anonymous_id:phone-c"],
            "is the only identifier of profile",
        ),
        (
            ["identity", "split", f"email:{FAMILY}", "--identifier", "tablet"],
            "is not an identifier; write it as id_type:value",
        ),
    ]
    for args, message in cases:
        result = clew(s, *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
    assert ltv(profile_of(s, "email", FAMILY)) == 80.0, "nothing was split"


def test_split_reads_events_the_lake_lacks_from_the_log_and_refuses_lost_ones(
    family: BackgroundServer,
) -> None:
    s = family.settings
    stage(family, "lake").stop()
    send(family, order("m-b6", "tablet", "2026-03-01T12:00:00Z", 7.0))
    send(family, order("m-b7", "tablet", "2026-03-01T12:30:00Z", 11.0))
    wait_for(lambda: applied(family))
    assert ltv(profile_of(s, "email", FAMILY)) == 98.0
    assert lake_count(s.data_dir, where="message_id IN ('m-b6', 'm-b7')") == 0
    # The log loses one of the two before the lake has it (as retention would).
    removed = family.clew.log.delete_where(EVENTS_TOPIC, lambda r: b'"m-b7"' in r.value)
    assert removed == 1

    args = ["identity", "split", f"email:{FAMILY}", "--identifier", "anonymous_id:tablet"]
    refused = clew(s, *args)
    assert refused.exit_code == 1, refused.output
    assert "not in the lake yet and no longer in the log" in " ".join(refused.stderr.split())
    assert "--force" in refused.stderr
    assert ltv(profile_of(s, "email", FAMILY)) == 98.0, "nothing was split"

    doc = clew_json(s, *args, "--force")
    assert (doc["events_from_log"], doc["events_missing"]) == (1, 1)
    assert ltv(profile_of(s, "anonymous_id", "tablet")) == 57.0, "50 + 7 read from the log"
    assert ltv(profile_of(s, "email", FAMILY)) == 30.0


def test_events_the_profiles_stage_has_not_applied_are_left_to_it(
    family: BackgroundServer,
) -> None:
    s = family.settings
    stage(family, "profiles").stop()
    send(family, order("m-b8", "tablet", "2026-03-01T13:00:00Z", 13.0))
    wait_for(lambda: lake_count(s.data_dir, where="message_id = 'm-b8'") == 1)

    doc = clew_json(
        s, "identity", "split", f"email:{FAMILY}", "--identifier", "anonymous_id:tablet"
    )
    assert doc["events_pending"] == 1
    assert ltv(profile_of(s, "anonymous_id", "tablet")) == 50.0

    profiles, closers = build_stage("profiles", s)
    resumed = StageRunner(family.clew.log, profiles)
    resumed.start()
    try:
        wait_for(lambda: applied(family))
    finally:
        resumed.stop()
        for close in closers:
            close()
    assert ltv(profile_of(s, "anonymous_id", "tablet")) == 63.0, "applied once, not twice"
    assert ltv(profile_of(s, "email", FAMILY)) == 30.0


def test_identifiers_other_profiles_own_stay_with_them(tmp_path: Path) -> None:
    """Without a server or a lake (every event is read from the log): an event of the split
    profile that also carried another person's user id (dropped live by the one-user-id
    rule) does not take that person's profile over when it is replayed."""
    settings = make_settings(tmp_path / "data")
    log = open_log(settings)
    store = SQLiteProfileStore(settings.profiles_path)
    profiles, closers = build_stage("profiles", settings)

    def run(*events: Event) -> None:
        log.append_sync(
            EVENTS_TOPIC, [Message(msgspec.json.encode(e), key=e.identity_key) for e in events]
        )
        consumer = log.consumer(profiles.group, profiles.topics)
        profiles.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(500, timeout_s=0.2):
            profiles.handle(records, consumer)
        consumer.close()

    def ev(mid: str, ts: str, **fields: Any) -> Event:
        return Event(
            type="identify", message_id=mid, timestamp=ts, received_at=ts, source_id="web", **fields
        )

    try:
        run(
            ev("m1", "2026-03-01T10:00:00Z", user_id="u1", anonymous_id="pc"),
            ev("m2", "2026-03-01T10:05:00Z", user_id="u2", anonymous_id="pc"),
            ev("m3", "2026-03-01T10:10:00Z", anonymous_id="phone", traits={"email": FAMILY}),
            ev("m4", "2026-03-01T10:15:00Z", anonymous_id="pc", traits={"email": FAMILY}),
        )
        other = store.get(store.lookup("user_id", "u2") or "")
        assert other is not None and ids(other) == {"user_id:u2"}
        merged = store.get(store.lookup("user_id", "u1") or "")
        assert ids(merged) == {
            "user_id:u1",
            "anonymous_id:pc",
            "anonymous_id:phone",
            f"email:{FAMILY}",
        }

        result = split_profile(
            settings, "user_id:u1", Identifier("anonymous_id", "phone"), "ops", store=store, log=log
        )
        assert result.anchor == Identifier("user_id", "u1")
        assert result.events_from_log == 4 and result.events_missing == 0
        assert store.get(other.profile_id) == other, "the other person's profile is untouched"
        # The email was first given on the phone, so it stays with the phone: the later
        # event that carried it with the pc loses the pc (kept apart from u1).
        assert {frozenset(ids(p)) for p in result.profiles} == {
            frozenset({"user_id:u1", "anonymous_id:pc"}),
            frozenset({"anonymous_id:phone", f"email:{FAMILY}"}),
        }
        assert result.unplaced == ()
    finally:
        for close in closers:
            close()
        store.close()
        log.close()


SPLIT_DOC = Path(__file__).resolve().parents[2] / "docs" / "identity-split.md"


def walkthrough() -> tuple[dict[str, Any], list[list[str]]]:
    """The walkthrough's ``family.json`` and its commands, as docs/identity-split.md shows
    them."""
    text = SPLIT_DOC.read_text().split("## A walkthrough", 1)[1].split("\n## ", 1)[0]
    batch = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    assert "-d @family.json" in text and "/v1/batch" in text
    commands = [
        c.replace("\n", " ").split()[1:] for c in text.split("`") if c.startswith("clew identity ")
    ]
    return batch, commands


def test_the_walkthrough_works_as_written(server: BackgroundServer) -> None:
    """docs/identity-split.md's walkthrough, run literally: its events, its two commands,
    and what it says they show."""
    s = server.settings
    batch, commands = walkthrough()
    assert [c[:2] for c in commands] == [["identity", "explain"], ["identity", "split"]]
    send(server, *batch["batch"])
    wait_for(server.clew.drained)

    explained = clew_json(s, *commands[0])
    held = {r["identifier"] for r in explained["reasons"] if r["kind"] == "identity"}
    assert held == {"anonymous_id:laptop", f"email:{FAMILY}", "anonymous_id:tablet-7"}
    assert [r["message_id"] for r in explained["reasons"] if r["kind"] == "merge"][-1] == "kid-2"
    assert ltv(profile_of(s, "email", FAMILY)) == 80.0

    split = clew(s, *commands[1])
    assert split.exit_code == 0, split.output
    assert "no profile holds" not in split.output
    wait_for(server.clew.drained)
    mum, kid = profile_of(s, "email", FAMILY), profile_of(s, "anonymous_id", "tablet-7")
    assert ids(mum) == {"anonymous_id:laptop", f"email:{FAMILY}"}
    assert ids(kid) == {"anonymous_id:tablet-7"}
    assert (ltv(mum), ltv(kid)) == (30.0, 50.0)
    assert mum is not None and kid is not None
    assert (mum.traits.get("name"), kid.traits.get("name")) == ("Kid", None), "as documented"

    correction = {"type": "identify", "anonymousId": "laptop", "traits": {"name": "Mum"}}
    send(server, {**correction, "messageId": "mum-4", "timestamp": "2026-03-02T09:00:00Z"})
    wait_for(server.clew.drained)
    mum = profile_of(s, "email", FAMILY)
    assert mum is not None and mum.traits["name"] == "Mum"


def test_explain_says_a_placeholder_is_never_an_identifier(server: BackgroundServer) -> None:
    send(server, identify("m-p1", "phone-p", "2026-03-01T10:00:00Z", "ada@example.com", "Ada"))
    wait_for(server.clew.drained)
    out = clew(server.settings, "identity", "explain", "email:Ada@Example.com")
    assert out.exit_code == 1
    assert " ".join(out.stderr.split()) == (
        "error: email:ada@example.com is a placeholder (DEFAULT_BLOCKED_EMAILS, always "
        "blocked): never an identifier, so events carrying it are resolved without it and no "
        "profile holds it; look the person up by another identifier"
    )
    assert profile_of(server.settings, "anonymous_id", "phone-p") is not None


def user(mid: str, user_id: str, anon: str, ts: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user_id,
        "anonymousId": anon,
        "messageId": mid,
        "timestamp": ts,
        "traits": {"name": user_id},
    }


def test_explain_lists_an_identifier_a_rule_refused_with_the_profile_holding_it(
    server: BackgroundServer,
) -> None:
    # One family computer, two accounts: a profile holds one user id, so the second
    # account's profile cannot take the computer's anonymous id.
    send(server, user("pc-1", "u-mum", "family-pc", "2026-03-01T10:00:00Z"))
    wait_for(server.clew.drained)
    send(server, user("pc-2", "u-kid", "family-pc", "2026-03-01T11:00:00Z"))
    wait_for(server.clew.drained)
    mum = profile_of(server.settings, "user_id", "u-mum")
    assert ids(mum) == {"user_id:u-mum", "anonymous_id:family-pc"} and mum is not None
    kid = clew_json(server.settings, "identity", "explain", "user_id:u-kid")
    reason = (
        f"held by profile {mum.profile_id}; refused by an identity rule (a limit or a "
        "separation) here"
    )
    assert kid["dropped"] == [
        {"identifier": "anonymous_id:family-pc", "reason": reason, "message_id": "pc-2"}
    ]
    assert kid["history_full"] is False
    assert clew_json(server.settings, "identity", "explain", "user_id:u-mum")["dropped"] == []
    table = clew(server.settings, "identity", "explain", "user_id:u-kid")
    assert table.exit_code == 0, table.output
    assert "Dropped (carried by its recent events, not held by this profile):" in table.stdout
    assert "anonymous_id:family-pc" in table.stdout and mum.profile_id in table.stdout


def test_explain_lists_a_placeholder_its_events_carried_with_the_rule(
    server: BackgroundServer,
) -> None:
    send(server, identify("m-q1", "phone-q", "2026-03-01T10:00:00Z", "Ada@Example.com", "Ada"))
    wait_for(server.clew.drained)
    doc = clew_json(server.settings, "identity", "explain", "anonymous_id:phone-q")
    assert doc["dropped"] == [
        {
            "identifier": "email:ada@example.com",
            "reason": "blocked value (placeholder, not an id): DEFAULT_BLOCKED_EMAILS, always "
            "blocked",
            "message_id": "m-q1",
        }
    ]


def test_explain_says_when_it_read_a_full_history(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text("[identity]\nhistory = 2\n")
    settings = make_settings(tmp_path / "data")
    settings = settings.model_copy(
        update={"identity": settings.identity.model_copy(update={"history": 2})}
    )
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        send(srv, *(page(f"h-{i}", "kiosk", f"2026-03-01T10:0{i}:00Z") for i in range(3)))
        wait_for(srv.clew.drained)
        args = ("identity", "explain", "anonymous_id:kiosk", "--config", str(config))
        doc = clew_json(settings, *args)
        table = clew(settings, *args)
    assert doc["history_full"] is True and doc["dropped"] == []
    assert "only the profile's 2 most recent events were read (identity.history)" in " ".join(
        table.stdout.split()
    )
