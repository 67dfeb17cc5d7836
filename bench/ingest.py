"""Ingest throughput of ``clew serve`` over HTTP, as a ratio of a bare ASGI endpoint.

Both servers run side by side on this machine: the bare endpoint (``bare_asgi.py``: read the
body, orjson-parse it, answer 200 - the ceiling of a Python HTTP server here) and ``clew
serve``. Each load from the Go load generator - 100-event batches to ``/v1/batch`` and single
events to ``/v1/track``, at a few concurrencies - is run against the bare endpoint and then
against Clew, back to back, so that other work on the machine skews both alike. Clew answers
200 only once a request is durable in its log, so its figures are durable acknowledgements;
503s are counted apart, never as success. Between loads Clew is left to drain its stages.

Also measured: ``clew serve`` RSS, in all and per process (``serve`` and each stage worker),
idle after start and at peak, sampled during each load and while the stages work off its
backlog (issue 15's targets: idle < 250 MB, peak < 600 MB); and whether every acknowledged
event reached the ``events`` lake table.

With ``--compare-http-limits`` a second ``clew serve`` runs with the HTTP limits off
(``http.enforce = false``, docs/security.md) and each load is run against it too, right after
or right before the first (alternating), so that the cost of the limits is read from the same
run: the ingest ratio with them over the ratio without.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 16,64] [--json out.json]
        [--compare-http-limits]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.table import Table

from _serve import (
    BenchError,
    RssSampler,
    Server,
    bare_server,
    build_loadgen,
    clew_server,
    console,
    create_token,
    fail,
    run_loadgen,
)

BATCH = 100
TARGET_RATIO = 0.50
TARGET_IDLE_RSS_MB = 250
TARGET_PEAK_RSS_MB = 600
# The HTTP limits may cost at most this share of the ingest ratio.
TARGET_LIMITS_COST = 0.05
LAKE_TIMEOUT_S = 120.0
MB = 1024 * 1024


def _busy_cores_since(before: Any, seconds: float) -> float:
    after = psutil.cpu_times()
    idle = (after.idle - before.idle) + (after.iowait - before.iowait)
    total = sum(after) - sum(before)
    return float(total - idle) / seconds


def measure(
    server: Server, loadgen: Path, events: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One load against one server, with the CPU it, the client and the rest of the machine
    used while it ran, and the server's peak RSS."""
    cpu_before, sys_before, t_before = server.cpu_seconds(), psutil.cpu_times(), time.monotonic()
    with RssSampler(server) as rss:
        r = run_loadgen(
            loadgen, server.url, concurrency=concurrency, seconds=seconds, events=events
        )
    elapsed = time.monotonic() - t_before
    r["server_cores"] = (server.cpu_seconds() - cpu_before) / elapsed
    r["other_cores"] = max(
        0.0, _busy_cores_since(sys_before, elapsed) - r["server_cores"] - r["client_cores"]
    )
    r["peak_rss"] = rss.peak
    r["rss_at_peak"] = rss.at_peak
    r["peak_rss_by_process"] = rss.peak_by_process
    console().print(
        f"  {server.name:5} {_load_name(events, concurrency):24} "
        f"{r['events_per_s']:>9,.0f} events/s  p99 {r['p99_ms']:7.1f} ms  "
        f"non-200 {r['non_ok']}  errors {r['errors']}"
    )
    return r


def lake_count(server: Server, token: str, expected: int) -> tuple[int, float]:
    """Poll ``SELECT count(*) FROM events`` once a second until it reaches ``expected`` or
    LAKE_TIMEOUT_S passes; returns the last count and the seconds waited."""
    headers = {"Authorization": f"Bearer {token}"}
    began = time.monotonic()
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        while True:
            resp = http.post("/v1/sql", json={"query": "SELECT count(*) FROM events"})
            if resp.status_code != 200:
                raise BenchError(f"POST /v1/sql answered {resp.status_code}: {resp.text}")
            count = int(resp.json()["rows"][0][0])
            waited = time.monotonic() - began
            if count >= expected or waited > LAKE_TIMEOUT_S:
                return count, waited
            time.sleep(1.0)


def _lake_lag(r: dict[str, Any], clew: Server, token: str, acked: int, seconds: float) -> None:
    """Record how long after the load the lake held every event acknowledged so far."""
    try:
        rows, waited = lake_count(clew, token, acked)
    except BenchError as error:
        console().print(f"[red]lake count failed[/red]: {error}")
        rows, waited = -1, 0.0
    caught_up = rows >= acked
    r["lake_lag_s"] = waited if caught_up else None
    r["lake_events_per_s"] = r["acked_events"] / (r["warmup_s"] + r["duration_s"] + waited)


def _note_peak(
    memory: dict[str, Any], peak: int, at_peak: dict[str, int], own: dict[str, int]
) -> None:
    """Fold one sampled stretch's peaks into ``memory``."""
    if peak > memory["peak_rss"]:
        memory["peak_rss"], memory["rss_at_peak"] = peak, at_peak
    mine = memory["peak_rss_by_process"]
    for name, rss in own.items():
        mine[name] = max(mine.get(name, 0), rss)


