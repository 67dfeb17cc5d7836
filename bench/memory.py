"""Memory of ``clew serve`` per process: idle, and at peak under a batch load and while its
stages work off the backlog (issue 15's targets: idle < 250 MB, peak < 600 MB, with the
worker processes).

Each variant is a ``clew serve`` on a fresh data directory, its Python sources taken from
``--src`` (put first on ``PYTHONPATH``, which the workers inherit): ``--baseline SRC`` adds
a second variant, run alternately with the first (``--rounds``), so that both are measured in
the same minutes. Per variant: ``--idle-s`` seconds after ``/health`` answers and the
server went quiet, the RSS of each process (``serve`` and each worker, named by its stages);
then the Go load generator posts 100-event batches for ``--seconds`` at each of
``--concurrency``, while every process's RSS is sampled every 0.2 s, until the server is quiet
again (its stages have caught up; at most ``--drain-timeout`` s). Reported: per process, idle
and its own peak; in all, idle and the peak of the sum of one sample.

    .venv/bin/python bench/memory.py [--src src] [--baseline OTHER/src] [--seconds 6]
        [--concurrency 64] [--rounds 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from _http import Pool, post_batch
from _serve import (
    ROOT,
    BenchError,
    RssSampler,
    build_loadgen,
    clew_server,
    console,
    fail,
    run_loadgen,
)

TARGET_IDLE_MB = 250
TARGET_PEAK_MB = 600
MB = 1024 * 1024
SAMPLE_EVERY_S = 0.2
BATCH = 100
# In each request's bytes, replaced by the request's number: every messageId differs.
_SERIAL = b"00000000"


def _event(rng: random.Random, j: int) -> dict[str, Any]:
    """An event like the load generator's (a product view of a shop visitor)."""
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{rng.randrange(100_000):06d}",
        "anonymousId": f"anon-{rng.randrange(1 << 31):08x}-{rng.randrange(1 << 16):04x}",
        "properties": {
            "product_id": f"sku-{rng.randrange(50_000):05d}",
            "name": "Desk Lamp",
            "category": "home",
            "price": rng.randrange(20_000) / 100,
            "currency": "USD",
            "position": rng.randrange(24) + 1,
            "in_stock": rng.randrange(10) > 0,
        },
        "context": {
            "ip": f"203.0.113.{rng.randrange(254) + 1}",
            "locale": "en-US",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/126.0 Safari/537.36",
            "page": {"path": "/p", "referrer": "https://www.example.com/", "url": "/p"},
            "library": {"name": "analytics.js", "version": "5.2.0"},
        },
        "messageId": f"m-{_SERIAL.decode()}-{j:03d}",
    }


async def _send_fixed(port: int, requests: int, connections: int) -> int:
    """``requests`` batches of BATCH events on ``connections`` keep-alive connections, as
    fast as the server answers; returns the events acknowledged (200)."""
    rng = random.Random(42)
    templates = [post_batch([_event(rng, j) for j in range(BATCH)]) for _ in range(16)]
    pool = Pool(port, connections)
    await pool.open()
    todo = iter(range(requests))
    acked = 0

    async def worker() -> None:
        nonlocal acked
        for n in todo:
            data = templates[n % len(templates)].replace(_SERIAL, f"{n:08d}".encode())
            status, _ = await pool.request(data)
            acked += BATCH if status == 200 else 0

    await asyncio.gather(*(worker() for _ in range(connections)))
    pool.close()
    return acked


