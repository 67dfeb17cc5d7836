"""confluent-kafka for the Kafka log (``clew.log.kafka``), imported in this one place, and
what every part of that backend shares: Kafka errors mapped to the contract's, records
converted, the reserved epoch header, and :class:`KafkaHandle` (what the reader and the
consumer use of the log, so that they need not import ``clew.log.kafka``).

The driver is an optional extra: this module imports without it and sets :data:`missing`
to the ``ImportError``; the other ``_kafka_*`` modules take the driver's names from here, so
they are imported only when :data:`missing` is ``None``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar, cast

from clew.log.base import LogClosedError, LogError, Message, Record, UnknownTopicError

try:
    from confluent_kafka import Consumer as RawConsumer
    from confluent_kafka import (
        IsolationLevel,
        KafkaError,
        KafkaException,
        Producer,
        TopicCollection,
    )
    from confluent_kafka import Message as RawMessage
    from confluent_kafka import TopicPartition as RawTopicPartition
    from confluent_kafka import admin as _admin_module
except ImportError as exc:
    missing: ImportError | None = exc
else:
    missing = None
    # Untyped on purpose: mypy --strict rejects the names this package re-exports.
    admin: Any = _admin_module

__all__ = [
    "EPOCH_HEADER",
    "IsolationLevel",
    "KafkaError",
    "KafkaException",
    "KafkaHandle",
    "Producer",
    "RawConsumer",
    "RawMessage",
    "RawTopicPartition",
    "TopicCollection",
    "admin",
    "check_messages",
    "missing",
    "raise_for",
    "retrying",
    "stale",
    "to_record",
]

EPOCH_HEADER = "clew.epoch"

_T = TypeVar("_T")


class KafkaHandle(Protocol):
    """What the group consumer and the readers use of the Kafka log that made them
    (:class:`clew.log.kafka.KafkaLog`)."""

    @property
    def timeout_s(self) -> float: ...

    @property
    def producer_config(self) -> Mapping[str, Any]: ...

    @property
    def consumer_config(self) -> Mapping[str, Any]: ...

    def partition_count(self, topic: str) -> int: ...

    def produce(
        self,
        producer: Producer,
        topic: str,
        partitions: int,
        m: Message,
        on_delivery: Callable[[KafkaError | None, RawMessage], None],
    ) -> None: ...

    def list_offsets(
        self, topic: str, spec: Any, committed_only: bool = False
    ) -> dict[int, int]: ...

    def transactional_id(self, group: str) -> str: ...

    def release_transactional_id(self, group: str, transactional_id: str) -> None: ...


def raise_for(err: KafkaError, doing: str, topic: str | None = None) -> NoReturn:
    """Raise the contract's error for a Kafka error that happened while ``doing``."""
    code = err.code()
    if topic is not None and code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        raise UnknownTopicError(topic)
    if code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
        raise LogClosedError(f"{doing}: the log was closed before Kafka acknowledged it")
    raise LogError(f"{doing} failed: {err.str()}")


def stale(err: KafkaError) -> bool:
    """Errors after which a client's view of the cluster may stay wrong: a broker restarted
    or a partition's leader moved (its leader epoch changed), or no broker answered. A
    client that met one is rebuilt before it is used again; librdkafka does not always
    refresh the metadata itself (an admin client kept failing ListOffsets with "Leader epoch
    is older than broker epoch" for minutes after a broker restart)."""
    return err.code() in (
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
    )


def _transient(err: KafkaError) -> bool:
    """Errors that pass once the cluster settles (a new topic's leaders known, a group
    coordinator moved or loaded, a transaction finished, a broker back), which librdkafka's
    admin calls and ``committed`` do not all retry."""
    return (
        err.retriable()
        or stale(err)
        or err.code()
        in (
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.UNSTABLE_OFFSET_COMMIT,
            KafkaError.OFFSET_NOT_AVAILABLE,
            KafkaError.REQUEST_TIMED_OUT,
            KafkaError._TIMED_OUT,
        )
    )


def retrying(
    call: Callable[[], _T],
    timeout_s: float,
    doing: str,
    topic: str | None = None,
    on_stale: Callable[[], None] | None = None,
) -> _T:
    """``call()``, again while it fails with a transient error, for up to ``timeout_s``;
    then, or on any other Kafka error, the contract's error (see :func:`raise_for`).
    ``on_stale`` is called after an error that leaves the client's metadata suspect
    (:func:`stale`), before the next attempt or the raise: it rebuilds the client."""
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        try:
            return call()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if on_stale is not None and stale(err):
                on_stale()
            if not _transient(err) or time.monotonic() > deadline:
                raise_for(err, doing, topic)
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def to_record(msg: RawMessage) -> Record:
    """A consumed Kafka message as a :class:`Record` (undoing the epoch-timestamp header)."""
    headers = cast("list[tuple[str, bytes | None]]", msg.headers() or [])
    _, ts = msg.timestamp()
    if headers and headers[-1][0] == EPOCH_HEADER:
        headers, ts = headers[:-1], 0
    key = msg.key()
    return Record(
        cast(str, msg.topic()),
        cast(int, msg.partition()),
        cast(int, msg.offset()),
        key if key is None else bytes(key),
        bytes(msg.value() or b""),
        tuple((k, bytes(v or b"")) for k, v in headers),
        ts,
    )


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse, before anything is sent, what Kafka cannot store as the contract says."""
    for m in messages:
        if m.timestamp_ms is not None and m.timestamp_ms < 0:
            raise LogError(f"Kafka record timestamps cannot be negative ({m.timestamp_ms})")
        if any(name == EPOCH_HEADER for name, _ in m.headers):
            raise LogError(f"the header name {EPOCH_HEADER!r} is reserved by the Kafka log")
