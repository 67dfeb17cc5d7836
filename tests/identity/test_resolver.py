from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clew.events import Event, format_time
from clew.identity import Identifier, IdentityResolver, IdentityRules, profile_id_for
from clew.store import SQLiteProfileStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteProfileStore]:
    s = SQLiteProfileStore(tmp_path / "profiles.db")
    yield s
    s.close()


@pytest.fixture
def resolver(store: SQLiteProfileStore) -> IdentityResolver:
    return IdentityResolver(store, IdentityRules())


class Events:
    """Numbered events, one minute apart unless told otherwise."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, type: str = "identify", at: datetime | None = None, **fields: Any) -> Event:
        self.n += 1
        when = format_time(at or T0 + timedelta(minutes=self.n))
        return Event(
            type=type,
            message_id=f"m{self.n}",
            timestamp=when,
            received_at=when,
            source_id="web",
            **fields,
        )


@pytest.fixture
def ev() -> Events:
    return Events()


def test_one_person_on_two_devices_ends_as_one_profile(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    phone = resolver.resolve(ev("page", anonymous_id="phone-anon")).profile_id
    laptop = resolver.resolve(ev("page", anonymous_id="laptop-anon")).profile_id
    assert phone is not None and laptop is not None and phone != laptop
    assert phone == profile_id_for(Identifier("anonymous_id", "phone-anon"))
    signup = resolver.resolve(ev(anonymous_id="laptop-anon", traits={"email": "Ada@Shop.io"}))
    # The email is now the profile's most trusted identifier: the profile takes its id, and
    # the old id keeps resolving.
    email_id = profile_id_for(Identifier("email", "ada@shop.io"))
    assert signup.profile_id == email_id and signup.merged_from == (laptop,)
    assert store.resolve(laptop) == email_id
    login = resolver.resolve(
        ev(user_id="ada-1", anonymous_id="phone-anon", traits={"email": "ada@shop.io"})
    )
    # The user id is the most trusted identifier of the merged profile, so its id is the
    # person's id, whichever device was seen first.
    assert login.profile_id == profile_id_for(Identifier("user_id", "ada-1"))
    assert set(login.merged_from) == {phone, email_id}
    assert login.attached == (Identifier("user_id", "ada-1"),)

    owner = login.profile_id
    for id_type, value in [
        ("user_id", "ada-1"),
        ("email", "ada@shop.io"),
        ("anonymous_id", "phone-anon"),
        ("anonymous_id", "laptop-anon"),
    ]:
        assert store.lookup(id_type, value) == owner
    assert store.resolve(phone) == store.resolve(laptop) == owner
    later = resolver.resolve(ev("track", event="Order Completed", anonymous_id="laptop-anon"))
    assert later.profile_id == owner and later.attached == () and later.merged_from == ()


def test_shared_computer_keeps_two_customers_apart(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    first = resolver.resolve(ev(user_id="alice", anonymous_id="family-pc")).profile_id
    second = resolver.resolve(ev(user_id="bob", anonymous_id="family-pc"))

    assert second.profile_id != first
    assert second.merged_from == ()
    # The anonymous id stays with the first customer; the second login records why not.
    assert store.lookup("anonymous_id", "family-pc") == first
    (dropped,) = second.dropped
    assert (dropped.id_type, dropped.value) == ("anonymous_id", "family-pc")
    assert "2 user_id identifiers (limit 1)" in dropped.reason
    assert store.lookup("user_id", "bob") == second.profile_id


def test_placeholder_email_never_merges_anyone(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    a = resolver.resolve(ev(anonymous_id="a", traits={"email": "null@example.com"}))
    b = resolver.resolve(ev(anonymous_id="b", traits={"email": "NULL@example.com "}))
    assert a.profile_id != b.profile_id
    assert b.merged_from == ()
    assert [d.value for d in b.dropped] == ["null@example.com"]
    assert store.lookup("email", "null@example.com") is None


def test_an_event_with_only_placeholders_resolves_to_no_profile(
    resolver: IdentityResolver, ev: Events
) -> None:
    result = resolver.resolve(ev(user_id="undefined", anonymous_id="0"))
    assert result.profile_id is None
    assert len(result.dropped) == 2


def test_at_most_five_new_emails_per_week(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    profile = None
    for i in range(5):
        result = resolver.resolve(ev(user_id="u1", traits={"email": f"e{i}@shop.io"}))
        profile = result.profile_id
        assert result.dropped == ()
    sixth = resolver.resolve(ev(user_id="u1", traits={"email": "e5@shop.io"}))
    assert sixth.profile_id == profile
    assert "6 email identifiers (limit 5 per 7 days)" in sixth.dropped[0].reason
    assert store.lookup("email", "e5@shop.io") is None

    next_week = resolver.resolve(
        ev(user_id="u1", traits={"email": "e5@shop.io"}, at=T0 + timedelta(days=8))
    )
    assert next_week.dropped == ()
    assert store.lookup("email", "e5@shop.io") == profile


def test_merge_that_would_exceed_a_limit_drops_the_least_trusted_identifier(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    alice = resolver.resolve(ev(user_id="alice", traits={"email": "alice@shop.io"})).profile_id
    bob = resolver.resolve(ev(user_id="bob", anonymous_id="bob-phone")).profile_id
    # Alice signs in by email on Bob's phone: the email is more trusted than the phone's
    # anonymous id, so the event is Alice's and the anonymous id is the one dropped.
    result = resolver.resolve(ev(anonymous_id="bob-phone", traits={"email": "alice@shop.io"}))
    assert result.profile_id == alice
    assert result.merged_from == ()
    assert [(d.id_type, d.value) for d in result.dropped] == [("anonymous_id", "bob-phone")]
    assert store.lookup("anonymous_id", "bob-phone") == bob


def test_explain_lists_identifiers_and_merges_with_their_events(
    resolver: IdentityResolver, ev: Events
) -> None:
    resolver.resolve(ev("page", anonymous_id="phone"))
    resolver.resolve(ev(anonymous_id="laptop", traits={"email": "ada@shop.io"}))
    merge = resolver.resolve(
        ev(user_id="ada", anonymous_id="phone", traits={"email": "ada@shop.io"})
    )
    assert merge.profile_id is not None

    lines = resolver.explain(merge.profile_id)
    texts = [line.text for line in lines]
    assert texts[0].startswith("anonymous_id:phone attached by event m1 from source web at 2026-")
    assert any(t.startswith("email:ada@shop.io attached by event m2") for t in texts)
    assert any(t.startswith("user_id:ada attached by event m3") for t in texts)
    merges = [line for line in lines if line.kind == "merge"]
    # m3 brought the user id: both profiles moved into the profile of that id.
    assert [m.provenance.message_id for m in merges] == ["m3", "m3"]
    assert all("merged into" in m.text for m in merges)
    assert [line.provenance.time_ms for line in lines] == sorted(
        line.provenance.time_ms for line in lines
    )


def test_alias_links_previous_id_to_user_id(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    anon = resolver.resolve(ev("page", anonymous_id="visitor-9")).profile_id
    result = resolver.resolve(ev("alias", user_id="cust-9", previous_id="visitor-9"))
    assert result.profile_id == profile_id_for(Identifier("user_id", "cust-9"))
    assert store.lookup("user_id", "cust-9") == store.resolve(anon or "") == result.profile_id

    # A previousId already known as a user id is a user id: the default limit of one user id
    # per profile keeps the two apart, and says so.
    other = resolver.resolve(ev(user_id="cust-10")).profile_id
    renamed = resolver.resolve(ev("alias", user_id="cust-10", previous_id="cust-9"))
    assert renamed.profile_id == other
    assert renamed.dropped[0].value == "cust-9"


def test_alias_across_user_ids_merges_when_the_limit_allows(
    store: SQLiteProfileStore, ev: Events
) -> None:
    rules = IdentityRules()
    rules.id_types["user_id"] = rules.id_types["user_id"].model_copy(update={"limit": 2})
    resolver = IdentityResolver(store, rules)
    old = resolver.resolve(ev(user_id="old-id")).profile_id
    result = resolver.resolve(ev("alias", user_id="new-id", previous_id="old-id"))
    # "new-id" sorts before "old-id": the profile takes the id of its canonical user id.
    assert result.profile_id == profile_id_for(Identifier("user_id", "new-id"))
    assert store.lookup("user_id", "new-id") == store.resolve(old or "") == result.profile_id


def test_replaying_an_event_changes_nothing(
    resolver: IdentityResolver, store: SQLiteProfileStore, ev: Events
) -> None:
    event = ev(user_id="u1", anonymous_id="a1", traits={"email": "u1@shop.io"})
    first = resolver.resolve(event)
    again = resolver.resolve(event)
    assert again.profile_id == first.profile_id
    assert again.attached == () and again.merged_from == () and again.dropped == ()
    profile = store.get(first.profile_id or "")
    assert profile is not None and len(profile.identities) == 3


def test_merge_cap_stops_further_merges(store: SQLiteProfileStore, ev: Events) -> None:
    resolver = IdentityResolver(store, IdentityRules(max_merges_per_profile=1))
    for anon in ("a", "b", "c"):
        resolver.resolve(ev("page", anonymous_id=anon))
    one = resolver.resolve(ev("page", anonymous_id="a", traits={"email": "x@shop.io"}))
    resolver.resolve(ev("page", anonymous_id="b", traits={"email": "x@shop.io"}))
    capped = resolver.resolve(ev("page", anonymous_id="c", traits={"email": "x@shop.io"}))
    assert capped.profile_id == one.profile_id
    assert store.lookup("anonymous_id", "c") not in (None, one.profile_id)
    assert "max_merges_per_profile 1" in capped.dropped[0].reason
