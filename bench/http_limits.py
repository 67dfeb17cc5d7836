"""What Clew's HTTP limits (docs/security.md, "HTTP limits") cost per request, on the bare
endpoint where nothing else hides it: ``bare_asgi.py`` served as uvicorn ships (stock
httptools protocol) and within the limits (``clew.http_limits``), side by side. Each load runs
against both, alternating which goes first, ``--rounds`` times; the median of each is
compared, so that other work on the machine skews both alike.

    .venv/bin/python bench/http_limits.py [--seconds 5] [--rounds 3] [--concurrency 16,64]
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
    for col in ("load", "stock req/s", "limits req/s", "cost", "stock p99 ms", "limits p99 ms"):
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
                            r = run_loadgen(
                                loadgen,
                                server.url,
                                concurrency=concurrency,
                                seconds=args.seconds,
                                events=events,
                            )
                            runs[name].append(r)
                    s = statistics.median(r["requests_per_s"] for r in runs["stock"])
                    lim = statistics.median(r["requests_per_s"] for r in runs["limits"])
                    cost = 1 - lim / s if s else 0.0
                    worst = max(worst, cost)
                    kind = f"{events}-event batches" if events > 1 else "single events"
                    table.add_row(
                        f"{kind}, {concurrency} conn",
                        f"{s:,.0f}",
                        f"{lim:,.0f}",
                        f"{cost:.1%}",
                        f"{statistics.median(r['p99_ms'] for r in runs['stock']):.1f}",
                        f"{statistics.median(r['p99_ms'] for r in runs['limits']):.1f}",
                    )
                    console().print(f"  {kind}, {concurrency} conn: cost {cost:.1%}")
    except BenchError as error:
        fail(error)
    console().print(table)
    verdict = "[green]met[/green]" if worst <= TARGET_COST else "[red]MISSED[/red]"
    console().print(f"largest cost {worst:.1%} (target <= {TARGET_COST:.0%}) {verdict}")


if __name__ == "__main__":
    main()
