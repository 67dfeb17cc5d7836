"""Clocks: what "now" is for windows, audiences and timers.

Production uses :class:`SystemClock`. :class:`ScaledClock` runs time faster than real time for
demos and end-to-end tests (``CLEW_CLOCK__SPEED=3600`` makes an hour pass in a second); its
anchor is kept in the data directory so that every process of one ``clew serve`` agrees on the
time and a restart continues where the clock was, instead of going back. :class:`ManualClock`
moves only when a test tells it to.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from clew._datadir import CLOCK_FILE


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch, in this clock's time."""
        ...


class ClockSettings(BaseModel):
    """``speed``: clock seconds per real second (1 is the real clock)."""

    model_config = ConfigDict(extra="forbid")

    speed: float = Field(
        default=1.0, gt=0, description="Clock seconds per real second (1 is the real clock)."
    )


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that stands still until :meth:`advance` or :meth:`set` moves it."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ms: int) -> int:
        with self._lock:
            self._now += ms
            return self._now

    def set(self, ms: int) -> None:
        with self._lock:
            self._now = ms


class ScaledClock:
    """``speed`` times faster than real time from an anchor (real ms, clock ms)."""

    def __init__(self, speed: float, anchor_real_ms: int, anchor_clock_ms: int) -> None:
        self.speed = speed
        self._real = anchor_real_ms
        self._clock = anchor_clock_ms

    def now_ms(self) -> int:
        return self._clock + int((time.time_ns() // 1_000_000 - self._real) * self.speed)

    @classmethod
    def anchored(cls, speed: float, path: Path) -> ScaledClock:
        """The clock anchored in ``path``: created there (now, real time) on first use, or with
        a different speed; otherwise continued, so it never goes back across restarts."""
        try:
            saved = json.loads(path.read_text())
            if float(saved["speed"]) == speed:
                return cls(speed, int(saved["real_ms"]), int(saved["clock_ms"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        now = time.time_ns() // 1_000_000
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"speed": speed, "real_ms": now, "clock_ms": now}))
        tmp.replace(path)
        return cls(speed, now, now)


def clock_for(settings: ClockSettings, data_dir: Path) -> Clock:
    if settings.speed == 1.0:
        return SystemClock()
    return ScaledClock.anchored(settings.speed, data_dir / CLOCK_FILE)


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
