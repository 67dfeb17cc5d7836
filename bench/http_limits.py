"""What Clew's HTTP limits (docs/security.md, "HTTP limits") cost per request, on the bare
endpoint where nothing else hides it: ``bare_asgi.py`` served as uvicorn ships (stock
httptools protocol) and within the limits (``clew.http_limits``), side by side. Each load runs
against both, alternating which goes first, ``--rounds`` times; the median of each is
compared, so that other work on the machine skews both alike. Besides requests per second
(which other work on the machine moves), the server's CPU time per request is reported: it is
what the limits add, and contention moves it much less.

    .venv/bin/python bench/http_limits.py [--seconds 5] [--rounds 3] [--concurrency 16,64]

Not measured yet: how fast a normal client is answered while slow request heads (a slowloris)
hold connections. ``tests/test_http_limits.py`` checks only that one is answered before the
slow heads are cut off; it used to hold each answer to 1 s, a figure that belongs here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rich.table import Table

from _serve import BenchError, bare_server, build_loadgen, console, fail, run_loadgen

BATCH = 100
# The limits may cost at most this share of the throughput.
TARGET_COST = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each load per server")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated connection counts")
    args = parser.parse_args()
    loads = [(e, int(c)) for e in (1, BATCH) for c in args.concurrency.split(",")]
    table = Table(title="Bare endpoint: stock uvicorn vs within Clew's HTTP limits (medians)")
    columns = (
        "load",
        "stock req/s",
        "limits req/s",
        "cost",
        "stock CPU µs/req",
        "limits CPU µs/req",
        "CPU cost",
    )
    for col in columns:
        table.add_column(col, justify="right")
    worst = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
            work = Path(tmp)
            loadgen = build_loadgen(work)
            with bare_server(work) as stock, bare_server(work, http_limits=True) as limited:
                for events, concurrency in loads:
                    runs: dict[str, list[dict[str, float]]] = {"stock": [], "limits": []}
                    for i in range(args.rounds):
                        pair = [("stock", stock), ("limits", limited)]
                        for name, server in pair if i % 2 == 0 else pair[::-1]:
                            cpu = server.cpu_seconds()
                            r = run_loadgen(
                                loadgen,
                                server.url,
                                concurrency=concurrency,
                                seconds=args.seconds,
                                events=events,
                            )
                            # Warm-up requests are served too, so count them: throughput
                            # times warm-up plus measured seconds approximates the total.
                            served = r["requests_per_s"] * (args.seconds + r["warmup_s"])
                            r["cpu_us"] = (server.cpu_seconds() - cpu) / served * 1e6
                            runs[name].append(r)
                    s = statistics.median(r["requests_per_s"] for r in runs["stock"])
                    lim = statistics.median(r["requests_per_s"] for r in runs["limits"])
                    cost = 1 - lim / s if s else 0.0
                    s_cpu = statistics.median(r["cpu_us"] for r in runs["stock"])
                    lim_cpu = statistics.median(r["cpu_us"] for r in runs["limits"])
                    cpu_cost = lim_cpu / s_cpu - 1 if s_cpu else 0.0
                    worst = max(worst, cpu_cost)
                    kind = f"{events}-event batches" if events > 1 else "single events"
                    table.add_row(
                        f"{kind}, {concurrency} conn",
                        f"{s:,.0f}",
                        f"{lim:,.0f}",
                        f"{cost:.1%}",
                        f"{s_cpu:.0f}",
                        f"{lim_cpu:.0f}",
                        f"{cpu_cost:+.1%}",
                    )
                    console().print(
                        f"  {kind}, {concurrency} conn: {cost:.1%} fewer req/s, "
                        f"{cpu_cost:+.1%} CPU per request"
                    )
    except BenchError as error:
        fail(error)
    console().print(table)
    verdict = "[green]met[/green]" if worst <= TARGET_COST else "[red]MISSED[/red]"
    console().print(
        f"largest CPU cost per request {worst:+.1%} (target <= {TARGET_COST:.0%}) {verdict}"
    )


if __name__ == "__main__":
    main()
