"""The settings of volume monitors; :class:`clew.monitor.volume.MonitorPolicy` is built from
them and checked the same way."""

from __future__ import annotations

from pydantic import Field, model_validator

from clew.config._base import Section

NOT_POLICY = frozenset({"webhook_url", "webhook_timeout_s", "webhook_retries"})
"""The monitor settings that are about sending alerts, not about judging volumes."""


def monitor_problem(
    *,
    threshold_pct: float,
    min_expected: float,
    noise_z: float,
    seasonal_days: int,
    weekly_weeks: int,
    min_weekly_weeks: int,
    trailing_hours: int,
    min_trailing_hours: int,
    grace_minutes: float,
    catch_up_hours: int,
) -> str | None:
    """The first monitor value that cannot be used, as what to change; ``None`` when all can.

    >>> monitor_problem(threshold_pct=0, min_expected=20, noise_z=3, seasonal_days=7,
    ...     weekly_weeks=4, min_weekly_weeks=2, trailing_hours=24, min_trailing_hours=3,
    ...     grace_minutes=5, catch_up_hours=24)
    'threshold_pct must be above 0'
    """
    checks = [
        (threshold_pct > 0, "threshold_pct must be above 0"),
        (min_expected >= 1, "min_expected must be at least 1"),
        (noise_z >= 0, "noise_z must be 0 or more"),
        (seasonal_days >= 1, "seasonal_days must be at least 1"),
        (weekly_weeks >= 0, "weekly_weeks must be 0 (off) or more"),
        (min_weekly_weeks >= 1, "min_weekly_weeks must be at least 1"),
        (trailing_hours >= 1, "trailing_hours must be at least 1"),
        (
            1 <= min_trailing_hours <= trailing_hours,
            "min_trailing_hours must be between 1 and trailing_hours",
        ),
        (grace_minutes >= 0, "grace must not be negative"),
        (catch_up_hours >= 1, "catch_up_hours must be at least 1"),
    ]
    return next((message for ok, message in checks if not ok), None)


class MonitorSettings(Section):
    """Volume monitors; see docs/monitoring.md for what each value does."""

    threshold_pct: float = Field(
        default=15.0, description="Change in an hour's volume, in percent either way, that alerts."
    )
    min_expected: float = Field(
        default=20.0, description="No alert below this expected volume per hour."
    )
    noise_z: float = Field(
        default=3.0,
        description="Standard deviations of chance a change must also exceed; 0 turns it off.",
    )
    seasonal_days: int = Field(
        default=7, description="Days of the same hour in the seasonal baseline."
    )
    weekly_weeks: int = Field(
        default=4,
        description="Weeks of the same weekday hour in the weekly baseline; 0 turns it off.",
    )
    min_weekly_weeks: int = Field(
        default=2, description="Weeks of history the weekly baseline needs at least."
    )
    trailing_hours: int = Field(
        default=24,
        description="Hours of the trailing baseline, the fallback for series younger than a day.",
    )
    min_trailing_hours: int = Field(
        default=3, description="Hours of history the trailing baseline needs at least."
    )
    grace_minutes: float = Field(
        default=5.0, description="Minutes to wait after an hour ends before judging it."
    )
    catch_up_hours: int = Field(default=24, description="Most missed hours judged after downtime.")
    webhook_url: str | None = Field(
        default=None, description="POST each alert as JSON here; unset: no webhook."
    )
    webhook_timeout_s: float = Field(default=5.0, description="Seconds per webhook attempt.")
    webhook_retries: int = Field(default=2, description="Webhook attempts after the first.")

    @model_validator(mode="after")
    def _usable(self) -> MonitorSettings:
        problem = monitor_problem(**self.model_dump(exclude=set(NOT_POLICY)))
        if problem is not None:
            raise ValueError(f"monitor: {problem}")
        return self
