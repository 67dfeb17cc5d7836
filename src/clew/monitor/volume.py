"""Volume monitors, the pure part: the series, the baseline an hour is compared with, and
whether the difference is an alert (which series a record counts in:
:mod:`clew.monitor.records`). No I/O and no clock; the monitor
stage (:mod:`clew.stages.monitor`) stores the hourly counts and calls :func:`assess_group`
when an hour closes.

A series is (event name, source and app version); every event also counts in its event's
rollup series, app version ``"*"``. Each hour of event time holds two counts: events
accepted (topic ``events``) and events dead-lettered (topic ``dlq``).

>>> policy = MonitorPolicy()
>>> flat = SeriesHistory(0, {b: HourCount(accepted=200) for b in range(24 * 8)})
>>> assess(flat, 24 * 8 - 1, policy).status
'ok'
>>> dropped = SeriesHistory(0, {**flat.counts, 24 * 8 - 1: HourCount(accepted=150)})
>>> a = assess(dropped, 24 * 8 - 1, policy)
>>> (a.status, a.direction, a.expected, a.change_pct)
('alert', 'drop', 200.0, -25.0)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from clew.config.monitor import NOT_POLICY, MonitorSettings, monitor_problem

HOUR_S = 3600
ALL_VERSIONS = "*"
UNKNOWN = "unknown"

VOLUME = "volume"
DLQ_SHARE = "dlq_share"
DROP = "drop"
SPIKE = "spike"


class MonitorPolicyError(ValueError):
    """A monitor setting cannot be used; the message says which one to fix."""


@dataclass(frozen=True, slots=True)
class MonitorPolicy:
    """How expected volumes are computed and what counts as an alert.

    - ``threshold_pct``: a change of at least this much (in either direction) is an alert.
    - ``min_expected``: no alert unless the expected volume of the hour is at least this, so
      tiny series do not flap.
    - ``noise_z``: a change must also exceed this many standard deviations of Poisson noise
      (``sqrt(expected)``); 0 turns the guard off. At 100 events an hour, a 15% change is
      1.5 standard deviations, which happens by chance several times a day.
    - Baselines, first that applies: the median of the same hour on the same weekday over the
      previous ``weekly_weeks`` weeks once ``min_weekly_weeks`` of them exist; else the
      median of the same hour over the previous ``seasonal_days`` days once one exists; else
      the mean of the previous ``trailing_hours`` hours once ``min_trailing_hours`` of them
      exist; else none (the series is learning).
    - ``grace``: an hour closes, and is judged, this long after its end.
    - ``catch_up_hours``: after downtime, at most this many of the latest closed hours are
      judged; older ones are skipped, because the log may no longer hold their events.
    """

    threshold_pct: float = 15.0
    min_expected: float = 20.0
    noise_z: float = 3.0
    seasonal_days: int = 7
    weekly_weeks: int = 4
    min_weekly_weeks: int = 2
    trailing_hours: int = 24
    min_trailing_hours: int = 3
    grace: timedelta = timedelta(minutes=5)
    catch_up_hours: int = 24

    def __post_init__(self) -> None:
        # The same checks as the [monitor] settings, so a policy built in code fails alike.
        problem = monitor_problem(
            threshold_pct=self.threshold_pct,
            min_expected=self.min_expected,
            noise_z=self.noise_z,
            seasonal_days=self.seasonal_days,
            weekly_weeks=self.weekly_weeks,
            min_weekly_weeks=self.min_weekly_weeks,
            trailing_hours=self.trailing_hours,
            min_trailing_hours=self.min_trailing_hours,
            grace_minutes=self.grace / timedelta(minutes=1),
            catch_up_hours=self.catch_up_hours,
        )
        if problem is not None:
            raise MonitorPolicyError(problem)

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> MonitorPolicy:
        """The policy of the ``[monitor]`` settings (checked when they were loaded)."""
        fields = settings.model_dump(exclude={"grace_minutes", *NOT_POLICY})
        return cls(**fields, grace=timedelta(minutes=settings.grace_minutes))

    @property
    def threshold(self) -> float:
        return self.threshold_pct / 100

    @property
    def lookback_hours(self) -> int:
        """How far back a baseline reaches; older counts can be pruned."""
        return max(self.weekly_weeks * 168, self.seasonal_days * 24, self.trailing_hours)


# -- series keys and records -------------------------------------------------------------


class SeriesKey(NamedTuple):
    event_name: str
    source_id: str
    app_version: str

    @property
    def rollup(self) -> SeriesKey:
        return SeriesKey(self.event_name, self.source_id, ALL_VERSIONS)


def hour_of(moment: datetime) -> int:
    """The hour bucket (hours since the Unix epoch, UTC) that ``moment`` falls in; a naive
    ``moment`` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp()) // HOUR_S


