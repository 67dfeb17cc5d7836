"""Verification and erasure on the sealed Kafka log, piece by piece, on a real broker with the
data keys in a real Redis: verification finds the person's readable records and any
identifier stored in clear; a time range cannot be shredded alone and says so; a whole-person
erasure leaves only what it could not seal away, and reports it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgspec
import pytest

from _kafka import KafkaBroker
from _services import require_module
from clew.config import Settings
from clew.keys import KeyRing
from clew.keys._redis import RedisKeyStore
from clew.log.base import Message, Record, TopicSpec
from clew.log.kafka import KafkaLog
from clew.log.shredding import ShreddingLog
from clew.privacy._erase_kafka import erase_log
from clew.privacy._erase_match import Matcher
from clew.privacy._verify_bytes import needles
from clew.privacy._verify_kafka import verify_log
from clew.privacy.erase import Subject

require_module("redis", "pip install -e '.[redis]'")

ADA, ADA_EMAIL, BOB = "ada-1815", "ada.lovelace@analytical.test", "bob-1791"
SUBJECT = Subject((), (("user_id", ADA), ("email", ADA_EMAIL)))
MAY, JUNE = 1_714_521_600_000, 1_717_200_000_000  # 2024-05-01, 2024-06-01


@pytest.fixture
def log(empty_kafka: KafkaBroker, redis_url: str) -> Iterator[ShreddingLog]:
    """A sealed log on the session's broker, emptied first: verify and erase read every
    topic."""
    ring = KeyRing(RedisKeyStore(redis_url, prefix=f"v-{uuid.uuid4().hex[:8]}"), b"k" * 32)
    handle = ShreddingLog(KafkaLog(empty_kafka.bootstrap, replication_factor=1), ring)
    handle.keys.cache_s = 0.2
    yield handle
    handle.close()


def event(user: str, n: int, when: str) -> Message:
    doc = {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "messageId": f"{user}-{n}",
        "timestamp": when,
    }
    return Message(msgspec.json.encode(doc), key=user.encode())


def scan(log: ShreddingLog, matcher: Matcher) -> list[str]:
    found: list[str] = []
    verify_log(log, matcher, needles(SUBJECT.identifiers, ()), lambda _, where: found.append(where))
    return found


def test_verify_and_erase_on_the_sealed_log(log: ShreddingLog) -> None:
    log.create_topic(TopicSpec("events", 2))
    log.append_sync(
        "events",
        [
            event(ADA, 1, "2024-05-10T10:00:00Z"),
            event(ADA, 2, "2024-07-10T10:00:00Z"),
            event(BOB, 1, "2024-05-10T10:00:00Z"),
        ],
    )
    # Written around the shredding log, as before encryption was turned on.
    log.inner.append_sync("events", [event(ADA, 3, "2024-05-11T10:00:00Z")])
    rules = Settings().identity.rules
    whole = Matcher(SUBJECT, rules)

    found = scan(log, whole)
    assert sum("readable with a live data key" in w for w in found) == 2
    assert sum("an identifier in clear" in w for w in found) == 1

    # May only: the May event shares Ada's key with her July one, so it is kept, and said.
    in_may = Matcher(SUBJECT, rules, MAY, JUNE)
    partial = erase_log(log, lambda _: in_may.record, (), [])
    assert partial.removed == 0
    assert partial.error is not None and "share the person's data key" in partial.error
    assert len(scan(log, whole)) == 3

    report = erase_log(log, lambda _: whole.record, {ADA.encode(), ADA_EMAIL.encode()}, [])
    assert report.removed == 1  # Ada's user id key; her email never keyed a record
    assert report.error is not None and "before encryption was on" in report.error
    assert "events 2" in report.detail
    left = scan(log, whole)
    assert len(left) == 1 and "an identifier in clear" in left[0]
    readable: list[Record] = []
    for p in range(2):
        readable += log.read("events", p, 0)
    assert sorted(r.key or b"" for r in readable) == [ADA.encode(), BOB.encode()]


def test_malformed_raw_records_are_shredded_by_their_bytes_and_verify_lists_them(
    log: ShreddingLog,
) -> None:
    log.create_topic(TopicSpec("raw", 1))
    headers = (("type", b"batch"), ("source", b"web"))
    bodies = [
        b'{"batch":[{"type":"track","userId":"ada-1815","properties":{"n":"caf\xe9"}}]}',
        b'{"batch":[{"type":"track","userId":"stranger-77","properties":{"n":"\xfe"}}]}',
        b"userId=stranger-77&event=Viewed\xff",
    ]
    log.append_sync("raw", [Message(b, headers=headers) for b in bodies])
    unreadable: list[Record] = []
    whole = Matcher(SUBJECT, Settings().identity.rules, on_unreadable=unreadable.append)

    report = erase_log(log, lambda _: lambda rec: whole.raw(rec)[0] > 0, (), [])

    assert "raw 1" in report.detail, report.detail
    unreadable.clear()
    assert [w for w in scan(log, whole) if w.startswith("topic raw")] == []
    offsets = sorted(r.offset for r in unreadable if r.topic == "raw")
    assert offsets == [1, 2], "the stranger's two, still readable"
    kept = log.read("raw", 0, 0)
    assert [r.value for r in kept] == bodies[1:]
