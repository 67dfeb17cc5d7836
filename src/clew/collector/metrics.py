"""The collector's counters as Prometheus metric families, the same in `clew serve` and in
`clew collector` (each instance counts only its own requests, so sum them across instances).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

# (name, kind, help text, samples); a sample is (labels, value).
Family = tuple[str, str, str, list[tuple[str, float]]]

SUPPRESSED = "clew_suppressed_events_total"


def collector_families(counters: Counter[str]) -> list[Family]:
    """Requests and events accepted, requests refused by error code, and events of
    suppressed people dropped at the door (``stage="collector"`` of :data:`SUPPRESSED`;
    `clew serve` adds the validate stage's sample to that family)."""
    return [
        (
            "clew_collector_requests_total",
            "counter",
            "Tracking API requests accepted",
            [("", counters["requests_accepted"])],
        ),
        (
            "clew_collector_events_total",
            "counter",
            "Events accepted by the Tracking API",
            [("", counters["events_accepted"])],
        ),
        (
            "clew_collector_refused_total",
            "counter",
            "Tracking API requests refused, by error code",
            [
                (f'{{code="{k.removeprefix("refused_")}"}}', v)
                for k, v in sorted(counters.items())
                if k.startswith("refused_")
            ],
        ),
    ]


def suppressed_family(samples: list[tuple[str, float]]) -> Family:
    return (
        SUPPRESSED,
        "counter",
        "Events of suppressed people answered but not stored, by where they were dropped",
        samples,
    )


def dependency_family(state: Mapping[str, Mapping[str, Any]]) -> Family:
    """Whether each service the process needs answered its last probe, from
    :meth:`clew.dependencies.DependencyWatch.state` (every role publishes it)."""
    return (
        "clew_dependency_up",
        "gauge",
        "Whether a service this process needs answered its last probe (1) or not (0)",
        [(f'{{dependency="{name}"}}', 1 if s["ok"] else 0) for name, s in sorted(state.items())],
    )


def render(families: list[Family]) -> str:
    """The Prometheus text format of ``families``."""
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{labels} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"