def hour_start(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket * HOUR_S, UTC)


# -- baselines and verdicts --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourCount:
    accepted: int = 0
    dlq: int = 0

    @property
    def received(self) -> int:
        return self.accepted + self.dlq


_NONE = HourCount()


@dataclass(frozen=True, slots=True)
class SeriesHistory:
    """A series' hourly counts (missing hours count zero) and the first hour it was seen.
    That first hour is usually partial, so volume baselines never use it."""

    first_bucket: int
    counts: Mapping[int, HourCount] = field(default_factory=dict)

    def at(self, bucket: int) -> HourCount:
        return self.counts.get(bucket, _NONE)


@dataclass(frozen=True, slots=True)
class Baseline:
    expected: float
    method: str


def baseline(
    history: SeriesHistory,
    bucket: int,
    policy: MonitorPolicy,
    value: Callable[[HourCount], int] = lambda c: c.accepted,
) -> Baseline | None:
    """The expected ``value`` of ``bucket`` (see :class:`MonitorPolicy`), or ``None`` while
    the series has too little history.

    The trailing mean ignores the daily shape, which is why it is only a fallback for series
    younger than a day, never mixed into a seasonal baseline: mixed in, it makes every quiet
    night hour look like a drop.
    """

    def known(buckets: Sequence[int]) -> tuple[int, ...]:
        return tuple(b for b in buckets if b > history.first_bucket)

    def values(buckets: Sequence[int]) -> list[int]:
        return [value(history.at(b)) for b in buckets]

    weekly = known([bucket - 168 * w for w in range(1, policy.weekly_weeks + 1)])
    if policy.weekly_weeks and len(weekly) >= policy.min_weekly_weeks:
        return Baseline(float(statistics.median(values(weekly))), "weekly")
    daily = known([bucket - 24 * d for d in range(1, policy.seasonal_days + 1)])
    if daily:
        return Baseline(float(statistics.median(values(daily))), "seasonal")
    trailing = known(range(bucket - policy.trailing_hours, bucket))
    if len(trailing) >= policy.min_trailing_hours:
        return Baseline(statistics.fmean(values(trailing)), "trailing")
    return None


