"""Opens the configured log backend with Clew's topics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clew.config import Settings
from clew.log.base import Log, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC, RECORD_KEYED, TOPICS

if TYPE_CHECKING:
    from clew.log.shredding import ShreddingLog

# Re-exported: the names live in clew.topics, which loads no backend.
__all__ = [
    "CHANGES_TOPIC",
    "DLQ_TOPIC",
    "EVENTS_TOPIC",
    "RAW_TOPIC",
    "TOPICS",
    "open_log",
    "shredding",
]


def open_log(settings: Settings) -> Log:
    """The log chosen in ``settings.log.backend``, with every Clew topic created (or its
    retention updated). Raises :class:`~clew.log.base.LogError` when the backend cannot be
    reached or a topic exists with another partition count, and
    :class:`~clew.log.kafka.KafkaUnavailableError` when Kafka is chosen without its client.
    Kafka comes wrapped in a :class:`~clew.log.shredding.ShreddingLog` unless
    ``privacy.kafka_encryption`` is off; its key store failing raises
    :class:`~clew.privacy.keys.KeyStoreError`."""
    log = _open_backend(settings)
    retention_ms = (
        int(settings.log.retention_hours * 3600_000) if settings.log.retention_hours else None
    )
    try:
        for name in TOPICS:
            log.create_topic(
                TopicSpec(name, settings.log.partitions, retention_ms, settings.log.retention_bytes)
            )
    except BaseException:
        log.close()
        raise
    return log


def _open_backend(settings: Settings) -> Log:
    config = settings.log
    if config.backend == "kafka":
        # Imported here: confluent-kafka is an optional extra.
        from clew.log.kafka import KafkaLog

        kafka = KafkaLog(
            config.bootstrap_servers,
            replication_factor=config.replication_factor,
            client=config.kafka_client,
            producer=config.kafka_producer,
            consumer=config.kafka_consumer,
            timeout_s=config.kafka_timeout_s,
        )
        if not settings.privacy.kafka_encryption:
            return kafka
        try:
            return shredding(settings, kafka)
        except BaseException:
            kafka.close()
            raise
    return EmbeddedLog(settings.log_path)


def shredding(settings: Settings, inner: Log) -> ShreddingLog:
    """``inner`` sealed with the deployment's data keys (``clew.log.shredding``): ``raw`` is
    keyless and ``dlq`` keyed by source, so their records get a data key each; ``events``
    (keyed by the person's identifier) and ``changes`` (by profile id) share one per key."""
    # Imported here: the embedded log never loads the cryptography package.
    from clew.log.shredding import ShreddingLog
    from clew.privacy.keys import open_keyring

    return ShreddingLog(inner, open_keyring(settings), record_keyed=RECORD_KEYED)
