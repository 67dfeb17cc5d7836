"""How fast the validate and lake stages work off a backlog: the lake's catch-up after a burst.

A burst leaves acknowledged requests in the ``raw`` topic faster than the stages land them in
the lake. This bench fills ``raw`` with ``--events`` events as the collector stores them
(100-event ``/v1/batch`` requests shaped like the load generator's), then starts the validate
stage and the lake stage in two worker processes, as ``clew serve`` runs them, and times
them draining the backlog: from the moment both are running until the lake's Delta commits
cover every event (the ``lake`` group's commit, made after each Delta commit, reaches the end
of ``events``). Each worker's CPU time gives the cost per event of each stage.

Baseline in the same round: reading every ``raw`` record back from the log and decoding its
events (``split_request`` + one msgspec decode per event), in this process: the least any
validate stage does. With ``--compare-src DIR`` the workers also run the stages from another
source tree (the code before a change), alternating with this tree's round by round, so the
two are measured in the same minutes.

From the drain rate follows the catch-up after a burst: an ``--burst-seconds`` burst
acknowledged at ``--burst-rate`` events/s (the collector's rate for 100-event batches) leaves
that many events to drain; the figure printed is that backlog over the drain rate, i.e. for
stages that got no CPU during the burst (``bench/ingest.py`` measures the real one, "lake
caught up", with the collector and the load on the same cores).

    .venv/bin/python bench/lake_catchup.py [--events 200000] [--rounds 2] [--compare-src DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson
import psutil

from clew.backends import open_log
from clew.config import Settings
from clew.log.base import Log
from clew.raw_records import raw_message, split_request
from clew.sources import DEFAULT_SOURCE, Catalog

BENCH = Path(__file__).resolve()
SRC = BENCH.parents[1] / "src"
REQUEST_EVENTS = 100
STAGES = ("validate", "lake")
DRAIN_TIMEOUT_S = 600.0

_PRODUCTS = ("Shoes", "Jacket", "Backpack", "Headphones", "Water Bottle", "Sunglasses")
_CATEGORIES = ("Apparel", "Outdoor", "Electronics", "Accessories")
_PAGES = ("/", "/products", "/products/shoes", "/cart", "/search")
_LOCALES = ("en-US", "de-DE", "fr-FR", "ja-JP")
_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
    "Safari/537.36"
)


def _event(rng: random.Random, n: int, ts: str) -> dict[str, Any]:
    """One event as the Go load generator (bench/loadgen) sends it."""
    r = rng.randrange
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{r(100_000):06d}",
        "anonymousId": f"anon-{r(1 << 31):08x}-{r(1 << 16):04x}",
        "properties": {
            "product_id": f"sku-{r(50_000):05d}",
            "name": rng.choice(_PRODUCTS),
            "category": rng.choice(_CATEGORIES),
            "price": r(20_000) / 100,
            "currency": "USD",
            "position": r(24) + 1,
            "in_stock": r(10) > 0,
        },
        "context": {
            "ip": f"203.0.113.{r(254) + 1}",
            "locale": rng.choice(_LOCALES),
            "userAgent": _AGENT,
            "page": {
                "path": rng.choice(_PAGES),
                "referrer": "https://www.example.com/",
                "title": "Example Store",
                "url": "https://shop.example.com" + rng.choice(_PAGES),
            },
            "library": {"name": "analytics.js", "version": "5.2.0"},
        },
        "timestamp": ts,
        "messageId": f"burst-{n:012d}",
    }


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fill(log: Log, source_id: str, events: int, seed: int = 42) -> None:
    """Append ``events`` events to ``raw`` as acknowledged 100-event batch requests."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    sent_at = _iso(now)
    stamps = [_iso(now - timedelta(milliseconds=100 * (REQUEST_EVENTS - j))) for j in range(100)]
    received = time.time_ns() // 1000
    pending = []
    for req, start in enumerate(range(0, events, REQUEST_EVENTS)):
        batch = [
            _event(rng, start + j, stamps[j]) for j in range(min(REQUEST_EVENTS, events - start))
        ]
        body = orjson.dumps({"batch": batch, "sentAt": sent_at})
        pending.append(raw_message(body, source_id, "batch", received, f"burst-{req}"))
        if len(pending) == 200:
            log.append_sync("raw", pending)
            pending = []
    if pending:
        log.append_sync("raw", pending)


def read_and_decode(log: Log) -> tuple[int, float]:
    """The baseline: every ``raw`` record read back and its events decoded; (events, s)."""
    decoder = msgspec.json.Decoder()
    started = time.perf_counter()
    n = 0
    for partition in log.end_offsets("raw"):
        offset = 0
        while records := log.read("raw", partition, offset, 500):
            for rec in records:
                for raw in split_request("batch", rec.value).events:
                    decoder.decode(raw)
                    n += 1
            offset = records[-1].offset + 1
    return n, time.perf_counter() - started