def _load_name(events: int, concurrency: int) -> str:
    kind = f"{events}-event batches" if events > 1 else "single events"
    return f"{kind}, {concurrency} conn"


def report(runs: list[tuple[dict[str, Any], dict[str, Any]]], memory: dict[str, Any]) -> None:
    out = console()
    table = Table(title="Ingest over HTTP: Clew (durable ack) vs bare ASGI + orjson ceiling")
    table.add_column("load")
    for col in (
        "bare events/s",
        "clew events/s",
        "clew/bare",
        "clew req/s",
        "bare p50/p99 ms",
        "clew p50/p99 ms",
        "clew non-200",
        "bare cores",
        "clew cores",
        "lake caught up",
        "to lake events/s",
    ):
        table.add_column(col, justify="right")
    for b, c in runs:
        statuses = ", ".join(f"{k}: {v}" for k, v in c["statuses"].items() if k != "200")
        table.add_row(
            _load_name(c["events_per_request"], c["concurrency"]),
            f"{b['events_per_s']:,.0f}",
            f"{c['events_per_s']:,.0f}",
            f"{c['events_per_s'] / b['events_per_s']:.0%}" if b["events_per_s"] else "-",
            f"{c['requests_per_s']:,.0f}",
            f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f}",
            f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f}",
            (statuses or "0") + (f", {c['errors']} errors" if c["errors"] else ""),
            _cores(b),
            _cores(c),
            f"{c['lake_lag_s']:.0f} s" if c["lake_lag_s"] is not None else "no",
            f"{c['lake_events_per_s']:,.0f}" if c["lake_lag_s"] is not None else "-",
        )
    out.print(table)
    out.print(
        "cores: CPU used while the load ran, as server (with children) / load generator / "
        "every other process on the machine.\n"
        "lake caught up: seconds after the load until every acknowledged event was counted in "
        "the `events` table; to lake events/s: the load's acknowledged events over the load's "
        "time plus that."
    )

    batch_runs = [(b, c) for b, c in runs if c["events_per_request"] > 1]
    best_bare = max(b["events_per_s"] for b, _ in batch_runs)
    best_clew = max(c["events_per_s"] for _, c in batch_runs)
    ratio = best_clew / best_bare if best_bare else 0.0
    idle_mb = memory["idle_rss"] / MB
    targets = Table(title="Targets")
    for col in ("figure", "measured", "target", ""):
        targets.add_column(col)
    targets.add_row(
        "durable ingest, 100-event batches (best clew / best bare)",
        f"{best_clew:,.0f} / {best_bare:,.0f} events/s = {ratio:.0%}",
        f">= {TARGET_RATIO:.0%}",
        _verdict(ratio >= TARGET_RATIO),
    )
    targets.add_row(
        "`clew serve` idle RSS (with its workers)",
        f"{idle_mb:.0f} MB",
        f"< {TARGET_IDLE_RSS_MB} MB",
        _verdict(idle_mb < TARGET_IDLE_RSS_MB),
    )
    peak_mb = memory["peak_rss"] / MB
    targets.add_row(
        "`clew serve` peak RSS (loads and their drains)",
        f"{peak_mb:.0f} MB",
        f"< {TARGET_PEAK_RSS_MB} MB",
        _verdict(peak_mb < TARGET_PEAK_RSS_MB),
    )
    after_mb = memory["after_rss"] / MB
    targets.add_row("`clew serve` RSS after the loads", f"{after_mb:.0f} MB", "", "")
    lake = memory["lake"]
    if "error" in lake:
        targets.add_row("acknowledged events in the lake", lake["error"], "all", "")
    else:
        targets.add_row(
            "acknowledged events in the lake",
            f"{lake['rows']:,} of {lake['acked']:,} ({lake['waited_s']:.1f} s after the last load)",
            "all",
            _verdict(lake["rows"] == lake["acked"]),
        )
    out.print(targets)
    report_processes(memory)


def report_processes(memory: dict[str, Any]) -> None:
    """RSS of `clew serve` and of each worker: idle, in the sample of the peak sum, and each
    process's own highest."""
    table = Table(title="`clew serve` RSS per process, MB")
    for col in ("process", "idle", "at the peak", "own peak", "after the loads"):
        table.add_column(col, justify="left" if col == "process" else "right")
    names = sorted(
        {*memory["idle_by_process"], *memory["peak_rss_by_process"]},
        key=lambda n: (n != "serve", n),
    )
    keys = ("idle_by_process", "rss_at_peak", "peak_rss_by_process", "after_by_process")
    for name in names:
        table.add_row(name, *(f"{memory[key].get(name, 0) / MB:.0f}" for key in keys))
    console().print(table)


