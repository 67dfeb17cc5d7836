"""The Tracking API's durable ingest under uvicorn and under Granian, against a bare ASGI
endpoint under each, and with other group-commit settings - all in one run.

Servers, each a process of its own on 127.0.0.1, one worker, uvloop:

- ``bare/uvicorn``: ``bare_asgi.py`` as ``ingest.py`` serves it (uvicorn, httptools) - the
  ceiling of a Python HTTP server here;
- ``bare/granian``: the same app under Granian (ASGI without lifespan, HTTP/1);
- ``clew/uvicorn``: the collector role as `clew collector` runs it (``run_collector``: uvicorn
  with Clew's HTTP limits), appending to the embedded log and answering 200 after fsync;
- ``clew/granian``: the same ``CollectorProcess.app`` under Granian, with the nearest of
  Clew's limits Granian has (a 10 s header timeout, backpressure at ``max_connections``);
- group-commit variants of ``clew/uvicorn`` (``--variants``), set in that server process
  only: ``window=MS`` holds each collector flush MS milliseconds so that more requests share
  one log append; ``ops=N`` sets the embedded log's ``_MAX_OPS_PER_TRANSACTION``. Either
  way a request is still answered only once its transaction is committed and fsynced.

The collector runs alone (no stages), so the figures are the HTTP server plus the durable
append, not `clew serve` with its stages competing for the cores (``ingest.py`` measures that).

Each round runs every load (100-event batches to ``/v1/batch`` and single events to
``/v1/track`` at each concurrency, from ``bench/loadgen``) against every server back to back,
in an order rotated by one each round, so that noise from other work on the machine falls on
all alike. The load average is recorded with each round. Reported per load and server: the
median over rounds of events/s, p50 and p99, and clew/bare per server (median of each round's
ratio of adjacent runs).

    .venv/bin/python bench/http_servers.py [--rounds 3] [--seconds 5] [--concurrency 16,64]
        [--events 100,1] [--variants window=1,ops=1] [--json out.json]

Granian is not a Clew dependency: ``.venv/bin/pip install granian==2.8.7`` first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.table import Table

from _serve import (
    BENCH,
    PYTHON,
    BenchError,
    Server,
    bare_server,
    build_loadgen,
    clew,
    console,
    fail,
    free_port,
    run_loadgen,
)

BATCH = 100
GRANIAN_HINT = "Granian is not installed: .venv/bin/pip install granian==2.8.7"


@dataclass(frozen=True, slots=True)
class Variant:
    """One server under test: ``app`` is ``bare`` or ``clew``; ``window_ms`` and ``max_ops``
    are the group-commit settings of a ``clew`` one (None: Clew's own)."""

    app: str
    server: str
    window_ms: float | None = None
    max_ops: int | None = None

    @property
    def name(self) -> str:
        extra = []
        if self.window_ms is not None:
            extra.append(f"window {self.window_ms:g} ms")
        if self.max_ops is not None:
            extra.append(f"ops {self.max_ops}")
        return f"{self.app}/{self.server}" + (f" ({', '.join(extra)})" if extra else "")

    @property
    def bare(self) -> Variant:
        return Variant("bare", self.server)


def variants(spec: str) -> list[Variant]:
    """The four servers, then ``clew/uvicorn`` with each group-commit setting in ``spec``
    (``window=MS`` or ``ops=N``, comma-separated)."""
    out = [Variant(app, server) for server in ("uvicorn", "granian") for app in ("bare", "clew")]
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "window":
            out.append(Variant("clew", "uvicorn", window_ms=float(value)))
        elif key == "ops":
            out.append(Variant("clew", "uvicorn", max_ops=int(value)))
        else:
            raise BenchError(f"unknown variant {item!r}: use window=MS or ops=N")
    return out


# -- the server processes ----------------------------------------------------------------


def start(variant: Variant, work: Path, index: int) -> Server:
    """The server process of ``variant`` (not yet started); ``clew`` ones each get a data
    directory of their own, holding the bench source."""
    if variant == Variant("bare", "uvicorn"):
        return bare_server(work)
    port = free_port()
    argv: list[str | Path] = [PYTHON, BENCH / "http_servers.py", "serve", variant.server]
    argv += [variant.app, "--port", str(port)]
    if variant.app == "clew":
        data_dir = work / f"data-{index}"
        clew("sources", "create", "bench", "--write-key", "BENCHKEY", "--data-dir", data_dir)
        argv += ["--data-dir", data_dir]
    if variant.window_ms is not None:
        argv += ["--window-ms", str(variant.window_ms)]
    if variant.max_ops is not None:
        argv += ["--max-ops", str(variant.max_ops)]
    name = variant.name.replace("/", "-").replace(" ", "").replace(",", "-")
    return Server(name, argv, port, work)


def _group_commit(window_ms: float | None, max_ops: int | None) -> None:
    """Set the group-commit variant in this process, before the log is opened."""
    if max_ops is not None:
        from clew.log import embedded

        embedded._MAX_OPS_PER_TRANSACTION = max_ops
    if window_ms is not None:
        from clew.collector.app import Collector

        flush = Collector._flush
        delay = window_ms / 1000

        # The first request of a turn schedules a flush; holding it lets the requests of the
        # next MS milliseconds join the same append (they see the queue non-empty).
        def held(self: Collector, loop: Any) -> None:
            loop.call_later(delay, flush, self, loop)

        Collector._flush = held  # type: ignore[method-assign]


def _collector(data_dir: Path) -> Callable[..., Any]:
    """The collector role's ASGI app on ``data_dir``, as `clew collector` builds it."""
    from clew.collector.process import CollectorProcess
    from clew.config import load_settings

    return CollectorProcess(load_settings(data_dir=data_dir)).app


def _bare() -> Callable[..., Any]:
    import bare_asgi

    return bare_asgi.app


def _granian(load: Callable[[], Callable[..., Any]], port: int) -> None:
    """Serve the app ``load`` returns (called in Granian's worker) until SIGTERM: one worker,
    one runtime thread, uvloop, HTTP/1, Clew's header timeout and connection limit."""
    try:
        # Imported by name: Granian is an optional tool of this bench, not a dependency,
        # and the type check must pass without it.
        granian: Any = importlib.import_module("granian")
        gran_http: Any = importlib.import_module("granian.http")
    except ImportError:
        raise BenchError(GRANIAN_HINT) from None
    from clew.config import HttpSettings

    limits = HttpSettings()
    server = granian.Granian(
        "bench",
        address="127.0.0.1",
        port=port,
        interface="asginl",
        http="1",
        websockets=False,
        workers=1,
        runtime_threads=1,
        loop="uvloop",
        backpressure=limits.max_connections,
        http1_settings=gran_http.HTTP1Settings(
            header_read_timeout=int(limits.header_timeout_s * 1000)
        ),
        log_level="warning",
        log_access=False,
    )
    server.serve(target_loader=load, wrap_loader=False)


def serve(args: argparse.Namespace) -> None:
    """The ``serve`` subcommand: one server process of the bench."""
    _group_commit(args.window_ms, args.max_ops)
    if args.app == "clew" and args.data_dir is None:
        raise BenchError("a clew server needs --data-dir")
    if args.server == "granian":
        load = _bare if args.app == "bare" else partial(_collector, args.data_dir)
        _granian(load, args.port)
        return
    if args.app == "bare":
        sys.argv = [sys.argv[0], "--port", str(args.port)]
        importlib.import_module("bare_asgi").main()
        return
    from clew.collector.process import run_collector
    from clew.config import load_settings

    run_collector(load_settings(data_dir=args.data_dir, host="127.0.0.1", port=args.port))


# -- the measurements --------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """Every measured run, by (variant, events per request, concurrency), and the load
    average at the start and end of each round."""

    runs: dict[tuple[Variant, int, int], list[dict[str, Any]]] = field(default_factory=dict)
    load_average: list[tuple[float, float]] = field(default_factory=list)

    def add(self, variant: Variant, events: int, conc: int, result: dict[str, Any]) -> None:
        self.runs.setdefault((variant, events, conc), []).append(result)


def measure(
    server: Server, variant: Variant, loadgen: Path, events: int, conc: int, seconds: float
) -> dict[str, Any]:
    cpu_before, t_before = server.cpu_seconds(), time.monotonic()
    r = run_loadgen(loadgen, server.url, concurrency=conc, seconds=seconds, events=events)
    r["server_cores"] = (server.cpu_seconds() - cpu_before) / (time.monotonic() - t_before)
    r["load_average_1m"] = os.getloadavg()[0]
    console().print(
        f"  {variant.name:34} {_load_name(events, conc):24} {r['events_per_s']:>9,.0f} events/s"
        f"  p50 {r['p50_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  non-200 {r['non_ok']}"
        f"  errors {r['errors']}  server cores {r['server_cores']:.2f}"
    )
    return r


def run_rounds(
    servers: dict[Variant, Server],
    loadgen: Path,
    loads: list[tuple[int, int]],
    rounds: int,
    seconds: float,
) -> Figures:
    figures = Figures()
    order = list(servers)
    for n in range(rounds):
        before = os.getloadavg()[0]
        console().print(f"round {n + 1} of {rounds}, load average {_uptime()}")
        rotated = order[n % len(order) :] + order[: n % len(order)]
        for events, conc in loads:
            for variant in rotated:
                result = measure(servers[variant], variant, loadgen, events, conc, seconds)
                figures.add(variant, events, conc, result)
        figures.load_average.append((before, os.getloadavg()[0]))
    return figures


def _uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _load_name(events: int, conc: int) -> str:
    kind = f"{events}-event batches" if events > 1 else "single events"
    return f"{kind}, {conc} conn"


# -- the report --------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _ratio(figures: Figures, variant: Variant, events: int, conc: int) -> tuple[float, str]:
    """Median and range over rounds of clew/bare events/s (same server, same round)."""
    clew_runs = figures.runs[(variant, events, conc)]
    bare_runs = figures.runs[(variant.bare, events, conc)]
    ratios = [
        c["events_per_s"] / b["events_per_s"]
        for c, b in zip(clew_runs, bare_runs, strict=True)
        if b["events_per_s"]
    ]
    if not ratios:
        return 0.0, "-"
    return statistics.median(ratios), f"{min(ratios):.0%}-{max(ratios):.0%}"


def report(figures: Figures, loads: list[tuple[int, int]], order: list[Variant]) -> None:
    out = console()
    rounds = len(figures.load_average)
    table = Table(title=f"Durable ingest by HTTP server: median of {rounds} interleaved rounds")
    table.add_column("load")
    table.add_column("server")
    for col in ("events/s", "range", "p50 / p99 ms", "server cores", "non-200", "clew/bare"):
        table.add_column(col, justify="right")
    for events, conc in loads:
        for variant in order:
            runs = figures.runs[(variant, events, conc)]
            eps = [r["events_per_s"] for r in runs]
            ratio = ""
            if variant.app == "clew":
                median, spread = _ratio(figures, variant, events, conc)
                ratio = f"{median:.0%} ({spread})"
            table.add_row(
                _load_name(events, conc),
                variant.name,
                f"{statistics.median(eps):,.0f}",
                f"{min(eps):,.0f}-{max(eps):,.0f}",
                f"{_median(runs, 'p50_ms'):.1f} / {_median(runs, 'p99_ms'):.1f}",
                f"{_median(runs, 'server_cores'):.2f}",
                str(sum(r["non_ok"] + r["errors"] for r in runs)),
                ratio,
            )
        table.add_section()
    out.print(table)
    averages = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in figures.load_average)
    out.print(f"1-minute load average at the start and end of each round: {averages}")
    _summary(figures, loads, order)


def _summary(figures: Figures, loads: list[tuple[int, int]], order: list[Variant]) -> None:
    """Each clew server's 100-event-batch figure against Clew's default (clew/uvicorn), as
    the median over rounds of the ratio of adjacent runs."""
    default = Variant("clew", "uvicorn")
    lines = []
    for variant in (v for v in order if v.app == "clew" and v != default):
        for events, conc in loads:
            if events == 1:
                continue
            ours = figures.runs[(variant, events, conc)]
            base = figures.runs[(default, events, conc)]
            gains = [
                o["events_per_s"] / b["events_per_s"] - 1
                for o, b in zip(ours, base, strict=True)
                if b["events_per_s"]
            ]
            if gains:
                lines.append(
                    f"  {variant.name} vs clew/uvicorn, {_load_name(events, conc)}: "
                    f"{statistics.median(gains):+.0%} (rounds {min(gains):+.0%} to "
                    f"{max(gains):+.0%}; ahead in {sum(g > 0 for g in gains)} of {len(gains)})"
                )
    if lines:
        console().print("100-event batches against Clew's default server:\n" + "\n".join(lines))


# -- command line ------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> None:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(e) for e in args.events.split(",")]
    loads = [(events, c) for events in sizes for c in concurrencies]
    order = variants(args.variants)
    if any(v.server == "granian" for v in order):
        try:
            importlib.import_module("granian")
        except ImportError:
            raise BenchError(GRANIAN_HINT) from None
    with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
        work = Path(tmp)
        loadgen = build_loadgen(work)
        servers = {v: start(v, work, i) for i, v in enumerate(order)}
        started: list[Server] = []
        try:
            for server in servers.values():
                server.start()
                started.append(server)
            time.sleep(1.0)
            console().print(
                f"{args.seconds:g} s per load (+1 s warm-up), {args.rounds} rounds, "
                f"load average {_uptime()}"
            )
            figures = run_rounds(servers, loadgen, loads, args.rounds, args.seconds)
        finally:
            for server in started:
                server.stop()
    report(figures, loads, order)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_average": figures.load_average,
                    "runs": [
                        {"server": v.name, "events": e, "concurrency": c, "runs": runs}
                        for (v, e, c), runs in figures.runs.items()
                    ],
                },
                indent=2,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated connection counts")
    parser.add_argument("--events", default=f"{BATCH},1", help="comma-separated events per request")
    parser.add_argument(
        "--variants",
        default="window=1,ops=1",
        help="group-commit variants of clew/uvicorn: window=MS, ops=N, comma-separated",
    )
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("serve", help="run one server of the bench (the bench starts these)")
    one.add_argument("server", choices=("uvicorn", "granian"))
    one.add_argument("app", choices=("bare", "clew"))
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--data-dir", type=Path)
    one.add_argument("--window-ms", type=float)
    one.add_argument("--max-ops", type=int)
    args = parser.parse_args()
    try:
        if args.command == "serve":
            serve(args)
        else:
            bench(args)
    except BenchError as error:
        fail(error)


if __name__ == "__main__":
    main()
