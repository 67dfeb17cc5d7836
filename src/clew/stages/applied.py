"""Whether the profiles stage has applied what the collector stored at a position: the rule
behind the Profile API's ``after`` (docs/profile-api.md, "Read your writes").

A request stored at ``raw:P:O`` (:class:`clew.raw_records.RawPosition`) is applied when

1. the validate group's committed offset on ``raw`` partition P is past O. Validate appends
   its output (to ``events``, or ``dlq`` for what it rejects) in the same atomic step as that
   offset, so from then on everything the request became is in the log; and
2. the profiles stage has applied every ``events`` partition up to the end offsets read
   *after* (1) was seen to hold. Wherever the request's events went, they lie below those.

It is conservative: (2) waits for everything in ``events`` at that moment, not only the
request's own events (which partition they went to is only known by reading them again).
Events validate rejected or dropped as duplicates need nothing beyond (1).

The profiles stage's progress on a partition is the further of the offset its serving store
records as applied (saved in the transaction of its effects, so the profile a reader then
gets includes it) and its group's committed offset (committed after that transaction; it
also moves past records the stage set aside or could not read). Below an end offset there
may be only what no consumer is given (on Kafka, the commit marker that follows every
transaction validate commits; a record erased by privacy), so a gap between the progress and
the target is checked by reading, as the privacy runner and ``/health`` do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from clew.log.base import Log
from clew.raw_records import RawPosition
from clew.stages.profiles import ProfilesStage
from clew.stages.validate import ValidateStage
from clew.store.base import OffsetStore
from clew.topics import EVENTS_TOPIC, RAW_TOPIC

_MAX_GAPS = 4096

Targets = Mapping[int, int]
"""Per ``events`` partition, the offset the profiles stage must reach."""


@dataclass(frozen=True, slots=True)
class Progress:
    """One look at the stages, read in the order of its fields, each a map of partition to
    the next offset: what validate committed in ``raw``, the ends of ``events``, and how far
    the profiles stage has applied ``events``. ``read_at``: ``time.monotonic()`` as the look
    began."""

    validated: dict[int, int]
    events_end: dict[int, int]
    profiles: dict[int, int]
    read_at: float

    def validated_past(self, position: RawPosition) -> bool:
        """Condition (1): validate's output for ``position`` is in the log.

        >>> look = Progress({0: 8, 1: 3}, {0: 5}, {0: 5}, 0.0)
        >>> look.validated_past(RawPosition(0, 7)), look.validated_past(RawPosition(1, 3))
        (True, False)
        """
        return self.validated.get(position.partition, 0) > position.offset

    def behind(self, targets: Targets) -> dict[int, tuple[int, int]]:
        """Per ``events`` partition where the profiles stage is short of ``targets``, its
        progress and the target: condition (2) holds when none of these gaps holds a record.

        >>> Progress({}, {}, {0: 5, 1: 2}, 0.0).behind({0: 5, 1: 3, 2: 0})
        {1: (2, 3)}
        """
        return {
            p: (self.profiles.get(p, 0), end)
            for p, end in targets.items()
            if self.profiles.get(p, 0) < end
        }


def read_progress(log: Log, store: OffsetStore) -> Progress:
    """A :class:`Progress`: four reads (two of the log's group offsets, its ``events`` ends,
    the serving store's applied offsets). Raises what the log or the store raise when they
    cannot be reached."""
    read_at = time.monotonic()
    validated = log.committed(ValidateStage.group, RAW_TOPIC)
    events_end = log.end_offsets(EVENTS_TOPIC)
    stored = store.load_offsets(ProfilesStage.group)
    committed = log.committed(ProfilesStage.group, EVENTS_TOPIC)
    profiles = {
        p: max(committed.get(p, 0), stored.get((EVENTS_TOPIC, p), -1) + 1) for p in events_end
    }
    return Progress(validated, events_end, profiles, read_at)


class ProgressReader:
    """:func:`read_progress`, shared by every reader waiting at once: a caller that asks for a
    look begun after a given time gets the last one if it qualifies, or waits for the look
    another thread is taking, so a hundred waiting requests cost one look per round, not a
    hundred. Thread-safe. A caller waits for another's look only ``patience_s``: while the
    log does not answer (a broker away), one thread waits for it, not every reader's."""

    def __init__(self, log: Log, store: OffsetStore) -> None:
        self._log = log
        self._store = store
        self._lock = threading.Lock()
        self._last: Progress | None = None
        # (partition, progress, target) -> whether a record lies in between: what is below
        # an end offset never changes, so each gap is read once.
        self._gaps: dict[tuple[int, int, int], bool] = {}
        # The ends of ``raw`` last read: offsets below them were handed out.
        self._raw_end: dict[int, int] = {}

    def look(self, begun_after: float, patience_s: float | None = None) -> Progress | None:
        """A look at the stages begun at or after ``begun_after`` (``time.monotonic()``);
        ``None`` when another caller's look has not ended within ``patience_s``."""
        if not self._lock.acquire(timeout=-1 if patience_s is None else patience_s):
            return None
        try:
            last = self._last
            if last is None or last.read_at < begun_after:
                last = self._last = read_progress(self._log, self._store)
            return last
        finally:
            self._lock.release()

    def advance(
        self,
        position: RawPosition,
        targets: Targets | None,
        begun_after: float,
        patience_s: float | None = None,
    ) -> tuple[Targets | None, bool]:
        """One round of waiting for ``position``: the targets of condition (2) (``None``
        until (1) holds; pass back what the last round returned) and whether both hold, by a
        look begun at or after ``begun_after`` (none within ``patience_s``: not yet)."""
        look = self.look(begun_after, patience_s)
        if look is None:
            return targets, False
        if targets is None:
            if not look.validated_past(position):
                return None, False
            targets = look.events_end
        gaps = look.behind(targets)
        return targets, not any(self._holds_record(p, at, end) for p, (at, end) in gaps.items())

    def _holds_record(self, partition: int, at: int, end: int) -> bool:
        key = (partition, at, end)
        known = self._gaps.get(key)
        if known is None:
            batch = self._log.read(EVENTS_TOPIC, partition, at, 1)
            known = bool(batch) and batch[0].offset < end
            if len(self._gaps) >= _MAX_GAPS:
                self._gaps.clear()
            self._gaps[key] = known
        return known

    def check(self, position: RawPosition) -> None:
        """Raise :class:`UnknownPositionError` when ``position`` names a ``raw`` partition
        that does not exist or an offset not yet written there: no such request was stored,
        and waiting would never end."""
        if position.offset < self._raw_end.get(position.partition, 0):
            return
        end = self._raw_end = self._log.end_offsets(RAW_TOPIC)
        if position.partition not in end:
            raise UnknownPositionError(
                f"{position} names raw partition {position.partition}, but the log has "
                f"{len(end)}: send the Clew-Position header of a Tracking API answer"
            )
        if position.offset >= end[position.partition]:
            raise UnknownPositionError(
                f"{position} is past the end of the log: send the Clew-Position header of an "
                "answer from this Clew"
            )


class UnknownPositionError(ValueError):
    """A well-formed position that no request of this log was stored at."""
