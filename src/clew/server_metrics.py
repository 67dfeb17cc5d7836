"""The ``/metrics`` text of `clew serve`: the collector's, the stages' and the stores' metric
families, in the Prometheus text format (rendered by :func:`clew.collector.metrics.render`,
the one renderer `clew collector` uses too)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clew.collector.metrics import (
    Family,
    collector_families,
    dependency_family,
    render,
    suppressed_family,
)
from clew.destinations import Destinations
from clew.destinations import metric_families as destination_metric_families
from clew.lake.lifecycle import LifecycleScheduler
from clew.log.base import Log
from clew.monitor import read_status
from clew.privacy.requests import STATUSES
from clew.privacy.runner import PrivacyRunner
from clew.stages._counters import CounterStore
from clew.stages.runner import RECORDS_SET_ASIDE, STAGE_CONFLICTS, STAGE_FAILURES
from clew.topics import DLQ_TOPIC, STAGE_NAMES, STAGE_TOPICS


@dataclass(frozen=True, slots=True)
class MetricSources:
    """What the families are read from, all of one `clew serve` process."""

    collector: Counter[str]
    counters: CounterStore
    privacy: PrivacyRunner
    log: Log
    lifecycle: LifecycleScheduler
    monitor_path: Path
    outbox_path: Path
    destinations: Destinations
    dependencies: Mapping[str, Mapping[str, Any]] | None = None
    # (group, topic, partition, lag) as the stage watch last sampled it, given while a service
    # is away: /metrics then never waits on Kafka (the dlq topic's size is left out); None:
    # ask the log.
    lag: Sequence[tuple[str, str, int, int]] | None = None


def metrics_text(sources: MetricSources) -> str:
    """Every family of `clew serve`'s ``/metrics``, in this order."""
    validate = sources.counters.read("validate")
    profiles = sources.counters.read("profiles")
    return render(
        [
            *collector_and_suppressed(sources.collector, validate),
            *privacy_families(
                sources.privacy.requests.counts(), sources.privacy.suppressions.counts()
            ),
            *validate_families(validate),
            *profiles_families(profiles),
            *audience_families(profiles),
            *(
                stage_families(sources.counters, sources.log)
                if sources.lag is None
                else stage_counter_families(sources.counters, STAGE_NAMES)
            ),
            consumer_lag(sources.log) if sources.lag is None else lag_family(sources.lag),
            *read_status(sources.monitor_path).metric_families(),
            *destination_metric_families(sources.outbox_path, sources.destinations),
            *sources.lifecycle.metric_families(),
            *([] if sources.dependencies is None else [dependency_family(sources.dependencies)]),
        ]
    )


def collector_and_suppressed(collector: Counter[str], validate: Counter[str]) -> list[Family]:
    """The collector's families, its sample of suppressed events next to the validate
    stage's."""
    return [
        *collector_families(collector),
        suppressed_family(
            [
                ('{stage="collector"}', collector["events_suppressed"]),
                ('{stage="validate"}', validate["suppressed"]),
            ]
        ),
    ]


def privacy_families(requests: Counter[str], suppressed: Counter[str]) -> list[Family]:
    """Data-subject requests by status; identifiers on the suppression list by kind."""
    return [
        (
            "clew_privacy_requests",
            "gauge",
            "Data-subject requests, by status",
            [(f'{{status="{s}"}}', requests[s]) for s in STATUSES],
        ),
        (
            "clew_suppressed_identifiers",
            "gauge",
            "Identifiers on the suppression list (temporary: held by a running deletion)",
            [(f'{{kind="{k}"}}', suppressed[k]) for k in ("permanent", "temporary")],
        ),
    ]


def validate_families(v: Counter[str]) -> list[Family]:
    """The validate stage's events by outcome, its rejections by reason, its batch time."""
    outcomes = ("events", "duplicates", "violations", "omitted_properties")
    routed: list[tuple[str, float]] = [(f'{{outcome="{k}"}}', v[k]) for k in outcomes if k in v]
    routed += [(f'{{outcome="{k}"}}', n) for k, n in sorted(v.items()) if k.startswith("dlq_")]
    return [
        (
            "clew_validate_events_total",
            "counter",
            "Events routed by the validate stage, by outcome",
            routed,
        ),
        (
            "clew_rejected_events_total",
            "counter",
            "Events sent to the dead-letter queue, by reason",
            [
                (f'{{reason="{k.removeprefix("dlq_")}"}}', n)
                for k, n in sorted(v.items())
                if k.startswith("dlq_")
            ],
        ),
        (
            "clew_validate_batch_seconds",
            "summary",
            "Time the validate stage spends per polled batch",
            [("_sum", v["validate_us"] / 1e6), ("_count", v["validate_batches"])],
        ),
    ]


