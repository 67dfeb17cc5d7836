"""Opens the configured log backend with Clew's topics."""

from __future__ import annotations

from clew.config import Settings
from clew.log.base import Log, LogError, TopicSpec
from clew.log.embedded import EmbeddedLog

RAW_TOPIC = "raw"
EVENTS_TOPIC = "events"
DLQ_TOPIC = "dlq"
CHANGES_TOPIC = "changes"
TOPICS = (RAW_TOPIC, EVENTS_TOPIC, DLQ_TOPIC, CHANGES_TOPIC)


def open_log(settings: Settings) -> Log:
    """The log chosen in ``settings.log.backend``, with every Clew topic created."""
    if settings.log.backend != "embedded":
        raise LogError(f"log backend {settings.log.backend!r} is not available; use 'embedded'")
    log = EmbeddedLog(settings.log_path)
    retention_ms = (
        int(settings.log.retention_hours * 3600_000) if settings.log.retention_hours else None
    )
    for name in TOPICS:
        log.create_topic(
            TopicSpec(name, settings.log.partitions, retention_ms, settings.log.retention_bytes)
        )
    return log
