"""PII policies: hashing, truncating and dropping personal fields before an event is written
anywhere downstream."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from clew.config import Settings
from clew.dedup import DedupIndex
from clew.events import Event
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.privacy.pii import PiiPolicy, PiiPolicyError
from clew.stages.validate import DLQ_TOPIC, EVENTS_TOPIC, ValidateStage


def event(**fields: object) -> Event:
    return Event(
        type="identify",
        message_id="m1",
        timestamp="2026-03-01T10:00:00Z",
        received_at="2026-03-01T10:00:00Z",
        source_id="web",
        user_id="u1",
        **fields,  # type: ignore[arg-type]
    )


def test_each_action_on_its_path_and_nothing_else_touched() -> None:
    policy = PiiPolicy(
        {
            "context.ip": "truncate",
            "traits.phone": "drop",
            "traits.email": "hash",
            "properties.card.last4": "drop",
            "traits.name": "keep",
        },
        salt=b"secret",
    )
    original = event(
        context={"ip": "203.0.113.77", "locale": "en-GB"},
        traits={"phone": "+447700900123", "email": "ada@shop.test", "name": "Ada"},
        properties={"card": {"last4": "4242", "brand": "visa"}},
    )
    out = policy.apply(original)
    assert out.context == {"ip": "203.0.113.0", "locale": "en-GB"}
    assert "phone" not in out.traits and out.traits["name"] == "Ada"
    assert len(out.traits["email"]) == 64 and out.traits["email"] != "ada@shop.test"
    assert out.properties == {"card": {"brand": "visa"}}
    # The original event is not modified (it may be shared with other code).
    assert original.traits["phone"] == "+447700900123"


def test_hashes_are_stable_per_salt_so_a_hashed_email_still_identifies_a_person() -> None:
    a = PiiPolicy({"traits.email": "hash"}, salt=b"one")
    b = PiiPolicy({"traits.email": "hash"}, salt=b"two")
    e = event(traits={"email": "ada@shop.test"})
    assert a.apply(e).traits == a.apply(e).traits
    assert a.apply(e).traits != b.apply(e).traits


def test_an_event_without_the_fields_is_returned_as_is() -> None:
    policy = PiiPolicy({"context.ip": "truncate"}, salt=b"s")
    e = event(traits={"plan": "pro"})
    assert policy.apply(e) is e


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"ip": "drop"}, "start at one of properties, traits, context"),
        ({"context.ip": "scramble"}, "is not one of keep, hash, truncate, drop"),
        ({"context.": "drop"}, "name a field"),
    ],
)
def test_bad_policies_are_refused_with_what_to_change(rules: dict[str, str], message: str) -> None:
    with pytest.raises(PiiPolicyError, match=message):
        PiiPolicy(rules, salt=b"s")


def test_the_validate_stage_writes_only_transformed_values_to_events(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in ("raw", EVENTS_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 1))
    body = {
        "userId": "ada",
        "event": "Signed Up",
        "messageId": "1",
        "context": {"ip": "198.51.100.23"},
        "properties": {"phone": "+447700900123", "plan": "pro"},
    }
    headers = (("source", b"src_1"), ("type", b"track"), ("request_id", b"r"))
    log.append_sync("raw", [Message(value=orjson.dumps(body), headers=headers)])
    dedup = DedupIndex(tmp_path / "state.db")
    policy = PiiPolicy({"context.ip": "truncate", "properties.phone": "drop"}, salt=b"s")
    stage = ValidateStage(dedup, pii=policy)
    consumer = log.consumer(stage.group, list(stage.topics))
    try:
        while records := consumer.poll(100, 0.2):
            stage.handle(records, consumer)
        (written,) = [orjson.loads(r.value) for r in log.read(EVENTS_TOPIC, 0, 0, 10)]
        assert written["context"]["ip"] == "198.51.100.0"
        assert written["properties"] == {"plan": "pro"}
        assert b"+447700900123" not in log.read(EVENTS_TOPIC, 0, 0, 10)[0].value
    finally:
        consumer.close()
        dedup.close()
        log.close()


def test_settings_refuse_a_bad_pii_path_at_load() -> None:
    with pytest.raises(ValidationError, match="start at one of properties, traits, context"):
        Settings(privacy={"pii": {"ip": "drop"}})  # type: ignore[arg-type]