def profiles_families(pr: Counter[str]) -> list[Family]:
    """The profiles stage's events by outcome and its identity-resolution counts."""
    outcomes = ("applied", "already_applied", "unresolved", "undecodable")
    return [
        (
            "clew_profiles_events_total",
            "counter",
            "Events read by the profiles stage, by outcome",
            [(f'{{outcome="{k}"}}', pr[k]) for k in outcomes],
        ),
        (
            "clew_profiles_merges_total",
            "counter",
            "Profiles merged into another by identity resolution",
            [("", pr["merges"])],
        ),
        (
            "clew_profiles_dropped_identifiers_total",
            "counter",
            "Identifiers an event carried that a rule kept out of its profile",
            [("", pr["dropped_identifiers"])],
        ),
        (
            "clew_profiles_repairs_total",
            "counter",
            "Contested components re-derived in event-time order after an event arrived late",
            [("", pr["repairs"])],
        ),
        (
            "clew_profiles_repairs_skipped_total",
            "counter",
            "Contested components left in arrival order (a history at its cap, or too large)",
            [("", pr["repairs_skipped"])],
        ),
    ]


def audience_families(pr: Counter[str]) -> list[Family]:
    """The profiles stage's audience work, then its time per batch."""
    return [
        (
            "clew_audience_changes_total",
            "counter",
            "Audience and computed-trait change records the profiles stage announced",
            [("", pr["audience_changes"])],
        ),
        (
            "clew_audience_timers_fired_total",
            "counter",
            "Per-profile timers that fired (a window moved, a funnel matured)",
            [("", pr["audience_timers_fired"])],
        ),
        (
            "clew_audience_backfilled_events_total",
            "counter",
            "History events read to backfill new definitions",
            [("", pr["audience_backfilled_events"])],
        ),
        (
            "clew_profiles_batch_seconds",
            "summary",
            "Time the profiles stage spends per polled batch",
            [("_sum", pr["batch_us"] / 1e6), ("_count", pr["batches"])],
        ),
    ]


def stage_families(counters: CounterStore, log: Log) -> list[Family]:
    """The dead-letter topic's size, and per stage: shredded records skipped, failures (also
    under their earlier name), records set aside and conflicts."""
    return [dlq_family(log), *stage_counter_families(counters, STAGE_NAMES)]


def dlq_family(log: Log) -> Family:
    """Records in the dead-letter topic."""
    dlq_end = log.end_offsets(DLQ_TOPIC)
    dlq_start = log.start_offsets(DLQ_TOPIC)
    return (
        "clew_dlq_records",
        "gauge",
        "Records in the dead-letter topic (within log retention)",
        [("", sum(dlq_end[p] - dlq_start[p] for p in dlq_end))],
    )


def stage_counter_families(counters: CounterStore, groups: Sequence[str]) -> list[Family]:
    """Per stage of ``groups``: shredded records skipped, failures (also under their earlier
    name), records set aside and conflicts."""
    per_stage = {g: counters.read(g) for g in groups}

    def samples(key: str) -> list[tuple[str, float]]:
        return [(f'{{stage="{g}"}}', per_stage[g][key]) for g in groups]

    failures = samples(STAGE_FAILURES)
    return [
        (
            "clew_shredded_records_total",
            "counter",
            "Kafka records a stage skipped because their person's data key was destroyed",
            samples("shredded_records"),
        ),
        (
            "clew_stage_failures_total",
            "counter",
            "Attempts of a stage that failed (it resumes at its last commit)",
            failures,
        ),
        (
            "clew_stage_errors_total",
            "counter",
            "The same count as clew_stage_failures_total, under its earlier name",
            failures,
        ),
        (
            "clew_records_set_aside_total",
            "counter",
            "Records a stage could not process and set aside to the dlq",
            samples(RECORDS_SET_ASIDE),
        ),
        (
            "clew_stage_conflicts_total",
            "counter",
            "Attempts of a stage that met another writer's concurrent commit and ran again "
            "(expected with several workers on one store; not failures)",
            samples(STAGE_CONFLICTS),
        ),
    ]


def consumer_lag(log: Log) -> Family:
    """Records each stage has not committed yet, per group, topic and partition."""
    behind: list[tuple[str, str, int, int]] = []
    for group, topics in STAGE_TOPICS.items():
        for topic in topics:
            info = log.lag(group, topic)
            for p, end in sorted(info.end.items()):
                behind.append((group, topic, p, max(0, end - info.committed.get(p, 0))))
    return lag_family(behind)


def lag_family(behind: Sequence[tuple[str, str, int, int]]) -> Family:
    """``clew_consumer_lag`` of (group, topic, partition, records not committed) rows, each a
    whole number (as it always was; scripts read it as one)."""
    lag: list[tuple[str, float]] = [
        (f'{{group="{g}",topic="{t}",partition="{p}"}}', n) for g, t, p, n in behind
    ]
    return ("clew_consumer_lag", "gauge", "Records not yet committed by a stage", lag)
