"""Profile API read latency at a fixed request rate, next to a bare endpoint.

A SQLite serving store is filled with ``--profiles`` profiles (user id, email, anonymous id,
traits, computed traits with audiences, five stored events; one in twenty merged from a second
profile, whose old id and identifier still lead to it). Then ``GET
/v1/profiles/{id_type}:{value}`` is sent open loop, ``--rate`` requests per second over
``--connections`` keep-alive connections, for random identifiers of every kind (user id,
URL-encoded email, anonymous id, current or merged-away profile id), to these servers:

- ``bare``: a Starlette route on the same path answering a constant JSON body (the ceiling);
- ``direct``: the Profile API reading the store on the event loop (the default);
- ``offload``: the same, each read run in the thread pool (``run_in_threadpool``).

Each server is uvicorn as ``clew serve`` runs it (one process, uvloop, httptools, no access
log, lifespan off). The servers take turns in ``--rounds`` short slices, so that noise from
the rest of the machine falls on all of them alike. A request's latency runs from the moment
the client dispatched it (including any wait for a free connection, so a server stall counts)
to its last response byte; "send lag" is how late the client dispatched it, since event-loop
timers tick in whole milliseconds. The client is a minimal HTTP/1.1 client on asyncio streams,
light enough to share a small machine with the server.

    .venv/bin/python bench/profile_api.py [--profiles 50000] [--rate 500] [--seconds 10]
        [--endpoint profile|traits|events|external_ids|metadata] [--modes bare,direct,offload]

``--endpoint`` other than ``profile`` GETs that Segment-compatible path instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from rich.table import Table

from _serve import BENCH, PYTHON, BenchError, RssSampler, Server, console, fail, free_port
from clew._datadir import META_FILE, PROFILES_FILE

TARGET_P99_MS = 5.0
MODES = ("bare", "direct", "offload")
SEGMENT_PATH = "/v1/spaces/bench/collections/users/profiles"
SEGMENT_PARTS = ("traits", "events", "external_ids", "metadata")
T0_MS = 1_700_000_000_000
MB = 1024 * 1024
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


# -- the store ------------------------------------------------------------------------------


def populate(data_dir: Path, profiles: int, seed: int = 7) -> tuple[str, list[str]]:
    """Fill the serving store and create an access token; returns the token and every
    identifier (and profile id) to request, as ``id_type:value`` URL-encoded for a path."""
    from clew.sources import Catalog
    from clew.store import IdentityEdge, Profile, Provenance, SQLiteProfileStore, StoredEvent

    rng = random.Random(seed)
    catalog = Catalog(data_dir / META_FILE)
    token = catalog.create_token("bench")
    catalog.close()
    store = SQLiteProfileStore(data_dir / PROFILES_FILE)
    idents: list[str] = []
    for start in range(0, profiles, 1000):
        with store.transaction():
            for i in range(start, min(start + 1000, profiles)):
                pid, t = f"p{i:07d}", T0_MS + i * 1000
                ids = [
                    ("user_id", f"u{i}"),
                    ("email", f"user.{i}+shop@example.com"),
                    ("anonymous_id", f"{rng.getrandbits(128):032x}"),
                ]
                edges = tuple(
                    IdentityEdge(k, v, Provenance(f"m{i}-{k}", "src-web", t)) for k, v in ids
                )
                traits = {
                    "name": f"User {i}",
                    "email": ids[1][1],
                    "plan": rng.choice(["free", "pro"]),
                    "city": rng.choice(["Paris", "Lyon", "Lille"]),
                    "age": rng.randint(18, 80),
                    "newsletter": bool(i % 3),
                }
                computed = {
                    "orders_count": i % 9,
                    "total_lifetime_value": 12.5 * (i % 40),
                    "audiences": ["active"] if i % 2 else ["active", "big_spenders"],
                }
                history = [StoredEvent(0, f"e{i}-{n}", t + n, _event_body(i, n)) for n in range(5)]
                profile = Profile(pid, t, t + 86_400_000, edges, traits, (), computed)
                store.put_profile(profile, history)
                idents += [f"{k}:{quote(v, safe='')}" for k, v in ids]
                idents.append(f"profile_id:{pid}")
                if i % 20 == 0:
                    old = f"{pid}-old"
                    store.attach(old, "anonymous_id", f"old-{i}", Provenance(f"o{i}", "ios", t))
                    store.merge(pid, old, Provenance(f"x{i}", "src-web", t + 10))
                    idents += [f"profile_id:{old}", f"anonymous_id:old-{i}"]
    store.close()
    return token, idents


def _event_body(i: int, n: int) -> bytes:
    return msgspec.json.encode(
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": f"e{i}-{n}",
            "userId": f"u{i}",
            "timestamp": "2024-05-01T12:00:00.000Z",
            "properties": {"product_id": f"sku-{n}", "price": 9.5},
        }
    )


# -- the servers (run as `profile_api.py serve …` in a subprocess) ---------------------------


def serve(mode: str, data_dir: Path, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes: list[BaseRoute] = [Route("/health", health)]
    if mode == "bare":
        constant = json.dumps(
            {"profile_id": "p0000001", "traits": {"name": "User 1", "plan": "pro"}}
        ).encode()

        async def bare(request: Request) -> Response:
            return Response(constant, media_type="application/json")

        routes += [
            Route("/v1/profiles/{identifier:path}", bare),
            Route(SEGMENT_PATH + "/{identifier:path}/{part}", bare),
        ]
    else:
        from clew.api.profiles import profile_routes
        from clew.sources import Catalog
        from clew.store import SQLiteProfileStore

        store = SQLiteProfileStore(data_dir / PROFILES_FILE)
        catalog = Catalog(data_dir / META_FILE)
        routes += profile_routes(store, catalog, offload=mode == "offload")
    uvicorn.run(
        Starlette(routes=routes),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_level="warning",
    )


def server(mode: str, data_dir: Path, log_dir: Path) -> Server:
    port = free_port()
    argv: list[str | Path] = [PYTHON, BENCH / "profile_api.py", "serve", mode, str(data_dir)]
    argv.append(str(port))
    return Server(mode, argv, port, log_dir)


# -- the client -----------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    first_error: str = ""


class Connection:
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = _LENGTH.search(head)
        if length is None:
            raise BenchError(f"response without content-length: {head[:200]!r}")
        await self.reader.readexactly(int(length.group(1)))
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


async def drive(
    run: Run,
    port: int,
    request: Callable[[], bytes],
    rate: float,
    seconds: float,
    warmup: float,
    conns: int,
) -> None:
    """Open loop: request ``i`` is due at ``i / rate`` seconds; those due in the first
    ``warmup`` seconds are not measured. ``request()`` gives the next request's bytes."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Connection.open(port))
    unmeasured = round(rate * warmup)

    async def one(i: int, dispatched: float, body: bytes) -> None:
        conn = await pool.get()
        try:
            status = await conn.get(body)
        except (OSError, asyncio.IncompleteReadError, BenchError) as e:
            run.errors += 1
            run.first_error = run.first_error or repr(e)
            conn.close()
            pool.put_nowait(await Connection.open(port))
            return
        done = time.perf_counter()
        pool.put_nowait(conn)
        if i >= unmeasured:
            run.statuses[status] = run.statuses.get(status, 0) + 1
            run.latencies_ms.append((done - dispatched) * 1000)

    tasks = []
    total = round(rate * (seconds + warmup))
    began = time.perf_counter() + 0.01
    i = 0
    while i < total:
        # Event-loop timers tick in milliseconds: send everything due by now at each wake-up.
        await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
        now = time.perf_counter()
        while i < total and began + i / rate <= now:
            if i >= unmeasured:
                run.send_lag_ms.append((now - (began + i / rate)) * 1000)
            tasks.append(asyncio.create_task(one(i, now, request())))
            i += 1
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()


