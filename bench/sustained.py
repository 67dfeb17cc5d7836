"""Sustained ingest: a fixed event rate with every stage running, and whether each stage
keeps up (target: >= 10,000 events/s for 60 s, every stage's lag bounded).

``clew serve`` runs on the embedded default in a fresh data directory, with the shipped
audience files (``examples/audiences``) pushed (``--definitions shop``: the 20 computed traits
and 20 audiences of ``_shop.py``). An open-loop sender (one uvloop loop, ``--connections``
keep-alive connections) posts 100-event batches of shop traffic of ``--people`` people
(``_shop.Shop``: identify, page, views, Product Added, Order Completed, ...) to ``/v1/batch``
at ``--rate`` events/s for ``--seconds``: a batch is due every ``100 / rate`` s whatever the
answers, and its latency counts from when it was due (waiting for a connection behind a slow
server counts: no coordinated omission).

Every second: each stage's lag (``clew_consumer_lag`` of ``/metrics`` summed over partitions:
raw requests for validate, events for lake, monitor and profiles, change records for
profiles-lake, both for destinations), the topics' end offsets (from the log, opened in this
process: each stage's input rate ``r`` while sending) and the server's RSS with children.

**Bounded** (the stage keeps up), over the last third of the sending time: its lag is not
growing and stays below ``--max-lag-s`` seconds of ``r`` (default 5). *Growing*: the lag's
least-squares slope and its median pairwise (Theil-Sen) slope are both >= 1% of ``r``, and the
least-squares one exceeds twice its standard error: a trend, not the sawtooth of the lake's
500 ms flushes sampled each second, nor a spike in the last seconds. **Drain**: seconds from
the last answer to the sample from which the stage's lag stays 0 (1 s resolution; sampling
goes on until all are 0, or ``--drain-timeout``).

Baseline, same run, before ``clew serve`` starts: the bare ASGI endpoint (``bare_asgi.py``,
uvicorn reading and orjson-parsing the body) gets the same sender at the same rate for
``--baseline-seconds``: it shows whether this client can offer the rate on this machine at
all (if not, a miss is the client's), and the latency floor; reported are Clew's p50/p99 over
the bare endpoint's. Also the profiles stage's drain time over the lake stage's (issue 15's
burst target: <= 1.2x), and the cores each ``clew serve`` process (named by its stages), this
client and all other processes used while sending and while draining. The target is met when
>= 99% of 10,000 events/s are acknowledged for 60 s and every stage is bounded; exit code 0.

    .venv/bin/python bench/sustained.py [--rate 10000] [--seconds 60] [--people 10000]
        [--definitions shipped|shop|none] [--json out.json]
    .venv/bin/python bench/sustained.py --seconds 5 --rate 500      # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop
from rich.table import Table

from _http import Pool, post_batch, quantile
from _serve import BenchError, Server, bare_server, clew_server, console, fail
from _shop import DEFINITIONS, Shop, iso
from clew.audiences.definitions import parse_document
from clew.audiences.repository import DefinitionRepository, load_file
from clew.backends import open_log
from clew.config import Settings
from clew.log.base import Log
from clew.topics import STAGE_NAMES, STAGE_TOPICS, TOPICS

TARGET_RATE = 10_000
TARGET_SECONDS = 60
BATCH = 100
SLOPE_SHARE = 0.01  # of the input rate
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audiences"
MB = 1024 * 1024
_LAG = re.compile(r'^clew_consumer_lag\{group="([^"]+)",topic="[^"]+",partition="\d+"\} (\d+)')


@dataclass(slots=True)
class Request:
    due: float  # perf_counter when the batch was due
    done: float = 0.0
    status: int = 0  # 0: no answer (connection error)


@dataclass(slots=True)
class Sample:
    at: float  # perf_counter
    lag: dict[str, int]
    ends: dict[str, int]
    rss: int
    metrics_ms: float


async def _send(pool: Pool, data: bytes, req: Request) -> None:
    try:
        req.status, _ = await pool.request(data)
    except (OSError, asyncio.IncompleteReadError):
        req.status = 0
    req.done = time.perf_counter()


async def fixed_rate(
    port: int, args: argparse.Namespace, seconds: float, began: float, requests: list[Request]
) -> None:
    """Open loop: a ``BATCH``-event request due every ``BATCH / rate`` s from ``began``, each
    appended to ``requests`` when sent (read by the sampler's thread meanwhile)."""
    pool = Pool(port, args.connections)
    await pool.open()
    shop = Shop(args.people)
    interval = BATCH / args.rate
    tasks = []
    for i in range(round(seconds / interval)):
        due = began + i * interval
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        stamp = iso(time.time_ns() // 1_000_000)
        data = post_batch([shop.event(stamp) for _ in range(BATCH)])
        req = Request(due)
        requests.append(req)
        tasks.append(asyncio.create_task(_send(pool, data, req)))
    await asyncio.gather(*tasks)
    pool.close()


class Sampler:
    """Samples lag (``/metrics``), topic ends (the log) and RSS every second in a thread, on a
    grid from ``began``, and prints a row of the table for each sample."""

    def __init__(self, server: Server, log: Log, began: float, requests: list[Request]) -> None:
        self.server, self.log, self.began, self.requests = server, log, began, requests
        self.samples: list[Sample] = []
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._http = httpx.Client(base_url=server.url, timeout=10.0)

    def __enter__(self) -> Sampler:
        console().print(_row_text(HEADER), highlight=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._http.close()

    def _run(self) -> None:
        k = 1
        while not self._stop.wait(max(0.0, self.began + k - time.perf_counter())):
            try:
                self.samples.append(self.sample())
                self.rows.append(self._row(k, self.samples[-1]))
                console().print(_row_text(self.rows[-1]), highlight=False)
            except (httpx.HTTPError, BenchError) as error:
                console().print(f"[red]sample failed[/red]: {error}")
            k = int(time.perf_counter() - self.began) + 1

    def sample(self) -> Sample:
        at = time.perf_counter()
        resp = self._http.get("/metrics")
        metrics_ms = (time.perf_counter() - at) * 1000
        if resp.status_code != 200:
            raise BenchError(f"GET /metrics answered {resp.status_code}")
        lag = dict.fromkeys(STAGE_NAMES, 0)
        for line in resp.text.splitlines():
            if m := _LAG.match(line):
                lag[m.group(1)] = lag.get(m.group(1), 0) + int(m.group(2))
        ends = {t: sum(self.log.end_offsets(t).values()) for t in TOPICS}
        return Sample(at, lag, ends, self.server.rss(), metrics_ms)

    def _row(self, k: int, sample: Sample) -> dict[str, Any]:
        """Second ``k``: events sent (due) and acknowledged in it, acknowledged events/s
        since the start, each stage's lag, RSS."""
        lo, hi = self.began + k - 1, self.began + k
        done = [r.done for r in list(self.requests) if r.status == 200]
        last = max(done) if done and done[-1] < lo else sample.at
        return {
            "s": k,
            "sent": BATCH * sum(1 for r in list(self.requests) if lo <= r.due < hi),
            "acked": BATCH * sum(1 for t in done if lo < t <= hi),
            "rate": BATCH * len(done) / max(1e-9, last - self.began),
            **sample.lag,
            "rss_mb": sample.rss / MB,
            "metrics_ms": sample.metrics_ms,
        }


HEADER = {"s": "s", "sent": "sent", "acked": "acked", "rate": "acked/s"}
HEADER |= {name: name for name in STAGE_NAMES} | {"rss_mb": "RSS MB", "metrics_ms": "/metrics ms"}
_WIDTH = {"s": 4, "rate": 9, "rss_mb": 7, "metrics_ms": 11}


def _row_text(row: dict[str, Any]) -> str:
    widths = {k: _WIDTH.get(k, max(9, len(k))) for k in row}
    return " ".join(
        f"{v:>{widths[k]}{'' if isinstance(v, str) else ',.0f'}}" for k, v in row.items()
    )


def wait_drained(sampler: Sampler, timeout: float) -> bool:
    """Wait until a sample taken after now shows every stage's lag at 0."""
    after = time.perf_counter()
    while time.perf_counter() < after + timeout:
        last = sampler.samples[-1] if sampler.samples else None
        if last is not None and last.at > after and not any(last.lag.values()):
            return True
        time.sleep(0.2)
    return False


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of ``(x, y)`` points and its standard error (0, 0 for fewer than
    three points).

    >>> slope([(0, 1), (1, 3), (2, 5)])
    (2.0, 0.0)
    """
    n = len(points)
    if n < 3:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    residuals = sum((y - my - b * (x - mx)) ** 2 for x, y in points)
    return b, (residuals / (n - 2) / sxx) ** 0.5


def median_slope(points: list[tuple[float, float]]) -> float:
    """The median of the slopes between every two points (Theil-Sen): a spike moves it little.

    >>> median_slope([(0, 0), (1, 0), (2, 0), (3, 0), (4, 50)])
    0.0
    """
    pairs = [
        (y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :]
    ]
    return statistics.median(pairs) if pairs else 0.0


@dataclass(slots=True)
class StageFigures:
    input_per_s: float
    max_lag: int
    max_lag_s: float
    slope_per_s: float
    slope_error: float
    median_slope_per_s: float
    bounded: bool
    drain_s: float | None


def stage_figures(
    samples: list[Sample], start: float, stop: float, max_lag_s: float
) -> dict[str, StageFigures]:
    """Each stage's input rate, lag over the last third of ``[start, stop]``, bounded, drain."""
    sending = [s for s in samples if start <= s.at <= stop]
    if len(sending) < 2:
        raise BenchError("fewer than two samples while sending: send for 2 s at least")
    first, last = sending[0], sending[-1]
    tail = [s for s in sending if s.at >= stop - (stop - start) / 3]
    out = {}
    for stage in STAGE_NAMES:
        moved = sum(last.ends[t] - first.ends[t] for t in STAGE_TOPICS[stage])
        rate = moved / (last.at - first.at)
        lags = [(s.at - start, float(s.lag[stage])) for s in tail]
        peak = int(max((y for _, y in lags), default=0))
        (grow, error), median = slope(lags), median_slope(lags)
        growing = min(grow, median) >= SLOPE_SHARE * rate and grow > 2 * error
        bounded = not growing and peak < max_lag_s * rate if rate else peak == 0
        behind, drain = peak / rate if rate else 0.0, _drain(samples, stage, stop)
        out[stage] = StageFigures(rate, peak, behind, grow, error, median, bounded, drain)
    return out


def _drain(samples: list[Sample], stage: str, stop: float) -> float | None:
    after = [s for s in samples if s.at >= stop]
    if not after or after[-1].lag[stage]:
        return None
    k = len(after) - 1
    while k > 0 and after[k - 1].lag[stage] == 0:
        k -= 1
    return max(0.0, after[k].at - stop)


def sent_figures(requests: list[Request], began: float, seconds: float) -> dict[str, Any]:
    """Events sent and acknowledged, acknowledged events/s over the sending time (or up to
    the last answer, if later), requests refused (by status; ``error``: no answer), latency
    from due to answer."""
    ok = [r for r in requests if r.status == 200]
    last = max([began + seconds, *(r.done for r in requests)])
    refused = Counter(str(r.status or "error") for r in requests if r.status != 200)
    ms = [(r.done - r.due) * 1000 for r in ok]
    return {
        "sent_events": len(requests) * BATCH,
        "acked_events": len(ok) * BATCH,
        "refused_requests": dict(refused),
        "seconds": last - began,
        "acked_per_s": len(ok) * BATCH / (last - began),
        "p50_ms": quantile(ms, 0.5),
        "p99_ms": quantile(ms, 0.99),
        "max_ms": max(ms, default=0.0),
    }


# -- the run --------------------------------------------------------------------------------


def baseline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The bare endpoint under the same sender at the same rate."""
    requests: list[Request] = []
    with bare_server(work) as bare:
        began = time.perf_counter() + 0.5
        uvloop.run(fixed_rate(bare.port, args, args.baseline_seconds, began, requests))
    return sent_figures(requests, began, args.baseline_seconds)


def cpu_seconds(server: Server, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds used by the server and by each worker (named by its stages), this bench
    (with its sampler) and the whole machine (all processes), minus ``since``."""
    root = psutil.Process(server.pid)
    times = psutil.cpu_times()
    out = {"machine": sum(times) - times.idle - times.iowait}
    out["bench client"] = sum(os.times()[:2])
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            argv, t = p.cmdline(), p.cpu_times()
            name = "+".join(a for flag, a in itertools.pairwise(argv) if flag == "--stage")
            out[name or "serve"] = out.get(name or "serve", 0.0) + t.user + t.system
    return {k: v - (since or {}).get(k, 0.0) for k, v in out.items()}


def push_definitions(data_dir: Path, which: str) -> int:
    """Push ``which`` definitions into a new data directory; how many there are."""
    if which == "none":
        return 0
    files = sorted(EXAMPLES.glob("*.y*ml"))
    found = (
        parse_document(DEFINITIONS) if which == "shop" else [d for f in files for d in load_file(f)]
    )
    DefinitionRepository(data_dir).push(found)
    return len(found)


def sustained(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``clew serve`` under the fixed rate, sampled every second until it has drained."""
    data_dir = work / "data"
    server = clew_server(data_dir, work)
    definitions = push_definitions(data_dir, args.definitions)
    requests: list[Request] = []
    with server:
        server.settle(timeout=30)
        idle_rss = server.rss()
        log = open_log(Settings(data_dir=data_dir))
        try:
            began = time.perf_counter() + 0.5
            with Sampler(server, log, began, requests) as sampler:
                before, then = cpu_seconds(server), time.perf_counter()
                uvloop.run(fixed_rate(server.port, args, args.seconds, began, requests))
                stop = max(r.done for r in requests)
                cores = {k: v / (stop - then) for k, v in cpu_seconds(server, before).items()}
                before = cpu_seconds(server)
                drained = wait_drained(sampler, args.drain_timeout)
                draining = {
                    k: v / (time.perf_counter() - stop)
                    for k, v in cpu_seconds(server, before).items()
                }
        finally:
            log.close()
    samples = sampler.samples
    figures = stage_figures(samples, began, stop, args.max_lag_s)
    return {
        "definitions": definitions,
        "idle_rss_mb": idle_rss / MB,
        "peak_rss_mb": max((s.rss for s in samples), default=idle_rss) / MB,
        "drained": drained,
        "cores_while_sending": cores,
        "cores_while_draining": draining,
        "metrics_p50_ms": quantile([s.metrics_ms for s in samples], 0.5),
        "metrics_max_ms": max((s.metrics_ms for s in samples), default=0.0),
        **sent_figures(requests, began, args.seconds),
        "stages": {k: asdict(v) for k, v in figures.items()},
        "per_second": sampler.rows,
        "samples": [asdict(s) | {"at": s.at - began} for s in samples],
    }


# -- report ---------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]NOT met[/red]"


def stage_table(c: dict[str, Any], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"Stages at {args.rate:,.0f} events/s for {args.seconds:g} s; bounded: over the "
        f"last third, lag not growing and < {args.max_lag_s:g} s of input (see the docstring)"
    )
    for col in ("stage", "input/s", "max lag", "max lag s", "slope /s", "median", "bounded"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    table.add_column("drain s", justify="right")
    for name, f in c["stages"].items():
        table.add_row(
            name,
            f"{f['input_per_s']:,.0f}",
            f"{f['max_lag']:,}",
            f"{f['max_lag_s']:.1f}",
            f"{f['slope_per_s']:,.0f} ± {f['slope_error']:,.0f}",
            f"{f['median_slope_per_s']:,.0f}",
            "yes" if f["bounded"] else "[red]no[/red]",
            "not drained" if f["drain_s"] is None else f"{f['drain_s']:.0f}",
        )
    return table


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    out = console()
    c, b = results["clew"], results["baseline"]
    out.print(stage_table(c, args))
    out.print(
        f"clew:     acknowledged {c['acked_events']:,} of {c['sent_events']:,} events in "
        f"{c['seconds']:.1f} s = {c['acked_per_s']:,.0f} events/s (refused/failed requests: "
        f"{c['refused_requests'] or 'none'}); latency from due p50 {c['p50_ms']:.1f} ms, "
        f"p99 {c['p99_ms']:.1f} ms, max {c['max_ms']:.0f} ms\n"
        f"          RSS idle {c['idle_rss_mb']:.0f} MB, peak {c['peak_rss_mb']:.0f} MB; "
        f"{c['definitions']} definitions pushed; GET /metrics p50 {c['metrics_p50_ms']:.1f} ms, "
        f"max {c['metrics_max_ms']:.0f} ms"
    )
    for phase in ("sending", "draining"):
        used = dict(c[f"cores_while_{phase}"])
        others = 2 * used["machine"] - sum(used.values())
        cores = ", ".join(f"{k} {v:.2f}" for k, v in used.items())
        out.print(
            f"cores while {phase}: {cores} (of {os.cpu_count()}; other processes {others:.2f})"
        )
    out.print(
        f"baseline: bare ASGI endpoint at the same rate for {args.baseline_seconds:g} s: "
        f"{b['acked_per_s']:,.0f} events/s, p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms"
    )
    held = all(f["bounded"] for f in c["stages"].values())
    rate_ok = c["acked_per_s"] >= 0.99 * args.rate
    drains = [c["stages"][k]["drain_s"] for k in ("profiles", "lake")]
    out.print(
        f"ratios:   p50 clew / bare {c['p50_ms'] / b['p50_ms']:.1f}x, p99 clew / bare "
        f"{c['p99_ms'] / b['p99_ms']:.1f}x; drain profiles / lake: "
        + (" / ".join(f"{d:.1f} s" for d in drains) if None not in drains else "not drained")
    )
    if b["acked_per_s"] < 0.99 * args.rate:
        out.print("[yellow]the client did not offer the rate even to the bare endpoint[/yellow]")
    for name, f in c["stages"].items():
        out.print(f"target stage {name} keeps up (bounded lag): {_verdict(f['bounded'])}")
    out.print(f"target acknowledged >= 99% of {args.rate:,.0f} events/s: {_verdict(rate_ok)}")
    goal = held and rate_ok and args.rate >= TARGET_RATE and args.seconds >= TARGET_SECONDS
    out.print(
        f"target >= {TARGET_RATE:,} events/s sustained with every stage keeping up for "
        f"{TARGET_SECONDS} s: {_verdict(goal)}"
    )
    out.print(f"load average before {results['load_before']}, after {results['load_after']}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=TARGET_SECONDS, help="sending time")
    parser.add_argument("--people", type=int, default=10_000, help="people in the traffic")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--definitions", default="shipped", choices=("shipped", "shop", "none"))
    parser.add_argument("--max-lag-s", type=float, default=5.0, help="bound, s of traffic")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="s after sending")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="bare endpoint")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    args.baseline_seconds = min(args.baseline_seconds, args.seconds)
    results: dict[str, Any] = {"load_before": _load(), "args": vars(args) | {"json": None}}
    try:
        with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
            results["baseline"] = baseline(args, Path(tmp))
            results["clew"] = sustained(args, Path(tmp))
    except BenchError as error:
        fail(error)
    results["load_after"] = _load()
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
