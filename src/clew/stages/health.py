"""What ``/health`` says of the stages a process watches: whether each runs, fails, is
stalled or set records aside, how far behind it is, and its failures and conflicts of the
last minutes.

Reading lag costs a request to the log (a network round trip on Kafka), so it is never done
while ``/health`` answers: :class:`StageWatch` samples every stage's committed offsets, end
offsets and counters in a background thread, and :meth:`StageWatch.stages` answers from the
last sample. A stage is **stalled** when records wait for it (lag above 0) and its committed
offsets have not moved for ``stalled_after_s`` seconds. On Kafka the end offset of a topic
written in transactions sits past a commit marker no consumer is given, so a lag of 1 can
be nothing to process: before calling a stage stalled, the watch reads the first record past
its commit, as the privacy runner does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clew.log.base import Log
from clew.stages._counters import CounterStore
from clew.stages.runner import RECORDS_SET_ASIDE, STAGE_CONFLICTS, STAGE_FAILURES
from clew.stages.setaside import RECENT_S, StageLedger
from clew.topics import STAGE_TOPICS

logger = logging.getLogger(__name__)

# How often the watch samples, and the window of the recent rates.
SAMPLE_EVERY_S = 5.0
RATE_WINDOW_S = 300.0

_Offsets = dict[tuple[str, int], int]


@dataclass(slots=True)
class _Progress:
    """One stage's last sample. ``moved_at``: when its commits last moved (or it last had
    nothing to do); ``confirmed``: the offsets last found to hold a record to process."""

    lag: int | None = None
    committed: _Offsets = field(default_factory=dict)
    end: _Offsets = field(default_factory=dict)
    moved_at: float = field(default_factory=time.monotonic)
    stalled_s: float | None = None
    checked: tuple[tuple[tuple[str, int], int], ...] | None = None
    pending: bool = True
    counts: deque[tuple[float, int, int]] = field(default_factory=deque)


class StageWatch:
    """Samples the stages ``groups`` every ``every_s`` (lag, commits, counters) in a thread;
    :meth:`stages` builds their ``/health`` entries from the last sample at once."""

    def __init__(
        self,
        log: Log,
        counters: CounterStore,
        ledger: StageLedger,
        groups: Sequence[str],
        stalled_after_s: float,
        every_s: float | None = None,
    ) -> None:
        self._log = log
        self._counters = counters
        self._ledger = ledger
        self._groups = list(groups)
        self._stalled_after_s = stalled_after_s
        self._every_s = SAMPLE_EVERY_S if every_s is None else every_s
        self._progress = {g: _Progress() for g in self._groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clew-stage-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops sampling; a sample under way (a slow log) is left to end with the process."""
        self._stop.set()

    def _run(self) -> None:
        while True:
            for group in self._groups:
                if self._stop.is_set():
                    return
                try:
                    self.sample(group)
                except Exception as exc:
                    # The log may be out of reach: /health says so under dependencies; the
                    # stage keeps its last figures meanwhile.
                    logger.debug("sampling stage %s failed: %s", group, exc)
            if self._stop.wait(self._every_s):
                return

    def sample(self, group: str, now: float | None = None) -> None:
        """Take one sample of ``group`` (the thread does this every ``every_s``)."""
        now = time.monotonic() if now is None else now
        p = self._progress[group]
        counts = self._counters.read(group)
        p.counts.append((now, counts[STAGE_FAILURES], counts[STAGE_CONFLICTS]))
        while len(p.counts) > 1 and p.counts[1][0] <= now - RATE_WINDOW_S:
            p.counts.popleft()
        committed: _Offsets = {}
        end: _Offsets = {}
        for topic in STAGE_TOPICS.get(group, ()):
            lag = self._log.lag(group, topic)
            for part, e in lag.end.items():
                end[(topic, part)] = e
                committed[(topic, part)] = lag.committed.get(part, 0)
        p.lag = sum(max(0, e - committed[tp]) for tp, e in end.items())
        if committed != p.committed or p.lag == 0:
            p.moved_at = now
        p.committed, p.end = committed, end
        waited = now - p.moved_at
        if p.lag > 0 and waited >= self._stalled_after_s:
            key = tuple(sorted(committed.items()))
            if key != p.checked:
                p.checked, p.pending = key, self._has_pending(committed, end)
            p.stalled_s = waited if p.pending else None
        else:
            p.stalled_s = None

    def _has_pending(self, committed: _Offsets, end: _Offsets) -> bool:
        """Whether a record to process sits between a commit and the end (not only a
        transaction's commit marker or another record no consumer is given)."""
        for (topic, part), e in end.items():
            at = committed[(topic, part)]
            if at < e:
                batch = self._log.read(topic, part, at, 1)
                if batch and batch[0].offset < e:
                    return True
        return False

    def lag_by_partition(self) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, records not committed) of the last sample of each
        stage, for ``clew_consumer_lag`` without asking the log again."""
        return [
            (group, topic, part, max(0, end - p.committed.get((topic, part), 0)))
            for group, p in self._progress.items()
            for (topic, part), end in sorted(p.end.items())
        ]

    def stages(self, alive: Mapping[str, bool]) -> dict[str, dict[str, Any]]:
        """The ``/health`` entry of each stage in ``alive`` (name → whether its thread or
        process runs): ``alive``, ``status`` (``ok``, ``down``, ``failing``, ``stalled`` or
        ``set_aside``), ``reason``, ``errors`` and ``set_aside`` (totals since the data
        directory was created), ``lag`` (records not committed yet; None before the first
        sample), ``failures_5m`` and ``conflicts_5m`` (in the last :data:`RATE_WINDOW_S`)."""
        trouble = self._ledger.trouble()
        out: dict[str, dict[str, Any]] = {}
        for name, is_alive in alive.items():
            counts = self._counters.read(name)
            p = self._progress.get(name, _Progress())
            t = trouble.get(name)
            state, reason = "ok", None
            if not is_alive:
                state, reason = "down", "its process or thread is not running"
            elif t is not None and t.failing is not None:
                state, reason = "failing", t.failing
            elif p.stalled_s is not None:
                state = "stalled"
                reason = (
                    f"{p.lag} record(s) waiting and no commit for {p.stalled_s:.0f} s "
                    f"(stages.stalled_after_s = {self._stalled_after_s:g})"
                )
            elif t is not None and t.set_aside_recent:
                state = "set_aside"
                reason = (
                    f"set aside {t.set_aside_recent} record(s) in the last "
                    f"{RECENT_S / 60:g} minutes (`clew dlq list --reason stage_failure`); "
                    f"last: {t.last_set_aside}"
                )
            first = p.counts[0] if p.counts else (0.0, counts[STAGE_FAILURES], 0)
            out[name] = {
                "alive": is_alive,
                "status": state,
                "reason": reason,
                "errors": counts[STAGE_FAILURES],
                "set_aside": counts[RECORDS_SET_ASIDE],
                "lag": p.lag,
                "failures_5m": max(0, counts[STAGE_FAILURES] - first[1]),
                "conflicts_5m": max(0, counts[STAGE_CONFLICTS] - first[2]),
            }
        return out


def overall(
    stages: Mapping[str, Mapping[str, Any]],
    dependencies: Mapping[str, Mapping[str, Any]],
    *,
    alive: bool = True,
    degraded: bool = False,
) -> tuple[bool, str]:
    """``ok`` and ``status`` of a process from its parts: ``ok`` while the process and
    every stage run; ``status`` ``down`` when not, ``degraded`` when a stage is not ``ok``,
    a dependency does not answer or ``degraded`` says so, else ``ok``."""
    ok = alive and all(s["alive"] for s in stages.values())
    trouble = (
        degraded
        or any(s["status"] != "ok" for s in stages.values())
        or any(not d["ok"] for d in dependencies.values())
    )
    return ok, "down" if not ok else "degraded" if trouble else "ok"