def measure(
    servers: list[Server], token: str, paths: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``--rounds`` rounds; in each, every server in turn gets ``seconds / rounds`` of load,
    so that noise from the rest of the machine falls on all of them alike."""
    import uvloop

    auth = b"Authorization: Basic " + base64.b64encode(f"{token}:".encode())
    rng = random.Random(11)

    def request() -> bytes:
        path = rng.choice(paths)
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth + b"\r\n\r\n"

    runs = {srv.name: Run() for srv in servers}
    cpu = dict.fromkeys(runs, 0.0)
    rss = dict.fromkeys(runs, 0)
    slice_s = args.seconds / args.rounds
    for round_ in range(args.rounds):
        for srv in servers:
            warmup = 1.0 if round_ == 0 else 0.2
            cpu_before = srv.cpu_seconds()
            with RssSampler(srv) as sampler:
                began = time.monotonic()
                uvloop.run(
                    drive(
                        runs[srv.name],
                        srv.port,
                        request,
                        args.rate,
                        slice_s,
                        warmup,
                        args.connections,
                    )
                )
                elapsed = time.monotonic() - began
            cpu[srv.name] += (srv.cpu_seconds() - cpu_before) / elapsed / args.rounds
            rss[srv.name] = max(rss[srv.name], sampler.peak)
    return [
        {
            "mode": name,
            "requests": len(run.latencies_ms),
            "statuses": run.statuses,
            "errors": run.errors,
            "first_error": run.first_error,
            "throughput_rps": len(run.latencies_ms) / args.seconds,
            "p50_ms": _quantile(run.latencies_ms, 0.50),
            "p90_ms": _quantile(run.latencies_ms, 0.90),
            "p99_ms": _quantile(run.latencies_ms, 0.99),
            "max_ms": max(run.latencies_ms, default=float("nan")),
            "send_lag_p99_ms": _quantile(run.send_lag_ms, 0.99),
            "server_cores": cpu[name],
            "rss_peak_mb": rss[name] / MB,
        }
        for name, run in runs.items()
    ]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- report ---------------------------------------------------------------------------------


def report(results: list[dict[str, Any]], args: argparse.Namespace, setup_s: float) -> None:
    out = console()
    base = next((r for r in results if r["mode"] == "bare"), None)
    table = Table(
        title=f"Profile API read latency: GET {_path(args.endpoint, '{id_type}:{value}')}"
    )
    for name in ("server", "req/s", "status", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(name, justify="left" if name in ("server", "status") else "right")
    for name in ("p50, p99 / bare", "send lag p99", "server cores", "RSS peak"):
        table.add_column(name, justify="right")
    for r in results:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        if r["errors"]:
            statuses += f", errors: {r['errors']} ({r['first_error'][:60]})"
        ratio = (
            f"{r['p50_ms'] / base['p50_ms']:.1f}x, {r['p99_ms'] / base['p99_ms']:.1f}x"
            if base and base is not r
            else ""
        )
        table.add_row(
            r["mode"],
            f"{r['throughput_rps']:.0f}",
            statuses,
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            _p99(r["p99_ms"], r["mode"] != "bare"),
            f"{r['max_ms']:.1f}",
            ratio,
            f"{r['send_lag_p99_ms']:.2f} ms",
            f"{r['server_cores']:.2f}",
            f"{r['rss_peak_mb']:.0f} MB",
        )
    out.print(table)
    out.print(
        f"{args.rate:.0f} req/s open loop over {args.connections} keep-alive connections, "
        f"{args.seconds:.0f} s per server in {args.rounds} interleaved slices; random identifiers "
        f"of {args.profiles:,} profiles in SQLite (filled in {setup_s:.0f} s). "
        f"Target: p99 < {TARGET_P99_MS:.0f} ms."
    )


def _path(endpoint: str, ident: str) -> str:
    if endpoint == "profile":
        return f"/v1/profiles/{ident}"
    return f"{SEGMENT_PATH}/{ident}/{endpoint}"


def _p99(value: float, judged: bool) -> str:
    if not judged:
        return f"{value:.2f}"
    verdict = "[green]met[/green]" if value < TARGET_P99_MS else "[red]MISSED[/red]"
    return f"{value:.2f} {verdict}"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=5, help="slices per server, interleaved")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument(
        "--endpoint", default="profile", choices=["profile", *SEGMENT_PARTS], help="what to GET"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")

    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
            work = Path(tmp)
            began = time.monotonic()
            token, idents = populate(work, args.profiles)
            paths = [_path(args.endpoint, ident) for ident in idents]
            setup_s = time.monotonic() - began
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(server(mode, work, work)) for mode in modes]
                results = measure(servers, token, paths, args)
    except BenchError as error:
        fail(error)
    report(results, args, setup_s)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
