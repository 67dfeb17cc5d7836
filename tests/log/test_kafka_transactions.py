"""How the Kafka log gives up a transaction that a lost broker holds up, and how the member
that replaces a failed one ends what the failed one left open.

The waiting is tested with a stand-in for librdkafka's producer (a broker cannot be made to
hang on cue); the hand-over of transactional ids and the fencing run on the suite's broker.
The whole story, a broker killed under traffic, is tests/test_chaos.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from _kafka import KafkaBroker
from _services import require_module

require_module("confluent_kafka", "pip install -e '.[kafka]'")

from clew.log import _kafka_consumer  # noqa: E402
from clew.log._kafka_driver import KafkaError  # noqa: E402
from clew.log.base import Message, TopicSpec  # noqa: E402
from clew.log.kafka import KafkaLog  # noqa: E402


class StandInProducer:
    """What ``_within`` and ``_discard`` use of a producer; records what was done to it."""

    def __init__(self) -> None:
        self.polls = 0
        self.purged = threading.Event()
        self.closed = threading.Event()

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        return 0

    def purge(self) -> None:
        self.purged.set()

    def close(self) -> None:
        self.closed.set()


def test_a_call_is_given_up_as_soon_as_every_broker_is_gone() -> None:
    producer = StandInProducer()
    gone = threading.Event()
    release = threading.Event()
    threading.Timer(0.3, gone.set).start()
    started = time.monotonic()
    with pytest.raises(_kafka_consumer._Stuck, match="lost every broker"):
        _kafka_consumer._within(producer, gone, 30.0, release.wait)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5.0, "waited for the call's own timeout"
    assert producer.polls > 0, "error callbacks were never served"
    assert not producer.closed.is_set(), "discarded while its call still runs"
    release.set()  # the call returns at last: the producer given up on is discarded then
    assert producer.closed.wait(5.0) and producer.purged.is_set()


def test_a_call_that_returns_in_time_keeps_its_producer() -> None:
    producer = StandInProducer()
    _kafka_consumer._within(producer, threading.Event(), 30.0, lambda: None)  # type: ignore[arg-type]
    time.sleep(0.2)
    assert not producer.closed.is_set()


def test_a_call_that_fails_raises_its_own_error() -> None:
    def fail() -> None:
        raise ValueError("from the call")

    with pytest.raises(ValueError, match="from the call"):
        _kafka_consumer._within(StandInProducer(), threading.Event(), 30.0, fail)  # type: ignore[arg-type]


def test_only_losing_every_broker_counts_as_gone() -> None:
    gone = threading.Event()
    on_error = _kafka_consumer._watch_brokers(gone)
    on_error(KafkaError(KafkaError._TRANSPORT))
    assert not gone.is_set()
    on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert gone.is_set()


def test_a_closed_member_hands_its_transactional_id_to_the_next(
    kafka_broker: KafkaBroker,
) -> None:
    log = KafkaLog(kafka_broker.bootstrap, replication_factor=1)
    try:
        first = log.transactional_id("g1")
        assert log.transactional_id("g1") != first, "one id handed to two live members"
        log.release_transactional_id("g1", first)
        assert log.transactional_id("g2") != first, "an id crossed groups"
        assert log.transactional_id("g1") == first
    finally:
        log.close()


def test_the_successor_ends_a_transaction_its_predecessor_left_open(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A member whose transaction was left open (its producer given up on) is replaced;
    the successor's first commit fences the old producer, whose transaction is aborted at
    once, so read-committed readers see the successor's records without waiting out
    ``transaction.timeout.ms``."""
    log = KafkaLog(kafka_broker.bootstrap, replication_factor=1)
    suffix = tmp_path.name[-12:]
    source, sink, group = f"in-{suffix}", f"out-{suffix}", f"g-{suffix}"
    try:
        log.create_topic(TopicSpec(source, 1))
        log.create_topic(TopicSpec(sink, 1))
        log.append_sync(source, [Message(value=b"a"), Message(value=b"b")])
        member = log.consumer(group, [source])
        assert len(member.poll(10, timeout_s=10.0)) == 2
        member.commit(produce={sink: [Message(value=b"committed")]})
        # A transaction left open, as a producer given up on leaves it: records sent, no
        # commit, and the member replaced.
        producer = member._transactional  # type: ignore[attr-defined]
        assert producer is not None
        producer.begin_transaction()
        producer.produce(sink, b"left-open", partition=0)
        producer.flush(10)
        member._transactional = None  # type: ignore[attr-defined]
        member.close()
        successor = log.consumer(group, [source])
        log.append_sync(source, [Message(value=b"c")])
        assert len(successor.poll(10, timeout_s=10.0)) == 1
        started = time.monotonic()
        successor.commit(produce={sink: [Message(value=b"after")]})
        assert time.monotonic() - started < 15.0
        values = [r.value for r in log.read(sink, 0, 0)]
        assert values == [b"committed", b"after"], values
        successor.close()
    finally:
        log.close()
