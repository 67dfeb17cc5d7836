from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from clew.events import Event
from clew.identity import (
    CustomIdType,
    Dropped,
    Identifier,
    IdentityRules,
    IdTypeRule,
    extract,
)


def event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "type": "identify",
        "message_id": "m1",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "received_at": "2026-01-01T00:00:00.000Z",
        "source_id": "web",
    }
    return Event(**{**base, **fields})


def test_extracts_every_kind_of_identifier() -> None:
    ex = extract(
        event(
            user_id="u1",
            anonymous_id="a1",
            traits={"email": "  Ada@Example.IO ", "phone": "+44 20 7946 0958"},
            context={"externalIds": [{"id": "cus_123", "type": "stripe_id"}]},
            properties={"loyalty_id": "L-77"},
        ),
        IdentityRules(),
    )
    assert set(ex.identifiers) == {
        Identifier("user_id", "u1"),
        Identifier("anonymous_id", "a1"),
        Identifier("email", "ada@example.io"),
        Identifier("phone", "+442079460958"),
        Identifier("stripe_id", "cus_123"),
        Identifier("loyalty_id", "L-77"),
    }
    assert ex.dropped == ()


def test_email_from_context_traits_and_no_gmail_rewriting() -> None:
    ex = extract(
        event(anonymous_id="a1", context={"traits": {"email": "J.Doe+shop@Gmail.com"}}),
        IdentityRules(),
    )
    assert Identifier("email", "j.doe+shop@gmail.com") in ex.identifiers


def test_placeholders_are_dropped_with_a_reason() -> None:
    ex = extract(
        event(
            user_id="undefined",
            anonymous_id="00000000-0000-0000-0000-000000000000",
            traits={"email": "null@example.com"},
            properties={"loyalty_id": "-1"},
        ),
        IdentityRules(),
    )
    assert ex.identifiers == ()
    assert {(d.id_type, d.value) for d in ex.dropped} == {
        ("user_id", "undefined"),
        ("anonymous_id", "00000000-0000-0000-0000-000000000000"),
        ("email", "null@example.com"),
        ("loyalty_id", "-1"),
    }
    assert all("blocked" in d.reason for d in ex.dropped)


@pytest.mark.parametrize(
    "email", ["test@test.com", "noemail@shop.de", "no-reply@x.org", "anyone@example.org"]
)
def test_known_placeholder_emails_are_blocked(email: str) -> None:
    assert extract(event(user_id="u1", traits={"email": email}), IdentityRules()).dropped


def test_unparseable_phone_is_dropped_and_region_is_configurable() -> None:
    ex = extract(event(user_id="u1", traits={"phone": "call me"}), IdentityRules())
    assert ex.identifiers == (Identifier("user_id", "u1"),)
    assert ex.dropped[0].id_type == "phone" and "not a phone number" in ex.dropped[0].reason

    local = event(user_id="u1", traits={"phone": "020 7946 0958"})
    assert extract(local, IdentityRules()).dropped[0].id_type == "phone"
    ex = extract(local, IdentityRules(phone_region="GB"))
    assert Identifier("phone", "+442079460958") in ex.identifiers


def test_custom_id_types_and_per_type_blocked_values() -> None:
    rules = IdentityRules(
        custom_ids=[CustomIdType(id_type="member_no", paths=["traits.club.member_no"])],
        id_types={"member_no": IdTypeRule(priority=3, blocked=[r"X+"])},
    )
    ex = extract(event(user_id="u1", traits={"club": {"member_no": 42}}), rules)
    assert Identifier("member_no", "42") in ex.identifiers
    ex = extract(event(user_id="u1", traits={"club": {"member_no": "XXX"}}), rules)
    assert ex.dropped == (Dropped("member_no", "XXX", "blocked value (placeholder, not an id)"),)


def test_alias_previous_id_takes_the_given_type() -> None:
    alias = event(type="alias", user_id="new", previous_id="old")
    ex = extract(alias, IdentityRules(), previous_id_type="anonymous_id")
    assert ex.identifiers == (Identifier("user_id", "new"), Identifier("anonymous_id", "old"))


def test_bad_rules_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="does not compile"):
        IdentityRules(blocked_values=["("])
    with pytest.raises(ValidationError, match="must start with traits"):
        CustomIdType(id_type="x", paths=["loyalty_id"])
