"""Destination figures for ``/metrics`` and the console, read from this machine's outbox file
(safe from any process while the destinations stage runs) and the configured destinations
(:class:`~clew.destinations.config.Destinations`, which may be shared by every machine)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from clew._errors import ServiceUnavailableError
from clew.destinations.config import Destinations
from clew.destinations.outbox import DEAD_LETTERED, DELIVERED, OUTBOX_FULL, RETRIED
from clew.destinations.routing import CONSENT, INTEGRATIONS, NOT_SELECTED_CHANGE, NOT_SELECTED_EVENT

logger = logging.getLogger(__name__)

MetricFamily = tuple[str, str, str, list[tuple[str, float]]]

_DELIVERY_OUTCOMES = (DELIVERED, RETRIED, DEAD_LETTERED, OUTBOX_FULL)
_EVENT_OUTCOMES = (DELIVERED, DEAD_LETTERED)
_FILTER_REASONS = (CONSENT, INTEGRATIONS, NOT_SELECTED_EVENT, NOT_SELECTED_CHANGE)


def _read(path: Path) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    if not path.exists():
        return {}, {}
    db = sqlite3.connect(path, timeout=5)
    try:
        counters = {(d, n): v for d, n, v in db.execute("SELECT dest, name, value FROM counters")}
        waiting = dict(db.execute("SELECT dest, count(*) FROM items GROUP BY dest").fetchall())
        return counters, waiting
    except sqlite3.OperationalError:
        # The stage has not created its tables yet.
        return {}, {}
    finally:
        db.close()


@dataclass(frozen=True, slots=True)
class DestinationFigures:
    """One destination's counts since its outbox was created: batches by outcome, records by
    outcome, records filtered out by reason, and records waiting in its outbox."""

    name: str
    deliveries: dict[str, int]
    events: dict[str, int]
    filtered: dict[str, int]
    waiting: int


def destination_figures(outbox: Path, destinations: Destinations) -> list[DestinationFigures]:
    """Every configured destination's figures (zeros until it has traffic), and removed ones'
    while they still have counts, by name; ``outbox`` is this machine's ``destinations.db``.
    While the shared store cannot be reached, only destinations with counts here are
    listed."""
    counters, waiting = _read(outbox)
    try:
        configured = set(destinations.names())
    except ServiceUnavailableError as exc:
        logger.warning("destination figures without the configured destinations: %s", exc)
        configured = set()
    names = sorted(configured | {d for d, _ in counters} | set(waiting))

    def counts(dest: str, prefix: str, values: tuple[str, ...]) -> dict[str, int]:
        return {v: counters.get((dest, f"{prefix}:{v}"), 0) for v in values}

    return [
        DestinationFigures(
            name=d,
            deliveries=counts(d, "deliveries", _DELIVERY_OUTCOMES),
            events=counts(d, "events", _EVENT_OUTCOMES),
            filtered=counts(d, "filtered", _FILTER_REASONS),
            waiting=waiting.get(d, 0),
        )
        for d in names
    ]


def metric_families(outbox: Path, destinations: Destinations) -> list[MetricFamily]:
    """(name, type, help, [(labels, value)]) per destination metric: every configured
    destination appears (with zeros until it has traffic), and removed ones while they still
    have counts."""
    figures = destination_figures(outbox, destinations)

    def samples(kind: str, label: str) -> list[tuple[str, float]]:
        return [
            (f'{{destination="{f.name}",{label}="{v}"}}', n)
            for f in figures
            for v, n in getattr(f, kind).items()
        ]

    return [
        (
            "clew_destination_deliveries_total",
            "counter",
            "Webhook batches by outcome (retried counts failed attempts that will be retried; "
            "outbox_full counts overflow batches sent straight to the dead-letter store)",
            samples("deliveries", "outcome"),
        ),
        (
            "clew_destination_events_total",
            "counter",
            "Records in webhook batches that were delivered or dead-lettered",
            samples("events", "outcome"),
        ),
        (
            "clew_destination_filtered_total",
            "counter",
            "Records not sent to a destination, by reason (event or change: not selected by its "
            "filters; integrations: turned off in the event; consent: a category not granted)",
            samples("filtered", "reason"),
        ),
        (
            "clew_destination_outbox",
            "gauge",
            "Records waiting in a destination's outbox (including the batch being sent)",
            [(f'{{destination="{f.name}"}}', f.waiting) for f in figures],
        ),
    ]
