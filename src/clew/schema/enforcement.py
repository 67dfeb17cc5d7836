"""How a source's tracking plan is enforced in the validate stage.

The modes form a ladder; each does what the one before it does, and more:

``allow``
    Every event passes. Violations are recorded on the event (``context.violations``) and
    counted.
``omit_unplanned_properties``
    As ``allow``, and top-level properties (track, page, screen) or traits (identify) that the
    subject's schema does not declare are removed before validation.
``block_unplanned_events``
    As above, and track events whose name has no schema go to the dead-letter queue
    (``unplanned_event``).
``block_violations``
    As above, and events with any violation go to the dead-letter queue
    (``schema_violation``).

Identify, page and screen events are never *unplanned*: without a schema they are not
validated (as in Segment Protocols, where only track events can be unplanned).
"""

from __future__ import annotations

from enum import StrEnum


class Enforcement(StrEnum):
    ALLOW = "allow"
    OMIT_UNPLANNED_PROPERTIES = "omit_unplanned_properties"
    BLOCK_UNPLANNED_EVENTS = "block_unplanned_events"
    BLOCK_VIOLATIONS = "block_violations"

    @property
    def level(self) -> int:
        return _LADDER.index(self)

    def at_least(self, other: Enforcement) -> bool:
        return self.level >= other.level

    @classmethod
    def parse(cls, text: str) -> Enforcement:
        """Case-insensitive; raises ``ValueError`` naming the valid modes."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown enforcement mode {text!r}; use one of {valid}") from None


_LADDER = list(Enforcement)