def clew_file(src: Path) -> str:
    """Where ``import clew`` resolves with ``src`` first on the path (what the server runs)."""
    done = subprocess.run(
        [sys.executable, "-c", "import clew; print(clew.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def measure(
    name: str, src: Path, env: dict[str, str], work: Path, loadgen: Path, args: argparse.Namespace
) -> dict[str, Any]:
    data_dir = work / f"data-{name}-{time.monotonic_ns()}"
    server = clew_server(data_dir, work, f"clew-{name}", {"PYTHONPATH": str(src), **env})
    with server:
        server.settle()
        time.sleep(args.idle_s)
        idle = server.rss_by_process()
        acked = 0
        began = time.monotonic()
        with RssSampler(server, SAMPLE_EVERY_S) as peaks:
            for concurrency in args.concurrency:
                if args.events:
                    acked += asyncio.run(
                        _send_fixed(server.port, args.events // BATCH, concurrency)
                    )
                    continue
                r = run_loadgen(
                    loadgen, server.url, concurrency=concurrency, seconds=args.seconds, events=BATCH
                )
                acked += r["acked_events"]
            loaded = time.monotonic() - began
            drained = server.settle(timeout=args.drain_timeout)
        after = server.rss_by_process()
    load = os.getloadavg()
    row = {
        "variant": name,
        "src": str(src),
        "idle": idle,
        "peak": peaks.peak_by_process,
        "peak_total": peaks.peak,
        "total_at_peak": peaks.at_peak,
        "after": after,
        "acked_events": acked,
        "load_s": loaded,
        "drain_s": drained,
        "loadavg": load,
    }
    console().print(
        f"  {name}: idle {sum(idle.values()) / MB:.0f} MB, peak {peaks.peak / MB:.0f} MB, "
        f"{acked:,} events acknowledged, drained {drained:.0f} s after the load, "
        f"load average {load[0]:.2f}"
    )
    return row


def report(rows: list[dict[str, Any]]) -> None:
    names = sorted({n for r in rows for n in r["idle"]}, key=lambda n: (n != "serve", n))
    table = Table(title="clew serve RSS per process, MB: idle / own peak (at the peak sum)")
    table.add_column("variant")
    for n in names:
        table.add_column(n, justify="right")
    for col in ("idle total", "peak total", "events", "load avg"):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [
            f"{r['idle'].get(n, 0) / MB:.0f} / {r['peak'].get(n, 0) / MB:.0f} "
            f"({r['total_at_peak'].get(n, 0) / MB:.0f})"
            for n in names
        ]
        idle_total = sum(r["idle"].values()) / MB
        peak_total = r["peak_total"] / MB
        table.add_row(
            r["variant"],
            *cells,
            f"{idle_total:.0f} {_mark(idle_total < TARGET_IDLE_MB)}",
            f"{peak_total:.0f} {_mark(peak_total < TARGET_PEAK_MB)}",
            f"{r['acked_events']:,}",
            f"{r['loadavg'][0]:.2f}",
        )
    console().print(table)
    console().print(
        f"targets: idle < {TARGET_IDLE_MB} MB, peak < {TARGET_PEAK_MB} MB (serve with its "
        "workers); peak sampled during the load and until the stages caught up."
    )


def _mark(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="sources to measure")
    parser.add_argument("--baseline", type=Path, help="other sources, measured alternately")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load")
    parser.add_argument(
        "--events",
        type=int,
        help="instead of --seconds at full speed, this many events per load (from this "
        "process, as fast as the server answers): the same backlog for every variant",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[64],
        help="comma-separated connection counts, one load each",
    )
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds idle before reading")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the measured variant only (not the baseline)",
    )
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    variants = [("this", args.src.resolve(), env)]
    if args.baseline is not None:
        variants.append(("baseline", args.baseline.resolve(), {}))
    for name, src, _ in variants:
        console().print(f"{name}: clew from {clew_file(src)}")
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="clew-memory-") as tmp:
            work = Path(tmp)
            loadgen = build_loadgen(work)
            for k in range(args.rounds):
                # Alternate which variant goes first, so that neither always follows the other.
                order = variants if k % 2 == 0 else variants[::-1]
                for name, src, extra in order:
                    rows.append(measure(name, src, extra, work, loadgen, args))
    except BenchError as error:
        fail(error)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