def _lag(log: Log, group: str, topic: str) -> int:
    ends, done = log.end_offsets(topic), log.committed(group, topic)
    return sum(end - done.get(p, 0) for p, end in ends.items())


def drain(data_dir: Path, src: Path, events: int) -> dict[str, float]:
    """Start the two workers from ``src``, let them drain the backlog, stop them; the wall
    time from both running to the lake holding everything, and each worker's CPU time."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, str(BENCH), "--worker"]
    workers = {
        stage: subprocess.Popen(
            [*argv, stage, "--data-dir", str(data_dir)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for stage in STAGES
    }
    log = open_log(Settings(data_dir=data_dir))
    try:
        for stage, proc in workers.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the {stage} worker did not start (see its output above)")
        cpu_before = {s: sum(psutil.Process(p.pid).cpu_times()[:2]) for s, p in workers.items()}
        started = time.perf_counter()
        for proc in workers.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        while (
            _lag(log, "validate", "raw")
            or _lag(log, "lake", "events")
            or not (sum(log.end_offsets("events").values()))
        ):
            if time.perf_counter() - started > DRAIN_TIMEOUT_S:
                raise SystemExit(f"the stages did not drain {events:,} events in time")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        landed = sum(log.end_offsets("events").values())
        cpu = {
            s: sum(psutil.Process(p.pid).cpu_times()[:2]) - cpu_before[s]
            for s, p in workers.items()
        }
    finally:
        for proc in workers.values():
            proc.terminate()
        for proc in workers.values():
            proc.wait(60)
        log.close()
    if landed != events:
        raise SystemExit(f"{landed:,} events reached the events topic, expected {events:,}")
    return {"wall_s": wall, **{f"{s}_cpu_s": c for s, c in cpu.items()}}


def worker(stage: str, data_dir: Path) -> None:
    """A worker process: import everything first, say so, then run ``stage`` on "go"."""
    from clew.stages.workers import build_stage, run_worker

    settings = Settings(data_dir=data_dir)
    _, closers = build_stage(stage, settings)  # imports the stage's libraries
    for close in closers:
        close()
    print("ready", flush=True)
    sys.stdin.readline()
    run_worker(settings, [stage])


def one_round(events: int, src: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clew-bench-catchup-") as tmp:
        data_dir = Path(tmp) / "data"
        settings = Settings(data_dir=data_dir)
        catalog = Catalog.open(settings)
        source_id = catalog.ensure_source(DEFAULT_SOURCE).id
        catalog.close()
        log = open_log(settings)
        try:
            fill(log, source_id, events)
            decoded, decode_s = read_and_decode(log)
        finally:
            log.close()
        figures = drain(data_dir, src, events)
        lake_rows = _lake_rows(settings.lake_path / "events")
    if decoded != events or lake_rows != events:
        raise SystemExit(f"decoded {decoded:,}, lake rows {lake_rows:,}, expected {events:,}")
    return {**figures, "decode_s": decode_s}


def _lake_rows(table_dir: Path) -> int:
    from deltalake import DeltaTable

    table = DeltaTable(str(table_dir))
    return int(table.to_pyarrow_dataset().count_rows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--burst-seconds", type=float, default=8.0)
    parser.add_argument("--burst-rate", type=float, default=100_000.0)
    parser.add_argument("--compare-src", type=Path, default=None, help="another src/ tree")
    parser.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data_dir)
        return
    trees = {"this tree": SRC}
    if args.compare_src is not None:
        trees["compared"] = args.compare_src.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    order = list(trees)
    for i in range(args.rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            r = one_round(args.events, trees[name])
            results[name].append(r)
            print(
                f"round {i + 1} {name:9}: drained in {r['wall_s']:5.2f} s = "
                f"{args.events / r['wall_s']:7,.0f} events/s; CPU per event: validate "
                f"{r['validate_cpu_s'] / args.events * 1e6:5.1f} us, lake "
                f"{r['lake_cpu_s'] / args.events * 1e6:5.1f} us; read + decode only "
                f"{args.events / r['decode_s']:7,.0f} events/s "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    backlog = args.burst_seconds * args.burst_rate
    print(f"\n{args.events:,} events, {args.rounds} rounds; median of the rounds:")
    for name, runs in results.items():
        rate = statistics.median(args.events / r["wall_s"] for r in runs)
        decode = statistics.median(args.events / r["decode_s"] for r in runs)
        print(
            f"  {name:9} ({trees[name]}): {rate:,.0f} events/s, {rate / decode:.2f}x of read + "
            f"decode only ({decode:,.0f}/s); a {args.burst_seconds:g} s burst at "
            f"{args.burst_rate:,.0f}/s ({backlog:,.0f} events) drains in {backlog / rate:.1f} s"
        )
    if len(results) == 2:
        here, there = (statistics.median(r["wall_s"] for r in runs) for runs in results.values())
        print(f"  this tree / compared: {there / here:.2f}x the drain rate")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
