"""Scale-out throughput and latency: embedded ``clew serve`` against Kafka + Redis with 1 and
2 collectors and workers per stage, on the same machine and the same traffic; and the
per-event costs the sizing guide in docs/scale-out.md is derived from.

Modes, each on a fresh data directory (and a fresh broker and ``redis-server``):

- ``embedded``: one ``clew serve`` (embedded log, SQLite serving store);
- ``kafka 1x``: a single-node Kafka broker (tests/_kafka.py; fetch its jars with
  ``scripts/kafka.sh``), ``redis-server`` as the serving store, 1 ``clew collector`` and 1
  ``clew worker`` per stage (validate, lake, profiles);
- ``kafka 2x``: the same with 2 collectors and 2 workers per stage.

Traffic: ``--people`` people, each with an identify, product views and orders, interleaved,
in batches of ``--batch`` events over HTTP (keep-alive, round-robin over the collectors).

- Throughput: every batch sent by ``--concurrency`` connections as fast as they are answered;
  "acked/s" is events answered 200 per second, "landed/s" events per second until the lake's
  ``events`` table holds all of them (from the first request to the Delta commit that
  completed the count).
- Latency: a second set of events sent open-loop at ``--rate`` events/s; an event's latency
  is from the 200 of its request to the Delta commit that made its row visible in the lake
  (the mtime of the commit's ``_delta_log`` file, read after the run: no polling error).
- Costs: CPU seconds per 1,000 events of each process (``/proc/<pid>/stat``, its idle rate
  measured before the traffic subtracted), Kafka log bytes per event (the ``.log`` segments
  of each topic), lake bytes per event (Parquet files of the current ``events`` snapshot),
  Redis ``used_memory`` per profile (after all profiles are written, minus before).

    .venv/bin/python bench/scale.py [--quick] [--people 2000] [--modes embedded,1x,2x]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psutil
import pyarrow.parquet as pq

from _http import Pool, post_batch, quantile
from _serve import CLEW, ROOT, SOURCE, WRITE_KEY, BenchError, Server, clew, fail, free_port

sys.path.insert(0, str(ROOT / "tests"))

from _kafka import KafkaBroker, missing
from _services import ServiceUnavailable, redis_server

STAGES = ("validate", "lake", "profiles")
PARTITIONS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
DRAIN_TIMEOUT_S = 300.0


# --- traffic -------------------------------------------------------------------------------


def traffic(prefix: str, people: int, views: int, orders: int) -> list[dict[str, Any]]:
    """Per person an identify, ``views`` product views and ``orders`` orders, people
    interleaved so every partition sees traffic throughout."""
    per_person: list[list[dict[str, Any]]] = []
    for i in range(people):
        user = f"{prefix}-user-{i}"
        events: list[dict[str, Any]] = [
            {
                "type": "identify",
                "userId": user,
                "anonymousId": f"{prefix}-anon-{i}",
                "traits": {"email": f"{user}@example.com", "plan": "pro" if i % 3 else "free"},
            }
        ]
        for j in range(views):
            events.append(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "userId": user,
                    "properties": {"sku": f"sku-{(i + j) % 97}", "category": "shoes"},
                }
            )
        for j in range(orders):
            events.append(
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "properties": {"revenue": (i * 7 + j) % 50 + 0.5, "currency": "EUR"},
                }
            )
        per_person.append(events)
    out: list[dict[str, Any]] = []
    for k in range(max(len(p) for p in per_person)):
        out.extend(p[k] for p in per_person if k < len(p))
    for n, event in enumerate(out):
        event["messageId"] = f"{prefix}-{n}"
        event["context"] = _context(n)
    return out


def _context(n: int) -> dict[str, Any]:
    """What a browser SDK adds to every event (about 600 bytes of JSON), so that the log and
    lake bytes per event are those of real traffic, not of bare test events."""
    path = f"/products/{n % 211}"
    return {
        "ip": f"203.0.{n % 251}.{n % 199}",
        "locale": ("en-GB", "de-DE", "fr-FR")[n % 3],
        "library": {"name": "analytics.js", "version": "4.1.0"},
        "page": {
            "path": path,
            "url": f"https://shop.example.com{path}?ref=nav",
            "referrer": ("https://www.google.com/", "https://shop.example.com/")[n % 2],
            "title": f"Product {n % 211} | Example Shop",
        },
        "userAgent": (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            f" Chrome/12{n % 10}.0.0.0 Safari/537.36"
        ),
        "campaign": {"source": ("google", "newsletter", "facebook")[n % 3], "medium": "cpc"},
    }


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[k : k + size] for k in range(0, len(events), size)]


@dataclass(slots=True)
class Acks:
    """Wall-clock time of each batch's 200, by batch index."""

    at: dict[int, float] = field(default_factory=dict)
    refused: int = 0