def report_limits_cost(
    runs: list[tuple[dict[str, Any], dict[str, Any]]], unlimited: list[dict[str, Any]]
) -> None:
    """Each load's ingest ratio with the HTTP limits and without them (same run)."""
    table = Table(title="HTTP limits: clew/bare with them vs without (http.enforce = false)")
    for col in ("load", "clew events/s", "without limits events/s", "ratio", "ratio without"):
        table.add_column(col, justify="right")
    for (b, c), o in zip(runs, unlimited, strict=True):
        table.add_row(
            _load_name(c["events_per_request"], c["concurrency"]),
            f"{c['events_per_s']:,.0f}",
            f"{o['events_per_s']:,.0f}",
            f"{c['events_per_s'] / b['events_per_s']:.1%}" if b["events_per_s"] else "-",
            f"{o['events_per_s'] / b['events_per_s']:.1%}" if b["events_per_s"] else "-",
        )
    console().print(table)
    batch = [
        (b, c, o) for (b, c), o in zip(runs, unlimited, strict=True) if c["events_per_request"] > 1
    ]
    best_bare = max(b["events_per_s"] for b, _, _ in batch)
    with_limits = max(c["events_per_s"] for _, c, _ in batch) / best_bare
    without = max(o["events_per_s"] for _, _, o in batch) / best_bare
    cost = 1 - with_limits / without if without else 0.0
    console().print(
        f"ingest ratio, 100-event batches: {with_limits:.1%} with the limits, {without:.1%} "
        f"without: the limits cost {cost:.1%} of it (target <= {TARGET_LIMITS_COST:.0%}) "
        + _verdict(cost <= TARGET_LIMITS_COST)
    )


def _cores(r: dict[str, Any]) -> str:
    return f"{r['server_cores']:.2f}/{r['client_cores']:.2f}/{r['other_cores']:.2f}"


def _verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]MISSED[/red]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated connection counts")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    parser.add_argument(
        "--compare-http-limits",
        action="store_true",
        help="also measure a clew serve with the HTTP limits off, in the same run",
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    loads = [(events, c) for events in (BATCH, 1) for c in concurrencies]

    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    unlimited: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
            work = Path(tmp)
            loadgen = build_loadgen(work)
            data_dir = work / "data"
            clew = clew_server(data_dir, work)
            token = create_token(data_dir)
            off: contextlib.AbstractContextManager[Server | None] = contextlib.nullcontext()
            if args.compare_http_limits:
                off = clew_server(
                    work / "data-off", work, "clew-off", {"CLEW_HTTP__ENFORCE": "false"}
                )
            with bare_server(work) as bare, clew, off as clew_off:
                time.sleep(2.0)
                clew.settle()
                if clew_off is not None:
                    clew_off.settle()
                memory["idle_by_process"] = clew.rss_by_process()
                memory["idle_rss"] = sum(memory["idle_by_process"].values())
                memory["peak_rss"] = memory["idle_rss"]
                memory["rss_at_peak"] = memory["idle_by_process"]
                memory["peak_rss_by_process"] = dict(memory["idle_by_process"])
                console().print(f"{args.seconds:.0f} s per load, bare endpoint then clew serve")
                acked = 0
                for i, (events, concurrency) in enumerate(loads):
                    b = measure(bare, loadgen, events, concurrency, args.seconds)
                    # With a second server, every other load runs on it first, so that
                    # neither always follows the other's drained load.
                    if clew_off is not None and i % 2 == 1:
                        unlimited.append(
                            measure(clew_off, loadgen, events, concurrency, args.seconds)
                        )
                        clew_off.settle()
                    c = measure(clew, loadgen, events, concurrency, args.seconds)
                    acked += c["acked_events"]
                    # The stages work off the load's backlog now: the lake's peak is here.
                    with RssSampler(clew) as drain:
                        _lake_lag(c, clew, token, acked, args.seconds)
                        clew.settle()
                    c["drain_peak_rss"] = drain.peak
                    _note_peak(memory, c["peak_rss"], c["rss_at_peak"], c["peak_rss_by_process"])
                    _note_peak(memory, drain.peak, drain.at_peak, drain.peak_by_process)
                    if clew_off is not None and i % 2 == 0:
                        # After clew has drained, so that its stages take no CPU from this.
                        unlimited.append(
                            measure(clew_off, loadgen, events, concurrency, args.seconds)
                        )
                        clew_off.settle()
                    runs.append((b, c))
                memory["after_by_process"] = clew.rss_by_process()
                memory["after_rss"] = sum(memory["after_by_process"].values())
                try:
                    rows, waited = lake_count(clew, token, acked)
                    memory["lake"] = {"rows": rows, "acked": acked, "waited_s": waited}
                except BenchError as error:
                    memory["lake"] = {"acked": acked, "error": str(error)}
    except BenchError as error:
        fail(error)

    report(runs, memory)
    if unlimited:
        report_limits_cost(runs, unlimited)
    stopped = "was killed" if clew.killed else f"exited with {clew.exit_code}"
    console().print(f"clew serve {stopped} {clew.stop_seconds:.1f} s after SIGTERM")
    if args.json:
        figures: dict[str, Any] = {
            "runs": [{"bare": b, "clew": c} for b, c in runs],
            "memory": memory,
        }
        if unlimited:
            figures["clew_without_http_limits"] = unlimited
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
