"""Topics and offsets through Kafka's admin API, for the Kafka log (``clew.log.kafka``).

:class:`Admin` wraps librdkafka's admin client: it creates topics (or updates their
retention) and waits until every partition has a leader, describes topics, lists offsets and
trims partitions (``DeleteRecords``). Every failure raises the contract's :class:`LogError`
(or :class:`UnknownTopicError`); transient errors are retried for up to ``timeout_s``.
Imported only when confluent-kafka is installed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from clew.log._kafka_driver import (
    IsolationLevel,
    KafkaError,
    KafkaException,
    RawTopicPartition,
    TopicCollection,
    admin,
    raise_for,
    retrying,
)
from clew.log.base import LogError, TopicSpec

# Least time between two rebuilds of the admin client.
_RENEW_EVERY_S = 1.0


def _limit(value: str | None) -> int | None:
    """A retention setting as the contract has it: ``None`` for Kafka's -1 (no limit)."""
    return None if value is None or int(value) < 0 else int(value)


class Admin:
    """Admin requests to one cluster, each bounded by ``timeout_s``. Thread-safe, as
    librdkafka's admin client is. It has no close: dropping it ends its reconnect attempts."""

    def __init__(self, config: Mapping[str, Any], timeout_s: float) -> None:
        self._config = dict(config)
        self._client = admin.AdminClient(self._config)
        self._renewed = time.monotonic()
        self.timeout_s = timeout_s

    def renew(self) -> None:
        """Replace the client after an error that leaves its metadata suspect (see
        :func:`~clew.log._kafka_driver.stale`); at most once a second, since a new client
        first has to connect."""
        if time.monotonic() - self._renewed >= _RENEW_EVERY_S:
            self._renewed = time.monotonic()
            self._client = admin.AdminClient(self._config)

    def create_topic(self, spec: TopicSpec, replication: int) -> None:
        """Create ``spec`` (``replication`` -1 for the broker's default), or, if it exists
        with as many partitions, set its retention; returns once every partition has a leader
        on the broker answering."""
        config = {
            "retention.ms": str(-1 if spec.retention_ms is None else spec.retention_ms),
            "retention.bytes": str(-1 if spec.retention_bytes is None else spec.retention_bytes),
        }
        new = admin.NewTopic(spec.name, spec.partitions, replication, config=config)
        try:
            self._client.create_topics(
                [new], operation_timeout=self.timeout_s, request_timeout=self.timeout_s
            )[spec.name].result()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise LogError(f"creating topic {spec.name!r} failed: {err.str()}") from exc
            existing = self._partitions_once_known(spec.name)
            if existing != spec.partitions:
                raise LogError(
                    f"topic {spec.name!r} has {existing} partitions; it cannot change to "
                    f"{spec.partitions}"
                ) from None
            entries = [
                admin.ConfigEntry(k, v, incremental_operation=admin.AlterConfigOpType.SET)
                for k, v in config.items()
            ]
            resource = admin.ConfigResource("topic", spec.name, incremental_configs=entries)
            retrying(
                lambda: self._client.incremental_alter_configs([resource])[resource].result(),
                self.timeout_s,
                f"updating the retention of {spec.name!r}",
                spec.name,
            )
        # Until the broker answering knows the new topic and each partition has a leader.
        deadline = time.monotonic() + self.timeout_s
        while not all(leader >= 0 for leader in self.leaders(spec.name, missing_ok=True)):
            if time.monotonic() > deadline:
                raise LogError(f"topic {spec.name!r} has partitions without a leader")
            time.sleep(0.01)

    def _partitions_once_known(self, topic: str) -> int:
        """The partition count of a topic another client has just created: the broker may
        answer "unknown topic" until its metadata catches up, so ask again for a while."""
        deadline = time.monotonic() + self.timeout_s
        while (leaders := self.leaders(topic, missing_ok=True)) == [-1]:
            if time.monotonic() > deadline:
                raise LogError(f"topic {topic!r} exists but the broker does not describe it")
            time.sleep(0.1)
        return len(leaders)

    def leaders(self, topic: str, missing_ok: bool = False) -> list[int]:
        """The leader of each partition (-1 while it has none; ``[-1]`` for a topic the
        broker does not know yet, if ``missing_ok``)."""
        try:
            desc = self._client.describe_topics(
                TopicCollection([topic]), request_timeout=self.timeout_s
            )[topic].result()
        except KafkaException as exc:
            if missing_ok and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return [-1]
            raise_for(exc.args[0], f"describing topic {topic!r}", topic)
        return [p.leader.id if p.leader is not None else -1 for p in desc.partitions]

    def partition_counts(self) -> dict[str, int]:
        """The partition count of every topic of the cluster (Kafka's internal ones too)."""
        md = retrying(
            lambda: self._client.list_topics(timeout=self.timeout_s),
            self.timeout_s,
            "listing topics",
            on_stale=self.renew,
        )
        return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}

    def specs(self, counts: Mapping[str, int]) -> dict[str, TopicSpec]:
        """The topics named in ``counts`` (name to partition count) with their retention;
        a topic deleted since it was listed is left out."""
        out: dict[str, TopicSpec] = {}
        resources = [admin.ConfigResource("topic", name) for name in counts]
        for resource, fut in self._client.describe_configs(resources).items():
            try:
                entries = fut.result()
            except KafkaException:
                continue  # deleted since it was listed
            out[resource.name] = TopicSpec(
                resource.name,
                counts[resource.name],
                _limit(entries["retention.ms"].value),
                _limit(entries["retention.bytes"].value),
            )
        return out

    def list_offsets(
        self, topic: str, partitions: int, spec: Any, committed_only: bool = False
    ) -> dict[int, int]:
        """Per partition of ``topic`` (which has ``partitions``), the offset that the
        ``OffsetSpec`` asks for (-1 when there is none); ``committed_only`` gives the last
        stable offset instead of the end."""
        level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
        request = {RawTopicPartition(topic, p): spec for p in range(partitions)}

        def call() -> dict[int, int]:
            futures = self._client.list_offsets(
                request, isolation_level=level, request_timeout=self.timeout_s
            )
            return {tp.partition: fut.result().offset for tp, fut in futures.items()}

        doing = f"listing offsets of {topic!r}"
        return retrying(call, self.timeout_s, doing, topic, on_stale=self.renew)

    def delete_records(self, cuts: Sequence[RawTopicPartition]) -> None:
        """Removes, in each partition of ``cuts``, the records before its offset."""
        futures = self._client.delete_records(
            cuts, operation_timeout=self.timeout_s, request_timeout=self.timeout_s
        )
        for tp, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                raise_for(exc.args[0], f"trimming {tp.topic!r}", tp.topic)
