"""The log's topics, by name: what every stage reads and writes. A module that needs a name
imports it from here, without loading any log backend.

``raw`` holds accepted HTTP requests (no key); ``events`` validated events, keyed by the
person's identifier so that one person's events stay in order on one partition; ``dlq`` dead
letters, keyed by source; ``changes`` profile changes, keyed by profile id.
"""

from __future__ import annotations

RAW_TOPIC = "raw"
EVENTS_TOPIC = "events"
DLQ_TOPIC = "dlq"
CHANGES_TOPIC = "changes"
TOPICS = (RAW_TOPIC, EVENTS_TOPIC, DLQ_TOPIC, CHANGES_TOPIC)
# Topics whose record key is not a person: each record gets its own data key.
RECORD_KEYED = (RAW_TOPIC, DLQ_TOPIC)

# Every stage's consumer group and the topics it consumes (for lag and drain checks).
STAGE_TOPICS: dict[str, tuple[str, ...]] = {
    "validate": (RAW_TOPIC,),
    "lake": (EVENTS_TOPIC, DLQ_TOPIC),
    "monitor": (EVENTS_TOPIC, DLQ_TOPIC),
    "profiles": (EVENTS_TOPIC,),
    "profiles-lake": (CHANGES_TOPIC,),
    "destinations": (EVENTS_TOPIC, CHANGES_TOPIC),
}
STAGE_NAMES = tuple(STAGE_TOPICS)
