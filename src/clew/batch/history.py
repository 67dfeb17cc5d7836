"""A backfill's history: every event the profiles stage has applied, read from the lake's
current ``events`` snapshot and, for what that snapshot does not hold yet, from the log.

Events the lake holds but the stage has not applied yet are left out: the stage applies them
live once the new definitions are live, so each event counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from clew._locations import LakeLocation
from clew.audiences.engine import Engine
from clew.batch._lake_events import events_to_replay, read_lake_types
from clew.events import Event
from clew.log.base import Log
from clew.topics import EVENTS_TOPIC


class LakeHistory:
    """Reads the lake at ``lake_path`` and its cold tier at ``cold_path`` (directories or
    object storage); ``open_log`` opens the log (only when needed)."""

    def __init__(
        self,
        lake_path: Path | LakeLocation,
        open_log: Callable[[], Log],
        cold_path: Path | LakeLocation | None = None,
    ) -> None:
        self._lake_path = lake_path
        self._cold_path = cold_path
        self._open_log = open_log
        self._log: Log | None = None

    def events(
        self, applied: Mapping[tuple[str, int], int], keep: Callable[[Event], bool]
    ) -> Iterable[Event]:
        log = self._log_handle()
        partitions = log.end_offsets(EVENTS_TOPIC).keys()
        types = _types(keep)
        snapshot = read_lake_types(self._lake_path, partitions, types, self._cold_path)
        chosen = events_to_replay(snapshot, applied, log, keep)
        return [event for event, _ in chosen.events]

    def _log_handle(self) -> Log:
        if self._log is None:
            self._log = self._open_log()
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _types(keep: Callable[[Event], bool]) -> set[str]:
    """The event types a backfill reads: those ``keep`` (an engine's ``relevant``) can
    select; every type when that cannot be told."""
    engine = getattr(keep, "__self__", None)
    if isinstance(engine, Engine):
        return engine.event_types
    return {"track", "page", "screen", "identify", "group", "alias"}
