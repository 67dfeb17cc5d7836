"""The consumer-group member of the Kafka log (``clew.log.kafka``): group membership with the
cooperative-sticky assignor, positions, offset commits, and commits that are one Kafka
transaction with the records they produce. Imported only when confluent-kafka is installed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from clew.log._kafka_driver import (
    KafkaError,
    KafkaException,
    KafkaHandle,
    Producer,
    RawConsumer,
    RawMessage,
    RawTopicPartition,
    admin,
    check_messages,
    raise_for,
    to_record,
)
from clew.log.base import Consumer, LogError, Message, Record, TopicPartition

_MAX_STASH = 5000
# How long a seek waits for a just-assigned partition to become seekable.
_SEEK_WAIT_S = 5.0
# Beyond a transactional call's own timeout, how long before it counts as stuck.
_GRACE_S = 5.0
# How long closing a consumer may take before it is left to finish in the background.
_CLOSE_WAIT_S = 5.0
# How often a transactional call's waiter looks whether the producer lost every broker.
_WATCH_S = 0.1


class KafkaConsumer(Consumer):
    """A member of a Kafka consumer group (see :class:`Consumer`).

    Created once it has joined the group (its first assignment, possibly empty, or after
    ``timeout_s``), so that ``assignment`` and ``commit`` act as a member. Positions are the
    offsets after the records ``poll`` returned; records librdkafka delivered while joining
    or while ``assignment`` served group events are kept for the next ``poll``.
    """

    def __init__(self, log: KafkaHandle, group: str, topics: list[str]) -> None:
        self._log = log
        self._group = group
        self._consumer = RawConsumer(
            {
                **log.consumer_config,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )
        self._stash: list[RawMessage] = []
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._seeked: set[TopicPartition] = set()
        self._joined = False
        self._transactional: Producer | None = None
        self._transactional_id = log.transactional_id(group)
        self._broker_gone = threading.Event()
        self._closed = False
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._await_membership()

    def _on_assign(self, _: object, partitions: list[RawTopicPartition]) -> None:
        self._joined = True
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, _: object, partitions: list[RawTopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._seeked -= gone
        for tp in gone:
            self._positions.pop(tp, None)
        self._stash = [m for m in self._stash if (m.topic(), m.partition()) not in gone]

    def _fetch(self, timeout_s: float, max_records: int) -> None:
        """Moves what librdkafka delivers (serving group events on the way) to the stash."""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return
        more = self._consumer.consume(max_records - 1, 0) if max_records > 1 else []
        for msg in (first, *more):
            err = msg.error()
            if err is None:
                if (msg.topic(), msg.partition()) in self._assigned:
                    self._stash.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                raise_for(err, f"consuming {msg.topic()!r} in group {self._group!r}")

    def _await_membership(self) -> None:
        deadline = time.monotonic() + self._log.timeout_s
        while not self._joined and time.monotonic() < deadline:
            self._fetch(0.05, 500)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        self._check_open()
        if not self._stash:
            self._fetch(timeout_s, max_records)
        batch, self._stash = self._stash[:max_records], self._stash[max_records:]
        out = [to_record(msg) for msg in batch]
        for r in out:
            self._positions[(r.topic, r.partition)] = r.offset + 1
            self._seeked.discard((r.topic, r.partition))
        return out

    def _current_positions(self) -> dict[TopicPartition, int]:
        """Positions to commit. Past the last returned record, librdkafka may already be
        beyond transaction markers, which no poll returns; taking its position then keeps a
        group that read everything from showing a lag of one per marker."""
        out = dict(self._positions)
        if not out:
            return out
        stashed = {(m.topic(), m.partition()) for m in self._stash}
        for tp in self._consumer.position([RawTopicPartition(t, p) for t, p in out]):
            key = (tp.topic, tp.partition)
            if key not in stashed and key not in self._seeked and tp.offset > out[key]:
                out[key] = tp.offset
        return out

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        """Offsets alone are committed to the group; with ``produce``, records and offsets
        are one Kafka transaction. Raises :class:`LogError` if it did not commit (for a
        transaction whose outcome is unknown, the message says so)."""
        self._check_open()
        outputs = {topic: list(ms) for topic, ms in (produce or {}).items() if ms}
        for topic, messages in outputs.items():
            self._log.partition_count(topic)
            check_messages(messages)
        self._await_membership()
        to_commit = dict(offsets) if offsets is not None else self._current_positions()
        tps = [RawTopicPartition(t, p, off) for (t, p), off in to_commit.items()]
        if outputs:
            self._commit_transaction(tps, outputs)
        elif tps:
            try:
                result = self._consumer.commit(offsets=tps, asynchronous=False) or []
            except KafkaException as exc:
                raise_for(exc.args[0], f"committing offsets of group {self._group!r}")
            for tp in result:
                if tp.error is not None:
                    raise_for(tp.error, f"committing {tp.topic}[{tp.partition}]", tp.topic)

    def _commit_transaction(
        self, tps: list[RawTopicPartition], outputs: dict[str, list[Message]]
    ) -> None:
        timeout = self._log.timeout_s
        group = self._group
        if self._transactional is None:
            self._broker_gone = threading.Event()
            producer = Producer(
                {
                    **self._log.producer_config,
                    "transactional.id": self._transactional_id,
                    "error_cb": _watch_brokers(self._broker_gone),
                }
            )
            # With an id handed on, this waits for the broker to end the previous holder's
            # transaction, and may block past its timeout like the calls below.
            try:
                _within(
                    producer,
                    self._broker_gone,
                    timeout,
                    lambda: producer.init_transactions(timeout),
                )
            except _Stuck as stuck:
                raise LogError(f"starting transactions for group {group!r}: {stuck}") from None
            except KafkaException as exc:
                _discard(producer)
                raise_for(exc.args[0], f"starting transactions for group {group!r}")
            self._transactional = producer
        producer, gone = self._transactional, self._broker_gone
        gone.clear()  # an outage between transactions is over if the calls below pass
        written: dict[tuple[str, int], int] = {}

        def delivered(err: KafkaError | None, msg: RawMessage) -> None:
            if err is None:
                key = (cast(str, msg.topic()), cast(int, msg.partition()))
                written[key] = max(written.get(key, -1), cast(int, msg.offset()))

        try:
            producer.begin_transaction()
            for topic, messages in outputs.items():
                n = self._log.partition_count(topic)
                for m in messages:
                    self._log.produce(producer, topic, n, m, delivered)
            if tps:
                metadata = self._consumer.consumer_group_metadata()
                _within(
                    producer,
                    gone,
                    timeout,
                    lambda: producer.send_offsets_to_transaction(tps, metadata, timeout),
                )
            _within(producer, gone, timeout, lambda: producer.commit_transaction(timeout))
        except _Stuck as stuck:
            # Left to its thread, never used again: its call ends on its own (a committed
            # transaction stays committed) and the producer is then discarded; a transaction
            # left open is aborted by the broker after transaction.timeout.ms.
            self._transactional = None
            raise LogError(f"transaction of group {group!r} (outcome unknown): {stuck}") from None
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            try:
                if not err.txn_requires_abort():
                    raise
                _within(producer, gone, timeout, lambda: producer.abort_transaction(timeout))
            except (KafkaException, _Stuck) as failure:
                self._transactional = None  # unusable now: the next commit starts afresh
                if isinstance(failure, KafkaException):  # a stuck call discards it itself
                    _discard(producer)
                raise_for(err, f"transaction of group {group!r} (outcome unknown)")
            raise_for(err, f"transaction of group {group!r} (aborted, nothing committed)")
        self._await_visible(written)

    def _await_visible(self, written: Mapping[tuple[str, int], int]) -> None:
        """Kafka acknowledges a transaction before its commit markers are written; waiting
        for them lets a reader right after ``commit`` see the records (read-your-writes)."""
        deadline = time.monotonic() + self._log.timeout_s
        for topic in {t for t, _ in written}:
            while time.monotonic() < deadline:
                latest = admin.OffsetSpec.latest()
                stable = self._log.list_offsets(topic, latest, committed_only=True)
                if all(stable[p] > off for (t, p), off in written.items() if t == topic):
                    break
                time.sleep(0.002)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._check_open()
        tp = (topic, partition)
        if tp not in self._assigned:
            raise LogError(f"{topic}[{partition}] is not assigned to this consumer")
        # A partition assigned a moment ago may not be fetchable yet ("Erroneous state"),
        # more often while a broker that just came back loads its partitions: ask again.
        deadline = time.monotonic() + _SEEK_WAIT_S
        while True:
            try:
                self._consumer.seek(RawTopicPartition(topic, partition, offset))
                break
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() != KafkaError._STATE or time.monotonic() > deadline:
                    raise_for(err, f"seeking {topic}[{partition}]", topic)
            time.sleep(0.05)
        self._stash = [m for m in self._stash if (m.topic(), m.partition()) != tp]
        self._positions[tp] = offset
        self._seeked.add(tp)

    def assignment(self) -> list[TopicPartition]:
        """After serving the group events that arrived (records polled meanwhile are kept)."""
        self._check_open()
        if len(self._stash) < _MAX_STASH:
            self._fetch(0, _MAX_STASH - len(self._stash))
        return sorted(self._assigned)

    def _check_open(self) -> None:
        if self._closed:
            raise LogError("this consumer is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stash.clear()
        try:
            _bounded(self._consumer.close, _CLOSE_WAIT_S)
        finally:
            if self._transactional is not None:
                _discard(self._transactional)
            self._log.release_transactional_id(self._group, self._transactional_id)


class _Stuck(Exception):
    """A call into librdkafka did not return within its own timeout and a grace period."""


def _watch_brokers(gone: threading.Event) -> Callable[[KafkaError], None]:
    """An ``error_cb`` that sets ``gone`` when the producer has lost every broker."""

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            gone.set()

    return on_error


class _Background:
    """``call()`` on a daemon thread of its own. Its waiter may give up on it
    (:meth:`abandon`); ``then`` runs once an abandoned call returns."""

    def __init__(
        self, call: Callable[[], object], name: str, then: Callable[[], None] | None = None
    ) -> None:
        self._done = threading.Event()
        self._failed: list[BaseException] = []
        self._abandoned = False
        self._lock = threading.Lock()
        self._then = then
        threading.Thread(target=self._run, args=(call,), name=name, daemon=True).start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            self._failed.append(exc)
        with self._lock:
            self._done.set()
            late = self._abandoned
        if late and self._then is not None:
            self._then()

    def wait(self, timeout_s: float) -> bool:
        """Whether the call returned within ``timeout_s``; raises what it raised."""
        if not self._done.wait(timeout_s):
            return False
        if self._failed:
            raise self._failed[0]
        return True

    def abandon(self) -> bool:
        """Give up on a call still running (True); False when it has returned meanwhile."""
        with self._lock:
            if self._done.is_set():
                return False
            self._abandoned = True
            return True


def _within(
    producer: Producer, gone: threading.Event, timeout_s: float, call: Callable[[], object]
) -> None:
    """``call()`` in a helper thread, waited for up to ``timeout_s`` plus a grace period, or
    until the producer reports every broker gone (``gone``); raises what it raised, or
    :class:`_Stuck` when it has not returned. librdkafka's ``send_offsets_to_transaction``
    was seen blocking for minutes past its timeout after a broker restart, and a call in
    flight when the broker died waited out its whole timeout after the broker was back:
    the stage gives such a transaction up at once and starts afresh with a new producer.
    A call given up on discards its producer when it returns."""
    job = _Background(call, "clew-kafka-transaction", then=lambda: _discard(producer))
    deadline = time.monotonic() + timeout_s + _GRACE_S
    while not job.wait(_WATCH_S):
        producer.poll(0)  # serves error_cb: a call that does not flush would not
        if (gone.is_set() or time.monotonic() > deadline) and job.abandon():
            if gone.is_set():
                raise _Stuck("Kafka lost every broker while the call waited")
            raise _Stuck(f"Kafka did not answer within {timeout_s + _GRACE_S:g} s")


def _bounded(call: Callable[[], object], wait_s: float) -> None:
    """``call()`` in a helper thread, waited for up to ``wait_s``, then left to finish (or
    not) on its own; raises what it raised within that time. A consumer's ``close`` keeps
    looking for its group coordinator while no broker answers (the stage runner replaces a
    consumer that failed during an outage), and the group replaces a member that never said
    goodbye after its session timeout anyway."""
    _Background(call, "clew-kafka-close").wait(wait_s)


def _discard(producer: Producer) -> None:
    """Close a transactional producer without waiting for it. ``close`` aborts the open
    transaction and flushes, with no bound: with the broker away (or just back, its
    coordinator not yet loaded) that blocked a stage for minutes. What it held is purged
    first; the abort then finishes in the background (or the broker aborts the transaction
    at ``transaction.timeout.ms``), and nothing of it was committed."""
    producer.purge()
    threading.Thread(
        target=_quietly_close, args=(producer,), name="clew-kafka-discard", daemon=True
    ).start()


def _quietly_close(producer: Producer) -> None:
    """Close a discarded producer; its errors (a fatal one when it was fenced) end with it."""
    with contextlib.suppress(KafkaException):
        producer.close()
