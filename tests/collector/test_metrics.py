"""`clew collector` and `clew serve` publish the collector's counters under the same metric
names, so one dashboard query sums them across every instance."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from clew.background import BackgroundServer
from clew.collector.process import CollectorProcess
from clew.config import Settings


def _families(text: str) -> dict[str, set[str]]:
    """Metric name -> the label sets of its samples."""
    out: dict[str, set[str]] = {n: set() for n in re.findall(r"^# TYPE (\S+) ", text, re.M)}
    for name, labels in re.findall(r"^(clew_[a-z_]+)(\{[^}]*\})? ", text, re.MULTILINE):
        out.setdefault(name, set()).add(labels)
    return out


def test_a_collector_and_serve_name_the_collector_counters_alike(
    tmp_path: Path, server: BackgroundServer
) -> None:
    process = CollectorProcess(Settings(data_dir=tmp_path / "collector"))
    try:
        process.collector.counters.update(
            {"requests_accepted": 3, "events_accepted": 7, "events_suppressed": 2,
             "refused_invalid_json": 1}
        )  # fmt: skip
        alone = process.metrics_text()
    finally:
        process.close()
    served = _families(httpx.get(server.url + "/metrics").text)
    assert 'clew_suppressed_events_total{stage="collector"} 2' in alone
    assert 'clew_collector_refused_total{code="invalid_json"} 1' in alone
    assert "clew_collector_events_total 7" in alone
    for name, labels in _families(alone).items():
        if name == "clew_collector_suppressed_events_total":
            continue  # the earlier name, kept for dashboards that use it
        assert name in served, name
        assert labels <= served[name] | {'{code="invalid_json"}'}, (name, labels)