def expected_dlq_share(history: SeriesHistory, bucket: int, policy: MonitorPolicy) -> float:
    """The dead-lettered share of the previous ``trailing_hours`` (0 when fewer than
    ``min_expected`` events arrived in them, so a series that fails from its first hour is
    still caught in its second)."""
    start = max(history.first_bucket, bucket - policy.trailing_hours)
    received = dlq = 0
    for b in range(start, bucket):
        c = history.at(b)
        received += c.received
        dlq += c.dlq
    return dlq / received if received >= policy.min_expected else 0.0


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdict on one series for one closed hour.

    ``status``: ``alert`` (a new alert), ``ongoing`` (still out of bounds in the same
    direction as the previous hour's alert: not alerted again), ``version_shift`` (the volume
    moved to or from other app versions of the same event), ``ok``, ``low_volume`` (expected
    below ``min_expected``) or ``learning`` (no baseline yet).

    ``expected``/``change_pct`` compare accepted volumes: with the baseline for a volume
    signal, and with what was expected to be accepted of what arrived (``received * (1 -
    expected_dlq_share)``) for a DLQ-share signal alone.
    """

    bucket: int
    status: str
    observed: int
    dlq: int
    expected: float | None = None
    change_pct: float | None = None
    direction: str | None = None
    signals: tuple[str, ...] = ()
    baseline: str | None = None
    dlq_share: float = 0.0
    expected_dlq_share: float = 0.0
    # Received (accepted + dead-lettered) minus its baseline; all of it while learning.
    received_delta: float = 0.0

    @property
    def alerting(self) -> bool:
        return self.status in ("alert", "ongoing")


def _pct(observed: float, expected: float) -> float:
    return round((observed - expected) / expected * 100, 2)


def assess(history: SeriesHistory, bucket: int, policy: MonitorPolicy) -> Assessment:
    """Judge ``bucket`` of one series on its own (see :class:`Assessment`)."""
    now = history.at(bucket)
    observed, received = now.accepted, now.received
    # A small tolerance so that "15% down" is 15% down despite binary fractions.
    threshold = policy.threshold - 1e-9
    z = policy.noise_z

    volume = baseline(history, bucket, policy)
    volume_signal = False
    if volume is not None and volume.expected >= policy.min_expected:
        gap = observed - volume.expected
        volume_signal = abs(gap) / volume.expected >= threshold and abs(gap) >= z * math.sqrt(
            volume.expected
        )

    share = expected_dlq_share(history, bucket, policy)
    accept_expected = received * (1 - share)
    dlq_signal = False
    if accept_expected >= policy.min_expected:
        gap = accept_expected - observed
        dlq_signal = gap / accept_expected >= threshold and gap >= z * math.sqrt(
            received * share * (1 - share)
        )

    received_base = baseline(history, bucket, policy, lambda c: c.received)
    received_delta = received - (received_base.expected if received_base else 0.0)

    signals = tuple(name for name, on in ((VOLUME, volume_signal), (DLQ_SHARE, dlq_signal)) if on)
    expected = volume.expected if volume is not None else None
    direction = None
    if volume_signal:
        assert volume is not None
        direction = DROP if observed < volume.expected else SPIKE
    elif dlq_signal:
        expected, direction = accept_expected, DROP
    if signals:
        status = "alert"
    elif volume is None:
        status = "learning"
    elif volume.expected < policy.min_expected:
        status = "low_volume"
    else:
        status = "ok"
    return Assessment(
        bucket=bucket,
        status=status,
        observed=observed,
        dlq=now.dlq,
        expected=round(expected, 2) if expected is not None else None,
        change_pct=_pct(observed, expected) if expected else None,
        direction=direction,
        signals=signals,
        baseline=volume.method if volume is not None else None,
        dlq_share=round(now.dlq / received, 4) if received else 0.0,
        expected_dlq_share=round(share, 4),
        received_delta=received_delta,
    )


def _without_volume_signal(a: Assessment) -> Assessment:
    if DLQ_SHARE in a.signals:
        # Keep the DLQ-share verdict, with its own expected value.
        share = a.expected_dlq_share
        received = a.observed + a.dlq
        expected = received * (1 - share)
        return replace(
            a,
            signals=(DLQ_SHARE,),
            direction=DROP,
            expected=round(expected, 2),
            change_pct=_pct(a.observed, expected),
        )
    return replace(a, status="version_shift", signals=(), direction=None)


def assess_group(
    bucket: int, versions: Mapping[str, SeriesHistory], policy: MonitorPolicy
) -> dict[str, Assessment]:
    """Judge ``bucket`` of every app version of one (event name, source), keyed as given
    (``ALL_VERSIONS`` for the rollup).

    A version's volume change is not alerted when the other versions moved the opposite way
    by at least ``(1 - threshold)`` of it (received events, dead-lettered included): users
    upgrading move volume from the old version to the new one every release. The rollup is
    never explained away, and DLQ-share signals never are.
    """
    out = {v: assess(h, bucket, policy) for v, h in versions.items()}
    real = [v for v in out if v != ALL_VERSIONS]
    for v in real:
        a = out[v]
        if VOLUME not in a.signals or a.expected is None:
            continue
        gap = a.observed - a.expected
        moved = sum(
            out[o].received_delta for o in real if o != v and (out[o].received_delta * gap) < 0
        )
        if abs(moved) >= (1 - policy.threshold) * abs(gap):
            out[v] = _without_volume_signal(a)
    return out


def settle_repeats(
    current: Assessment, previous_bucket: int | None, previous_direction: str | None
) -> Assessment:
    """Mark ``current`` as ``ongoing`` (no new alert) when the series already alerted in the
    same direction for the hour before: one alert per incident, not one an hour."""
    if (
        current.status == "alert"
        and previous_bucket == current.bucket - 1
        and previous_direction == current.direction
    ):
        return replace(current, status="ongoing")
    return current
