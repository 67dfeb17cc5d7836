"""The validate stage drops events of a suppressed person that were already in the log when
the suppression began: not in ``events``, not in the dead-letter queue, counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from clew.dedup import DedupIndex
from clew.identity.rules import IdentityRules
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.privacy._salt import identifier_hash
from clew.privacy.suppression import SuppressedHash, Suppression, SuppressionList
from clew.stages._counters import CounterStore
from clew.stages.validate import DLQ_TOPIC, EVENTS_TOPIC, ValidateStage

SALT = b"salt"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in ("raw", EVENTS_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


def append(log: EmbeddedLog, body: dict[str, Any], path_type: str = "batch") -> None:
    headers = (("source", b"src_1"), ("type", path_type.encode()), ("request_id", b"r"))
    log.append_sync("raw", [Message(value=orjson.dumps(body), headers=headers)])


def docs(log: EmbeddedLog, topic: str) -> list[dict[str, Any]]:
    out = []
    for partition in log.end_offsets(topic):
        out.extend(orjson.loads(r.value) for r in log.read(topic, partition, 0, 10_000))
    return out


def run(log: EmbeddedLog, stage: ValidateStage) -> None:
    consumer = log.consumer(stage.group, list(stage.topics))
    try:
        while records := consumer.poll(1000, 0.2):
            stage.handle(records, consumer)
    finally:
        consumer.close()


def test_in_flight_events_of_a_suppressed_person_are_dropped_and_counted(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    events = [
        {"type": "track", "event": "Viewed", "userId": "ada", "messageId": "1"},
        {
            "type": "identify",
            "anonymousId": "dev-9",
            "traits": {"email": "Ada@X.test"},
            "messageId": "2",
        },
        {"type": "track", "event": "Viewed", "userId": "bob", "messageId": "3"},
        # Would be dead-lettered (no event name), but it is Ada's: nothing of it is kept.
        {"type": "track", "userId": "ada", "messageId": "4"},
    ]
    append(log, {"batch": events})
    append(log, {"userId": "ada", "event": "Signed Up", "messageId": "5"}, "track")
    suppressions = SuppressionList(tmp_path / "privacy.db")
    suppressions.add(
        "r1",
        [
            SuppressedHash("user_id", identifier_hash(SALT, "user_id", "ada")),
            SuppressedHash("email", identifier_hash(SALT, "email", "ada@x.test")),
        ],
        temporary=False,
    )
    suppression = Suppression(tmp_path / "privacy.db", SALT, IdentityRules())
    counters = CounterStore(tmp_path / "state.db")
    dedup = DedupIndex(tmp_path / "state.db")
    stage = ValidateStage(dedup, counter_store=counters, suppression=suppression)
    try:
        run(log, stage)
        stage.close(None)  # type: ignore[arg-type]
        assert [d["messageId"] for d in docs(log, EVENTS_TOPIC)] == ["3"]
        assert docs(log, DLQ_TOPIC) == []
        assert stage.counters["suppressed"] == 4
        assert counters.read("validate")["suppressed"] == 4

        # Unsuppressed: Ada's next events pass again.
        suppressions.lift_request("r1")
        suppression.refresh(force=True)
        append(log, {"userId": "ada", "event": "Came Back", "messageId": "6"}, "track")
        run(log, stage)
        assert sorted(d["messageId"] for d in docs(log, EVENTS_TOPIC)) == ["3", "6"]
    finally:
        suppression.close()
        suppressions.close()
        counters.close()
        dedup.close()
