"""Baselines and verdicts of the volume monitors (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest

from clew.monitor.records import RecordReader
from clew.monitor.volume import (
    ALL_VERSIONS,
    DLQ_SHARE,
    VOLUME,
    HourCount,
    MonitorPolicy,
    MonitorPolicyError,
    SeriesHistory,
    SeriesKey,
    assess,
    assess_group,
    hour_of,
    settle_repeats,
)

POLICY = MonitorPolicy()
# Monday 2026-03-02 00:00 UTC.
MONDAY = hour_of(datetime(2026, 3, 2, tzinfo=UTC))


def history(
    per_hour: Callable[[int], int | HourCount], days: float, *, start: int = MONDAY
) -> SeriesHistory:
    """``days`` of hourly counts from ``start``; ``per_hour(bucket)`` gives accepted events."""
    counts = {}
    for b in range(start, start + int(days * 24)):
        v = per_hour(b)
        counts[b] = v if isinstance(v, HourCount) else HourCount(accepted=v)
    return SeriesHistory(start, counts)


def with_hour(h: SeriesHistory, bucket: int, count: HourCount | int) -> SeriesHistory:
    value = count if isinstance(count, HourCount) else HourCount(accepted=count)
    return SeriesHistory(h.first_bucket, {**h.counts, bucket: value})


def diurnal(b: int) -> int:
    """Quiet nights (30 events at 03:00), busy afternoons (1000 at 15:00)."""
    hour = b % 24
    return {2: 40, 3: 30, 4: 40}.get(hour, 1000 if 12 <= hour <= 18 else 300)


def test_a_series_always_low_at_3am_does_not_alert_at_3am() -> None:
    h = history(diurnal, 7)
    three_am = MONDAY + 7 * 24 + 3
    verdict = assess(with_hour(h, three_am, 30), three_am, POLICY)
    assert verdict.status == "ok"
    assert verdict.baseline == "seasonal"
    assert verdict.expected == 30
    # The trailing day's mean alone, which knows nothing of the night, would call it a drop.
    young = SeriesHistory(three_am - 20, {b: c for b, c in h.counts.items() if b > three_am - 20})
    assert assess(with_hour(young, three_am, 30), three_am, POLICY).direction == "drop"


def test_a_15pct_drop_in_the_afternoon_alerts_and_14pct_does_not() -> None:
    h = history(diurnal, 7)
    afternoon = MONDAY + 7 * 24 + 15
    verdict = assess(with_hour(h, afternoon, 850), afternoon, POLICY)
    assert (verdict.status, verdict.direction, verdict.signals) == ("alert", "drop", (VOLUME,))
    assert (verdict.expected, verdict.observed, verdict.change_pct) == (1000, 850, -15.0)
    assert assess(with_hour(h, afternoon, 860), afternoon, POLICY).status == "ok"


def test_a_spike_alerts() -> None:
    h = history(diurnal, 7)
    afternoon = MONDAY + 7 * 24 + 14
    verdict = assess(with_hour(h, afternoon, 1300), afternoon, POLICY)
    assert (verdict.status, verdict.direction, verdict.change_pct) == ("alert", "spike", 30.0)


def test_below_the_minimum_expected_volume_nothing_alerts() -> None:
    h = history(lambda b: 12, 7)
    b = MONDAY + 7 * 24 + 10
    verdict = assess(with_hour(h, b, 0), b, POLICY)
    assert (verdict.status, verdict.signals) == ("low_volume", ())


def test_a_change_within_chance_does_not_alert_unless_the_guard_is_off() -> None:
    # 100 an hour: 80 is -20%, but only 2 standard deviations of Poisson noise.
    h = history(lambda b: 100, 7)
    b = MONDAY + 7 * 24 + 10
    assert assess(with_hour(h, b, 80), b, POLICY).status == "ok"
    assert assess(with_hour(h, b, 80), b, MonitorPolicy(noise_z=0)).status == "alert"
    assert assess(with_hour(h, b, 65), b, POLICY).status == "alert"


def test_a_young_series_falls_back_to_the_trailing_mean_then_learns_nothing_before() -> None:
    h = history(lambda b: 200, 0.5)
    b = MONDAY + 12
    verdict = assess(with_hour(h, b, 100), b, POLICY)
    assert (verdict.status, verdict.baseline, verdict.expected) == ("alert", "trailing", 200)
    # Two hours old: the first (partial) hour does not count, one full hour is too little.
    assert assess(with_hour(h, MONDAY + 2, 0), MONDAY + 2, POLICY).status == "learning"


def test_weekends_are_compared_with_weekends_once_two_weeks_are_known() -> None:
    def weekly(b: int) -> int:
        return 500 if ((b - MONDAY) // 24) % 7 >= 5 else 1000

    saturday = MONDAY + 21 * 24 + 5 * 24 + 14
    h = history(weekly, 26)
    verdict = assess(with_hour(h, saturday, 500), saturday, POLICY)
    assert (verdict.status, verdict.baseline, verdict.expected) == ("ok", "weekly", 500)
    # With one week known, the median of the last seven days is a weekday's.
    one_week = SeriesHistory(saturday - 8 * 24, h.counts)
    assert assess(with_hour(one_week, saturday, 500), saturday, POLICY).status == "alert"


def test_a_new_series_that_is_dead_lettered_alerts_once_on_its_dlq_share() -> None:
    start = MONDAY + 100
    failing = HourCount(accepted=0, dlq=60)
    h = SeriesHistory(start, {start: failing, start + 1: failing})
    first = assess(h, start, POLICY)
    assert (first.status, first.signals, first.direction) == ("alert", (DLQ_SHARE,), "drop")
    assert (first.expected, first.observed, first.change_pct, first.dlq) == (60, 0, -100.0, 60)
    # An hour later, failing is what this series does: no new jump.
    assert assess(h, start + 1, POLICY).status == "learning"


def test_a_jump_in_the_dead_lettered_share_alerts_even_when_accepted_volume_holds() -> None:
    h = history(lambda b: HourCount(accepted=950, dlq=50), 7)
    b = MONDAY + 7 * 24 + 15
    both = assess(with_hour(h, b, HourCount(accepted=760, dlq=240)), b, POLICY)
    assert both.signals == (VOLUME, DLQ_SHARE)
    assert (both.expected_dlq_share, both.dlq_share) == (0.05, 0.24)
    # More arrived (a campaign) but the extra was dead-lettered: accepted looks normal.
    hidden = assess(with_hour(h, b, HourCount(accepted=950, dlq=250)), b, POLICY)
    assert (hidden.signals, hidden.direction) == ((DLQ_SHARE,), "drop")
    assert (hidden.expected, hidden.change_pct) == (1140, -16.67)


def _release(b: int, old: int, new: int, new_dlq: int) -> dict[str, SeriesHistory]:
    """Version 1.0 sends 1000 an hour for a week; at hour ``b`` it sends ``old`` and the new
    version 2.0 appears with ``new`` accepted and ``new_dlq`` dead-lettered."""
    v1 = with_hour(history(lambda _: 1000, 7), b, old)
    v2 = SeriesHistory(b, {b: HourCount(new, new_dlq)})
    rollup = with_hour(history(lambda _: 1000, 7), b, HourCount(old + new, new_dlq))
    return {"1.0": v1, "2.0": v2, ALL_VERSIONS: rollup}


def test_users_moving_to_a_new_version_is_not_a_drop_of_the_old_one() -> None:
    b = MONDAY + 7 * 24 + 15
    verdicts = assess_group(b, _release(b, old=600, new=400, new_dlq=0), POLICY)
    assert verdicts["1.0"].status == "version_shift"
    assert verdicts["2.0"].status == "learning"
    assert verdicts[ALL_VERSIONS].status == "ok"


def test_a_new_version_failing_validation_is_named_and_the_total_drops() -> None:
    b = MONDAY + 7 * 24 + 15
    verdicts = assess_group(b, _release(b, old=600, new=0, new_dlq=400), POLICY)
    assert verdicts["1.0"].status == "version_shift"
    new = verdicts["2.0"]
    assert (new.status, new.signals, new.change_pct) == ("alert", (DLQ_SHARE,), -100.0)
    total = verdicts[ALL_VERSIONS]
    assert (total.status, total.signals, total.change_pct) == ("alert", (VOLUME, DLQ_SHARE), -40.0)


def test_a_small_version_that_stops_is_not_hidden_by_the_total() -> None:
    b = MONDAY + 7 * 24 + 15
    big = history(lambda _: 900, 7)
    small = with_hour(history(lambda _: 100, 7), b, 0)
    rollup = with_hour(history(lambda _: 1000, 7), b, 900)
    verdicts = assess_group(b, {"1.0": big, "0.9": small, ALL_VERSIONS: rollup}, POLICY)
    assert verdicts["0.9"].status == "alert"
    assert verdicts[ALL_VERSIONS].status == "ok"


def test_an_alert_continuing_in_the_same_direction_is_not_raised_again() -> None:
    h = history(diurnal, 7)
    b = MONDAY + 7 * 24 + 15
    current = assess(with_hour(h, b, 500), b, POLICY)
    assert settle_repeats(current, b - 1, "drop").status == "ongoing"
    assert settle_repeats(current, b - 1, "spike").status == "alert"
    assert settle_repeats(current, b - 2, "drop").status == "alert"
    assert settle_repeats(current, b - 1, None).status == "alert"


def test_records_are_keyed_by_event_source_and_app_version() -> None:
    reader = RecordReader()
    track = {
        "type": "track",
        "event": "order_completed",
        "sourceId": "web",
        "timestamp": "2026-03-02T10:59:59.999Z",
        "receivedAt": "2026-03-02T11:00:00.100Z",
        "context": {"app": {"version": "2.0"}, "library": {"name": "ios", "version": "9"}},
    }
    obs = reader.event(orjson.dumps(track))
    assert obs is not None
    assert (obs.key, obs.bucket) == (SeriesKey("order_completed", "web", "2.0"), MONDAY + 10)
    page = {
        **track,
        "type": "page",
        "context": {"library": {"name": "analytics.js", "version": "5"}},
    }
    page_obs = reader.event(orjson.dumps(page))
    assert page_obs is not None
    assert page_obs.key == SeriesKey("page", "web", "analytics.js/5")
    dead = {
        "reason": "schema_violation",
        "message": "properties.revenue is required",
        "payload": orjson.dumps({**track, "context": {"app": {"version": 3}}}).decode(),
        "source_id": "web",
        "received_at": "2026-03-02T12:00:00+00:00",
        "event_type": "track",
        "event_name": "order_completed",
    }
    dead_obs = reader.dead_letter(orjson.dumps(dead))
    assert dead_obs is not None
    assert (dead_obs.key, dead_obs.bucket) == (
        SeriesKey("order_completed", "web", "3"),
        MONDAY + 12,
    )
    assert (dead_obs.dead, dead_obs.dlq_reason) == (True, "schema_violation")
    unreadable = reader.dead_letter(
        orjson.dumps({**dead, "payload": "{not json", "event_name": None})
    )
    assert unreadable is not None
    assert unreadable.key == SeriesKey("track", "web", "unknown")
    assert reader.event(b"not json") is None


def test_an_unusable_policy_is_refused_with_the_setting_to_fix() -> None:
    with pytest.raises(MonitorPolicyError, match="threshold_pct"):
        MonitorPolicy(threshold_pct=0)
