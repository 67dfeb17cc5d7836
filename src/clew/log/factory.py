"""Kept for callers not moved yet: the log is opened by :mod:`clew.backends` (``open_log``,
``shredding``), the topic names live in :mod:`clew.topics`. New code imports from those."""

from __future__ import annotations

from clew.backends import open_log, shredding
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC, TOPICS

__all__ = [
    "CHANGES_TOPIC",
    "DLQ_TOPIC",
    "EVENTS_TOPIC",
    "RAW_TOPIC",
    "TOPICS",
    "open_log",
    "shredding",
]
