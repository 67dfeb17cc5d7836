"""The dead-letter record: one row of the ``dlq`` topic, as the validate stage, the
collector, the stage runner (a record set aside) and a replay write it."""

from __future__ import annotations

import msgspec

# The dead letter's ``reason`` when a stage set the record aside (validation has its own).
STAGE_FAILURE = "stage_failure"
# The header of every record a replay appends to ``events`` or ``dlq``: the ``dlq_id`` of
# the row it replays.
REPLAY_HEADER = "replay_of"


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """A row of the dead-letter queue, as written to the ``dlq`` topic."""

    reason: str
    message: str
    payload: str
    source_id: str
    received_at: str
    raw_partition: int
    raw_offset: int
    index: int
    message_id: str | None = None
    event_type: str | None = None
    event_name: str | None = None
    # Set when the envelope was valid but the tracking plan blocked the event.
    violations: list[dict[str, str]] = []
    schema_versions: dict[str, str] = {}
    normalized: str | None = None
    # Unique per row: "partition:offset:index" of the raw record; replays add "~replay id".
    dlq_id: str = ""
    replay_of: str | None = None
    # Set when a stage could not process a record and set it aside (``raw_partition`` and
    # ``raw_offset`` then locate it in ``topic``; ``message`` is the error).
    stage: str | None = None
    topic: str | None = None
    headers: dict[str, str] = {}
    payload_encoding: str | None = None