async def _post(pool: Pool, request: bytes, index: int, acks: Acks) -> None:
    try:
        status, _ = await pool.request(request)
    except (OSError, asyncio.IncompleteReadError):
        status = 0
    if status == 200:
        acks.at[index] = time.time()
    else:
        acks.refused += 1


async def _pools(ports: list[int], size: int) -> list[Pool]:
    pools = [Pool(port, size) for port in ports]
    for pool in pools:
        await pool.open()
    return pools


async def blast(ports: list[int], requests: list[bytes], concurrency: int) -> Acks:
    """Closed loop: ``concurrency`` requests in flight, round-robin over the collectors."""
    acks = Acks()
    pools = await _pools(ports, max(1, concurrency // len(ports)))
    queue = list(enumerate(requests))
    queue.reverse()

    async def lane() -> None:
        while queue:
            index, request = queue.pop()
            await _post(pools[index % len(pools)], request, index, acks)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    for pool in pools:
        pool.close()
    return acks


async def steady(ports: list[int], requests: list[bytes], every_s: float) -> Acks:
    """Open loop: one request every ``every_s`` whatever the response times."""
    acks = Acks()
    pools = await _pools(ports, 8)
    began = time.perf_counter()
    tasks = []
    for index, request in enumerate(requests):
        await asyncio.sleep(max(0.0, began + index * every_s - time.perf_counter()))
        pool = pools[index % len(pools)]
        tasks.append(asyncio.create_task(_post(pool, request, index, acks)))
    await asyncio.gather(*tasks)
    for pool in pools:
        pool.close()
    return acks


# --- the lake, read from its Delta log ---------------------------------------------------


class LakeLog:
    """Follows the ``events`` table's Delta log: rows appended by each WRITE commit and when
    the commit became visible (its log file's mtime)."""

    def __init__(self, table: Path) -> None:
        self.table = table
        self.rows = 0
        self.writes: list[tuple[float, list[str], int]] = []  # (visible at, files, rows)
        self._next = 0

    def poll(self) -> int:
        log = self.table / "_delta_log"
        while (path := log / f"{self._next:020d}.json").exists():
            try:
                lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            except json.JSONDecodeError:
                break  # being written; read it next time
            self._next += 1
            ops = [a["commitInfo"].get("operation") for a in lines if "commitInfo" in a]
            if "WRITE" not in ops:
                continue
            adds = [a["add"] for a in lines if "add" in a]
            rows = sum(json.loads(a["stats"])["numRecords"] for a in adds)
            self.rows += rows
            self.writes.append((path.stat().st_mtime, [unquote(a["path"]) for a in adds], rows))
        return self.rows

    def wait_for(self, rows: int, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
        """Wait until the table holds ``rows``; the visibility time of the commit that did it."""
        deadline = time.monotonic() + timeout_s
        while self.poll() < rows:
            if time.monotonic() > deadline:
                raise BenchError(f"the lake holds {self.rows} of {rows} rows after {timeout_s} s")
            time.sleep(0.1)
        seen = 0
        for at, _, n in self.writes:
            seen += n
            if seen >= rows:
                return at
        return self.writes[-1][0]

    def visible_at(self, prefix: str) -> dict[str, float]:
        """messageId -> when its row became visible, for ids starting with ``prefix``."""
        out: dict[str, float] = {}
        for at, files, _ in self.writes:
            for f in files:
                ids = pq.read_table(self.table / f, columns=["message_id"]).column(0)
                for mid in ids.to_pylist():
                    if mid.startswith(prefix):
                        out.setdefault(mid, at)
        return out

    def live_bytes(self) -> int:
        from deltalake import DeltaTable

        actions = DeltaTable(str(self.table)).get_add_actions(flatten=True)
        return int(sum(actions.column("size_bytes").to_pylist()))


# --- processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants, from /proc/<pid>/stat."""
    pids = [pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Workers:
    """``clew worker`` processes, output in log files, stopped (SIGTERM) at the end."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.config, self.log_dir = config, log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, stage: str) -> None:
        log = (self.log_dir / f"{stage}-{len(self.procs)}.log").open("wb")
        argv = [str(CLEW), "worker", "--stage", stage, "--config", str(self.config)]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        self.procs.append((stage, proc))

    def check(self) -> None:
        for stage, proc in self.procs:
            if proc.poll() is not None:
                tail = sorted(self.log_dir.glob(f"{stage}-*.log"))[-1].read_text()[-2000:]
                raise BenchError(f"a {stage} worker exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Deployment:
    """What a mode runs: collector ports, and the processes to charge CPU to by role."""

    ports: list[int]
    roles: dict[str, list[int]]  # role -> pids
    lake: LakeLog
    check: Callable[[], None] | None = None
    redis_url: str | None = None
    kafka_dir: Path | None = None


def settle(pids: list[int], quiet_cores: float = 0.15, window: float = 1.0) -> None:
    """Wait until the processes together use less than ``quiet_cores`` (their stages caught
    up: the profiles stage finishes after the lake)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if (sum(cpu_seconds(p) for p in pids) - before) / window < quiet_cores:
            return


@contextlib.contextmanager
def embedded(workdir: Path) -> Iterator[Deployment]:
    data_dir = workdir / "data"
    clew("sources", "create", SOURCE, "--write-key", WRITE_KEY, "--data-dir", data_dir)
    port = free_port()
    argv: list[str | Path] = [
        CLEW,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
    ]
    with Server("clew", argv, port, workdir) as server:
        lake = LakeLog(data_dir / "lake" / "events")
        yield Deployment([port], {"serve (all stages)": [server.pid]}, lake)


@contextlib.contextmanager
def scaled(workdir: Path, per_stage: int) -> Iterator[Deployment]:
    with (
        KafkaBroker(workdir / "kafka") as broker,
        redis_server(workdir) as redis,
        contextlib.ExitStack() as stack,
    ):
        data_dir = workdir / "data"
        config = workdir / "clew.toml"
        consumer = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        config.write_text(
            f'data_dir = "{data_dir}"\n'
            f'[log]\nbackend = "kafka"\nbootstrap_servers = "{broker.bootstrap}"\n'
            f"partitions = {PARTITIONS}\nreplication_factor = 1\n"
            f"kafka_consumer = {json.dumps(consumer).replace(':', ' =')}\n"
            f'[store]\nbackend = "redis"\nredis_url = "{redis.url}/0"\n'
        )
        clew("sources", "create", SOURCE, "--write-key", WRITE_KEY, "--config", config)
        workers = Workers(config, workdir)
        stack.callback(workers.stop)
        for stage in STAGES:
            for _ in range(per_stage):
                workers.start(stage)
        collectors = []
        for _ in range(per_stage):
            port = free_port()
            argv: list[str | Path] = [CLEW, "collector", "--port", str(port), "--config", config]
            collectors.append(stack.enter_context(Server("collector", argv, port, workdir)))
        roles: dict[str, list[int]] = {"collectors": [c.pid for c in collectors]}
        for stage, proc in workers.procs:
            roles.setdefault(f"{stage} workers", []).append(proc.pid)
        assert broker._process is not None
        roles["kafka broker"] = [broker._process.pid]
        roles["redis-server"] = [
            p.pid for p in psutil.Process().children() if p.name() == "redis-server"
        ]
        yield Deployment(
            [c.port for c in collectors],
            roles,
            LakeLog(data_dir / "lake" / "events"),
            check=workers.check,
            redis_url=redis.url,
            kafka_dir=workdir / "kafka" / "data",
        )


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    events: int
    acked_per_s: float
    landed_per_s: float
    p50_ms: float
    p99_ms: float
    latency_events: int
    cpu_per_1k: dict[str, float]
    kafka_bytes: dict[str, float] = field(default_factory=dict)
    lake_bytes: float = 0.0
    redis_per_profile: float | None = None
    profiles: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


def redis_info(url: str) -> tuple[int, int]:
    """(used_memory, live profiles under the default prefix)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
        profiles: int = client.zcard("clew:{g}:profiles")  # type: ignore[assignment]
        return int(memory["used_memory"]), int(profiles)
    finally:
        client.close()


def topic_bytes(kafka_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in kafka_dir.iterdir():
        topic, _, index = part.name.rpartition("-")
        if part.is_dir() and index.isdigit() and not topic.startswith("__"):
            out[topic] = out.get(topic, 0) + sum(f.stat().st_size for f in part.glob("*.log"))
    return out


def measure(mode: str, dep: Deployment, args: argparse.Namespace) -> Result:
    prefix = f"{mode.replace(' ', '')}-{int(time.time())}"
    load = batches(traffic(prefix + "t", args.people, args.views, args.orders), args.batch)
    probe_rate_events = batches(
        traffic(prefix + "l", args.latency_people, args.views, args.orders), args.batch
    )
    requests = [post_batch(b) for b in load]
    probes = [post_batch(b) for b in probe_rate_events]
    n_load = sum(len(b) for b in load)

    # Warm-up: one batch through every stage (workers joined, tables created).
    warm = batches(traffic(prefix + "w", 20, 1, 1), args.batch)
    asyncio.run(blast(dep.ports, [post_batch(b) for b in warm], 2))
    dep.lake.wait_for(sum(len(b) for b in warm), timeout_s=120)
    all_pids = [p for pids in dep.roles.values() for p in pids]
    settle(all_pids)
    before_rows = dep.lake.poll()
    redis_before = redis_info(dep.redis_url) if dep.redis_url else None

    idle_s = 3.0
    idle0 = {r: sum(cpu_seconds(p) for p in pids) for r, pids in dep.roles.items()}
    time.sleep(idle_s)
    cpu0 = {r: sum(cpu_seconds(p) for p in pids) for r, pids in dep.roles.items()}
    idle_rate = {r: (cpu0[r] - idle0[r]) / idle_s for r in dep.roles}

    print(f"  {mode}: sending {n_load:,} events ...", flush=True)
    load_before = os.getloadavg()[0]
    began = time.time()
    acks = asyncio.run(blast(dep.ports, requests, args.concurrency))
    acked_s = max(acks.at.values()) - began
    acked = sum(len(load[i]) for i in acks.at)
    landed_at = dep.lake.wait_for(before_rows + acked)
    if dep.check:
        dep.check()
    settle(all_pids)
    busy_s = time.time() - began
    cpu1 = {r: sum(cpu_seconds(p) for p in pids) for r, pids in dep.roles.items()}
    cpu_per_1k = {
        r: max(0.0, cpu1[r] - cpu0[r] - idle_rate[r] * busy_s) / acked * 1000 for r in dep.roles
    }
    redis_per_profile, profiles = None, 0
    if dep.redis_url and redis_before:
        used, profiles = redis_info(dep.redis_url)
        grown = profiles - redis_before[1]
        redis_per_profile = (used - redis_before[0]) / grown if grown else None

    print(f"  {mode}: latency at {args.rate:.0f} events/s ...", flush=True)
    every = args.batch / args.rate
    lat = asyncio.run(steady(dep.ports, probes, every))
    n_probe = sum(len(probe_rate_events[i]) for i in lat.at)
    dep.lake.wait_for(before_rows + acked + n_probe)
    visible = dep.lake.visible_at(prefix + "l")
    latencies = [
        (visible[ev["messageId"]] - at) * 1000
        for i, at in lat.at.items()
        for ev in probe_rate_events[i]
        if ev["messageId"] in visible
    ]
    if dep.check:
        dep.check()
    result = Result(
        mode=mode,
        events=acked,
        acked_per_s=acked / acked_s,
        landed_per_s=acked / (landed_at - began),
        p50_ms=quantile(latencies, 0.50),
        p99_ms=quantile(latencies, 0.99),
        latency_events=len(latencies),
        cpu_per_1k=cpu_per_1k,
        redis_per_profile=redis_per_profile,
        profiles=profiles,
        load=(load_before, os.getloadavg()[0]),
    )
    total = dep.lake.poll()
    result.lake_bytes = dep.lake.live_bytes() / total
    if dep.kafka_dir:
        result.kafka_bytes = {t: b / total for t, b in topic_bytes(dep.kafka_dir).items()}
    if acks.refused or lat.refused:
        print(f"  {mode}: {acks.refused + lat.refused} requests refused", flush=True)
    return result


# --- report --------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    cores = os.cpu_count()
    print(
        f"\n{results[0].events:,} events ({args.people:,} people: identify, {args.views} views,"
        f" {args.orders} orders each) in batches of {args.batch}, {args.concurrency} requests"
        f" in flight; latency at {args.rate:.0f} events/s; {cores} cores; Kafka topics of"
        f" {PARTITIONS} partitions\n"
    )
    head = f"{'mode':<10}{'acked/s':>10}{'landed/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'load':>12}"
    print(head)
    print("-" * len(head))
    by = {r.mode: r for r in results}
    for r in results:
        print(
            f"{r.mode:<10}{r.acked_per_s:>10,.0f}{r.landed_per_s:>10,.0f}"
            f"{r.p50_ms:>9,.0f}{r.p99_ms:>9,.0f}{r.load[0]:>6.1f}{r.load[1]:>6.1f}"
        )
    for a, b in (("kafka 2x", "kafka 1x"), ("kafka 1x", "embedded")):
        if a in by and b in by:
            print(
                f"{a + ' / ' + b:<20} landed {by[a].landed_per_s / by[b].landed_per_s:.2f}x,"
                f" acked {by[a].acked_per_s / by[b].acked_per_s:.2f}x"
            )
    print("\nCPU seconds per 1,000 events (idle polling subtracted)")
    for r in results:
        cells = ", ".join(f"{role} {s:.3f}" for role, s in r.cpu_per_1k.items())
        print(f"  {r.mode:<10} {cells}")
    print("\nStorage per event")
    for r in results:
        kafka = ", ".join(f"{t} {b:,.0f} B" for t, b in sorted(r.kafka_bytes.items()))
        line = f"  {r.mode:<10} lake {r.lake_bytes:,.0f} B"
        if kafka:
            line += f"; Kafka log: {kafka}"
        if r.redis_per_profile is not None:
            line += f"; Redis {r.redis_per_profile:,.0f} B per profile ({r.profiles:,} profiles)"
        print(line)
    if cores is not None and cores <= 2:
        print(
            f"\nOn {cores} cores the broker, redis-server, every collector and worker and this"
            " client share the same CPUs: a second worker per stage adds processes, not"
            " cores, so the 2x/1x ratio shows contention rather than scaling. The per-event"
            " CPU costs above are what carries over to a cluster. 'load' is the 1-minute"
            " load average before and after each mode: above the core count, other work shared"
            " the machine and the figures are a floor."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 minutes)")
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase, events/s")
    parser.add_argument("--latency-people", type=int, default=400)
    parser.add_argument("--modes", default="embedded,1x,2x")
    args = parser.parse_args()
    if args.quick:
        args.people, args.latency_people = 200, 60
    modes = args.modes.split(",")
    if any(m != "embedded" for m in modes) and (reason := missing()):
        raise SystemExit(f"cannot start Kafka: {reason}")
    results = []
    try:
        for mode in modes:
            name = "embedded" if mode == "embedded" else f"kafka {mode}"
            print(f"running {name} ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="clew-scale-") as tmp:
                opener = (
                    embedded(Path(tmp)) if mode == "embedded" else scaled(Path(tmp), int(mode[0]))
                )
                with opener as dep:
                    results.append(measure(name, dep, args))
    except (BenchError, ServiceUnavailable) as exc:
        fail(BenchError(str(exc)))
    report(results, args)


if __name__ == "__main__":
    main()
