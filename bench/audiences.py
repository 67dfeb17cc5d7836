"""Computed traits and audiences: stage throughput, event-to-membership latency, timer lateness.

Three figures, each next to a baseline measured in the same run (on a small shared machine
the ratios hold where absolute numbers do not):

1. **Throughput** (target >= 10k events/s): the real profiles stage (embedded log, SQLite
   serving store, exactly-once batches, ``changes`` records) consumes ``--events`` events of
   track-heavy shop traffic of ``--people`` people spread over ``--days`` days of event time,
   with the 20 computed traits and 20 audiences of ``_shop.DEFINITIONS``; the baseline is the
   same stage on the same traffic with no definitions. The two take turns in ``--rounds``
   slices so machine noise falls on both. The stage's clock follows event time (now = the
   newest event of the batch), so windows slide and timers fire as they would live. Beside
   events/s, events per second of the process's CPU time (less sensitive to other load).
2. **Visibility** (target p99 < 100 ms): a real ``clew serve`` with the same definitions gets
   ``--rate`` events/s of that traffic over HTTP for ``--seconds`` s. ``--probes`` times a
   second a probe is sent alone: alternately an ``Order Completed`` of a new person (who
   enters the audience ``buyer``) and, as the baseline, an ``identify`` of a new person with
   a trait. From the probe's HTTP 200, a separate thread polls ``GET /v1/profiles/user_id:…``
   every ``--poll-ms`` until the audience (or the trait) shows.
3. **Timer lateness** (target < 1 s): a server whose clock runs ``--speed`` times faster
   (``CLEW_CLOCK__SPEED``) gets the same traffic, timestamped in its clock time, and
   ``--timer-users`` new people each add a product to their cart. They enter
   ``cart_abandoner_1m`` (added, no order ``within`` 1m of clock time) by timer, without
   another event. Lateness is how long after the deadline (event time + within) the entry
   happened, in real time: ``(changed_at - deadline) / speed`` from the ``changes`` records
   (both are clock times; real = anchor_real + (clock - anchor_clock) / speed), and when the
   Profile API first showed it (polled from the deadline on). Baseline: the event-driven
   entry of the same people into ``added_to_cart``, from the event's timestamp.

    .venv/bin/python bench/audiences.py [--events 100000] [--people 20000] [--rate 1000]
        [--seconds 20] [--parts 1,2,3] [--profile] [--quick]

``--profile`` runs part 1's stage with definitions under cProfile and prints the top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from _http import (
    Pool,
    Probe,
    Sent,
    Watcher,
    background,
    post,
    post_batch,
    quantile,
    send_once,
    wait_until_shown,
)
from _serve import BenchError, Server, clew_server, console, create_token, fail
from _shop import (
    DEFINITIONS,
    EVENT_AUDIENCE,
    MEMBER,
    TIMER_AUDIENCE,
    Shop,
    iso,
    timer_definitions,
)
from clew._datadir import CLOCK_FILE
from clew.audiences.changes import AudienceChange, decode
from clew.audiences.definitions import parse_document, parse_duration
from clew.audiences.live import LiveAudiences
from clew.audiences.repository import DefinitionRepository
from clew.backends import open_log
from clew.clock import ManualClock
from clew.config import Settings
from clew.log.base import Message
from clew.stages.profiles import ProfilesStage
from clew.store import SQLiteProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

TARGET_RATE = 10_000
TARGET_P99_MS = 100.0
TARGET_LATE_MS = 1000.0
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000


# -- 1. throughput of the profiles stage, in process ----------------------------------------


class StageRun:
    """The profiles stage over its own embedded log and SQLite store, its clock set to the
    newest event of each batch, driven as the stage runner drives it (poll, handle, tick)."""

    def __init__(self, data_dir: Path, definitions: dict[str, Any] | None, times: list[int]):
        settings = Settings(data_dir=data_dir)
        settings.log.partitions = 1
        self.log = open_log(settings)
        ident = settings.identity
        self.store_path = settings.profiles_path
        self.store = SQLiteProfileStore(self.store_path, history=ident.history)
        self.clock = ManualClock(times[0])
        self.times = times
        repo = DefinitionRepository(data_dir)
        self.definitions = definitions
        if definitions:
            repo.push(parse_document(definitions))
        live = LiveAudiences(repo, self.clock)
        self.stage = ProfilesStage(
            self.store, ident.rules, ident.traits, clock=self.clock, audiences=live
        )
        self.consumer = self.log.consumer(self.stage.group, self.stage.topics)
        self.done = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # the process's CPU time while this run drained
        self.rounds: list[float] = []  # events/s of each drain

    def load(self, messages: list[Message]) -> None:
        for i in range(0, len(messages), 2000):
            self.log.append_sync(EVENTS_TOPIC, messages[i : i + 2000])
        self.stage.on_assign(self.consumer, self.consumer.assignment())
        self.stage.tick(self.consumer)  # loads the definitions (nothing to backfill yet)
        if self.definitions and self.stage.audiences.engine is None:
            raise BenchError("the profiles stage did not load the definitions (see the log)")

    def drain(self, until: int) -> None:
        began, first, cpu = time.perf_counter(), self.done, time.process_time()
        while self.done < until:
            records = self.consumer.poll(self.stage.max_poll_records, timeout_s=1.0)
            if not records:
                raise BenchError(f"the events topic ended after {self.done} events")
            self.clock.set(max(self.clock.now_ms(), self.times[records[-1].offset]))
            self.stage.handle(records, self.consumer)
            self.stage.tick(self.consumer)
            self.done += len(records)
        elapsed = time.perf_counter() - began
        self.cpu_seconds += time.process_time() - cpu
        self.seconds += elapsed
        self.rounds.append((self.done - first) / elapsed)

    def close(self) -> None:
        self.consumer.close()
        self.store.close()
        self.log.close()


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    span = args.days * DAY_MS
    times = [START_MS + i * span // args.events for i in range(args.events)]
    shop = Shop(args.people)
    messages = []
    for ms in times:
        body = shop.event(iso(ms))
        body.update(receivedAt=body["timestamp"], sourceId="bench")
        key = (body.get("userId") or body["anonymousId"]).encode()
        messages.append(Message(value=msgspec.json.encode(body), key=key))
    runs = {
        "no definitions": StageRun(work / "plain", None, times),
        "20 traits + 20 audiences": StageRun(work / "audiences", DEFINITIONS, times),
    }
    for run in runs.values():
        run.load(messages)
    profiler = cProfile.Profile() if args.profile else None
    for r in range(1, args.rounds + 1):
        until = args.events * r // args.rounds
        for run in runs.values():
            if profiler is not None and run.definitions:
                profiler.runcall(run.drain, until)
            else:
                run.drain(until)
    result: dict[str, Any] = {"events": args.events, "people": args.people, "days": args.days}
    for name, run in runs.items():
        counts = run.stage.counts
        result[name] = {
            "events_per_s": run.done / run.seconds,
            "events_per_cpu_s": run.done / run.cpu_seconds,
            "seconds": run.seconds,
            "timers_fired": counts["audience_timers_fired"],
            "change_records": counts["audience_changes"],
            "merges": counts["merges"],
            "store_mb": run.store_path.stat().st_size / 2**20,
            "rounds_events_per_s": run.rounds,
        }
        run.close()
    if profiler is not None:
        result["profile"] = _profile_text(profiler)
    return result


def _profile_text(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative")
    out.write("Top 25 by cumulative time, the whole stage:\n")
    stats.print_stats(25)
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    out.write("Top 25 by cumulative time, audience code (clew/audiences):\n")
    stats.print_stats(r"clew/audiences/", 25)
    stats.sort_stats("tottime")
    out.write("Top 25 by own time, the whole stage:\n")
    stats.print_stats(25)
    return re.sub(r"\n{3,}", "\n\n", out.getvalue())


def start_server(work: Path, definitions: dict[str, Any], speed: float | None) -> Server:
    data_dir = work / "data"
    server = clew_server(data_dir, work)
    DefinitionRepository(data_dir).push(parse_document(definitions))
    if speed is not None:
        server.argv = ["env", f"CLEW_CLOCK__SPEED={speed:g}", *server.argv]
    return server


# -- 2. event -> membership visible in the Profile API --------------------------------------


def visibility(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server = start_server(work, DEFINITIONS, None)
    token = create_token(work / "data")
    with server:
        warm = f"warm-{secrets.token_hex(3)}"
        asyncio.run(send_once(server.port, [_order(warm, iso(time.time_ns() // 1_000_000))]))
        wait_until_shown(server.port, token, warm, MEMBER, 60)
        cpu_before, began = server.cpu_seconds(), time.monotonic()
        with Watcher(server.port, token, args.poll_ms / 1000, args.timeout) as watcher:
            sent = asyncio.run(_visibility_traffic(server.port, watcher, args))
        cores = (server.cpu_seconds() - cpu_before) / (time.monotonic() - began)
    result: dict[str, Any] = {"sent_events": sent.events, "refused": dict(sent.refused)}
    result["errors"], result["server_cores"] = sent.errors, cores
    result["get_p50_ms"] = quantile(watcher.get_ms, 0.5)
    result["gets_per_s"] = len(watcher.get_ms) / args.seconds
    for kind in ("audience", "trait"):
        probes = sorted((p for p in watcher.probes if p.kind == kind), key=lambda p: p.ref)
        ms = [(p.seen - p.ref) * 1000 for p in probes if p.seen is not None]
        result[kind] = _summary(ms, len(probes))
    return result


def _order(user: str, stamp: str) -> dict[str, Any]:
    props = {"order_id": f"o-{user}", "revenue": 80.0, "currency": "EUR", "category": "bags"}
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "timestamp": stamp,
        "properties": props,
    }


async def _visibility_traffic(port: int, watcher: Watcher, args: argparse.Namespace) -> Sent:
    pool = Pool(port, 16)
    await pool.open()
    sent = Sent()
    shop = Shop(args.people)

    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    async def probe(k: int) -> None:
        user = f"probe-{shop.run}-{k}"
        stamp = iso(now_ms())
        shows: Callable[[dict[str, Any]], bool]
        if k % 2 == 0:
            kind, event, shows = "audience", _order(user, stamp), _is_member
        else:
            event = {"type": "identify", "userId": user, "timestamp": stamp}
            event["traits"] = {"probe": k}
            kind, shows = "trait", _has_probe_trait(k)
        acked = await post(pool, post_batch([event]), 1, sent)
        if acked is not None:
            watcher.submit(Probe(kind, user, shows, start=acked, ref=acked))

    async def probes() -> None:
        tasks = []
        began = time.perf_counter() + args.warmup
        for k in range(round((args.seconds - args.warmup) * args.probes)):
            await asyncio.sleep(max(0.0, began + k / args.probes - time.perf_counter()))
            tasks.append(asyncio.create_task(probe(k)))
        await asyncio.gather(*tasks)

    def traffic() -> dict[str, Any]:
        return shop.event(iso(now_ms()))

    rate, batch = args.rate, args.batch
    await asyncio.gather(background(pool, traffic, rate, batch, args.seconds, sent), probes())
    pool.close()
    return sent


def _is_member(profile: dict[str, Any]) -> bool:
    return MEMBER in profile["audiences"]


def _has_probe_trait(k: int) -> Callable[[dict[str, Any]], bool]:
    def shows(profile: dict[str, Any]) -> bool:
        return bool(profile["traits"].get("probe") == k)

    return shows


def _summary(ms: list[float], total: int) -> dict[str, Any]:
    """Percentiles of ``ms`` (in the order measured); ``trend``: the medians of its first and
    second halves (a growing one means the server falls behind the offered load)."""
    half = len(ms) // 2
    return {
        "samples": len(ms),
        "trend": (quantile(ms[:half], 0.5), quantile(ms[half:], 0.5)),
        "never_seen": total - len(ms),
        "p50_ms": quantile(ms, 0.50),
        "p95_ms": quantile(ms, 0.95),
        "p99_ms": quantile(ms, 0.99),
        "max_ms": max(ms, default=float("nan")),
    }


# -- 3. absence timers: how late after the deadline -----------------------------------------


@dataclass(slots=True, frozen=True)
class Anchor:
    """The scaled clock of a data directory (``clock.json``)."""

    speed: float
    real_ms: int
    clock_ms: int

    @classmethod
    def read(cls, data_dir: Path, timeout: float = 30.0) -> Anchor:
        path = data_dir / CLOCK_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                saved = json.loads(path.read_text())
                return cls(float(saved["speed"]), int(saved["real_ms"]), int(saved["clock_ms"]))
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        raise BenchError(f"{path} did not appear: is CLEW_CLOCK__SPEED passed to the server?")

    def now_ms(self) -> int:
        return self.clock_ms + int((time.time_ns() // 1_000_000 - self.real_ms) * self.speed)

    def real_ms_at(self, clock_ms: int) -> float:
        return self.real_ms + (clock_ms - self.clock_ms) / self.speed


def timers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    within_ms = parse_duration(args.within, "--within")
    server = start_server(work, timer_definitions(args.within), args.speed)
    token = create_token(work / "data")
    with server:
        anchor = Anchor.read(work / "data")
        warm = f"warm-{secrets.token_hex(3)}"
        asyncio.run(send_once(server.port, [_add_to_cart(warm, iso(anchor.now_ms()))]))
        wait_until_shown(server.port, token, warm, EVENT_AUDIENCE, 60)
        with Watcher(server.port, token, args.poll_ms / 1000, args.timeout) as watcher:
            sent, stamps = asyncio.run(
                _timer_traffic(server.port, watcher, anchor, within_ms, args)
            )
            last = max(stamps.values(), default=anchor.now_ms()) + within_ms
            time.sleep(max(0.0, (anchor.real_ms_at(last) - time.time() * 1000) / 1000) + 2.0)
    changes = _read_changes(work / "data")
    late: list[float] = []
    event_driven: list[float] = []
    causes: Counter[str] = Counter()
    for change in sorted(changes, key=lambda c: stamps.get(c.user_id or "", 0)):
        stamp = stamps.get(change.user_id or "")
        if stamp is None or change.kind != "audience_entered":
            continue
        at = _ms(change.changed_at)
        if change.audience == TIMER_AUDIENCE:
            late.append((at - stamp - within_ms) / anchor.speed)
            causes[change.cause] += 1
        elif change.audience == EVENT_AUDIENCE:
            event_driven.append((at - stamp) / anchor.speed)
    probes = sorted(watcher.probes, key=lambda p: p.ref)
    visible = [(p.seen - p.ref) * 1000 for p in probes if p.seen is not None]
    return {
        "users": len(stamps),
        "speed": anchor.speed,
        "within": args.within,
        "within_real_ms": within_ms / anchor.speed,
        "sent_events": sent.events,
        "refused": dict(sent.refused),
        "errors": sent.errors,
        "causes": dict(causes),
        "timer_fired": _summary(late, len(stamps)),
        "timer_visible": _summary(visible, len(stamps)),
        "event_fired": _summary(event_driven, len(stamps)),
    }


def _is_abandoner(profile: dict[str, Any]) -> bool:
    return TIMER_AUDIENCE in profile["audiences"]


def _add_to_cart(user: str, stamp: str) -> dict[str, Any]:
    props = {"product_id": "sku-1", "category": "shoes", "price": 42.0, "quantity": 1}
    return {
        "type": "track",
        "event": "Product Added",
        "userId": user,
        "timestamp": stamp,
        "properties": props,
    }


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


async def _timer_traffic(
    port: int, watcher: Watcher, anchor: Anchor, within_ms: int, args: argparse.Namespace
) -> tuple[Sent, dict[str, int]]:
    """Background traffic in clock time, and ``--timer-users`` add-to-carts spread over it;
    returns the event time (clock ms) of each add-to-cart by user."""
    pool = Pool(port, 16)
    await pool.open()
    sent = Sent()
    shop = Shop(args.people, seed=11)
    stamps: dict[str, int] = {}
    # Wall clock to perf_counter, for the moment polling of a deadline starts.
    offset = time.perf_counter() - time.time()

    async def cart(k: int) -> None:
        user = f"cart-{shop.run}-{k}"
        now = anchor.now_ms()
        stamps[user] = now
        acked = await post(pool, post_batch([_add_to_cart(user, iso(now))]), 1, sent)
        if acked is None:
            del stamps[user]
            return
        due = anchor.real_ms_at(now + within_ms) / 1000 + offset
        watcher.submit(Probe("timer", user, _is_abandoner, start=due, ref=due))

    async def carts() -> None:
        tasks = []
        every = (args.seconds - args.warmup) / args.timer_users
        began = time.perf_counter() + args.warmup
        for k in range(args.timer_users):
            await asyncio.sleep(max(0.0, began + k * every - time.perf_counter()))
            tasks.append(asyncio.create_task(cart(k)))
        await asyncio.gather(*tasks)

    def traffic() -> dict[str, Any]:
        return shop.event(iso(anchor.now_ms()))

    rate, batch = args.rate, args.batch
    await asyncio.gather(background(pool, traffic, rate, batch, args.seconds, sent), carts())
    pool.close()
    return sent, stamps


def _read_changes(data_dir: Path) -> list[AudienceChange]:
    log = open_log(Settings(data_dir=data_dir))
    try:
        out = []
        for partition, end in log.end_offsets(CHANGES_TOPIC).items():
            offset = 0
            while offset < end:
                records = log.read(CHANGES_TOPIC, partition, offset, 5000)
                if not records:
                    break
                offset = records[-1].offset + 1
                out += [c for r in records if (c := decode(r.value)) is not None]
        return out
    finally:
        log.close()


# -- report ---------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]MISSED[/red]"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    out = console()
    out.print(f"load average before the run: {results['load_before']}")
    if "throughput" in results:
        t = results["throughput"]
        base, aud = t["no definitions"], t["20 traits + 20 audiences"]
        table = Table(
            title=f"1. Profiles stage throughput: {t['events']:,} shop events of "
            f"{t['people']:,} people over {t['days']} days, {args.rounds} interleaved rounds"
        )
        names = ("definitions", "events/s", "per CPU s", "seconds", "timers fired")
        for name in (*names, "change records"):
            table.add_column(name, justify="left" if name == "definitions" else "right")
        table.add_column("store", justify="right")
        table.add_column("events/s by round", justify="right")
        for name, r in (("none (baseline)", base), ("20 traits + 20 audiences", aud)):
            table.add_row(name, *_throughput_cells(r))
        out.print(table)
        ratio = aud["events_per_s"] / base["events_per_s"]
        ok = aud["events_per_s"] >= TARGET_RATE
        out.print(
            f"with definitions / baseline: {ratio:.2f}; target >= {TARGET_RATE:,} events/s "
            f"with definitions: {_verdict(ok)}"
        )
        if "profile" in t:
            out.print(t["profile"], markup=False, highlight=False)
    if "visibility" in results:
        v = results["visibility"]
        table = Table(
            title=f"2. Event -> visible in GET /v1/profiles: {args.rate:.0f} events/s over HTTP "
            f"for {args.seconds:.0f} s, {args.probes:g} probes/s, polled every {args.poll_ms:g} ms"
        )
        for name in ("change", *COLUMNS):
            table.add_column(name, justify="left" if name == "change" else "right")
        for label, key in (
            ("trait by identify (baseline)", "trait"),
            (f"audience {MEMBER}", "audience"),
        ):
            _row(table, label, v[key])
        out.print(table)
        a, b = v["audience"], v["trait"]
        out.print(
            f"audience / trait: p50 {a['p50_ms'] / b['p50_ms']:.2f}, p99 "
            f"{a['p99_ms'] / b['p99_ms']:.2f}; target audience p99 < {TARGET_P99_MS:.0f} ms: "
            f"{_verdict(a['p99_ms'] < TARGET_P99_MS and a['never_seen'] == 0)}"
        )
        out.print(
            f"events sent {v['sent_events']:,} (refused {v['refused'] or 0}, failed "
            f"{v['errors']}); server {v['server_cores']:.2f} cores; Profile API GET p50 "
            f"{v['get_p50_ms']:.1f} ms at {v['gets_per_s']:.0f}/s"
        )
    if "timers" in results:
        m = results["timers"]
        table = Table(
            title=f"3. Lateness after the deadline, real ms: clock x{m['speed']:g}, "
            f"{TIMER_AUDIENCE} (within {m['within']} = {m['within_real_ms']:.0f} real ms), "
            f"{m['users']} people, under {args.rate:.0f} events/s"
        )
        for name in ("entry", *COLUMNS):
            table.add_column(name, justify="left" if name == "entry" else "right")
        _row(table, f"{EVENT_AUDIENCE}, by event, from event time (baseline)", m["event_fired"])
        _row(table, f"{TIMER_AUDIENCE}, by timer (changed_at)", m["timer_fired"])
        _row(table, f"{TIMER_AUDIENCE}, visible in the Profile API", m["timer_visible"])
        out.print(table)
        fired = m["timer_fired"]
        ok = fired["max_ms"] < TARGET_LATE_MS and fired["never_seen"] == 0
        out.print(
            f"entries by cause: {m['causes']}; target lateness < {TARGET_LATE_MS:.0f} ms: "
            f"{_verdict(ok)}; events sent {m['sent_events']:,} (refused {m['refused'] or 0}, "
            f"failed {m['errors']})"
        )
    out.print(f"load average after the run: {results['load_after']}")


COLUMNS = ("samples", "p50 ms", "p95 ms", "p99 ms", "max ms", "missing", "p50 1st/2nd half")


def _throughput_cells(r: dict[str, Any]) -> list[str]:
    return [
        f"{r['events_per_s']:,.0f}",
        f"{r['events_per_cpu_s']:,.0f}",
        f"{r['seconds']:.1f}",
        f"{r['timers_fired']:,}",
        f"{r['change_records']:,}",
        f"{r['store_mb']:.0f} MB",
        " ".join(f"{x:,.0f}" for x in r["rounds_events_per_s"]),
    ]


def _row(table: Table, label: str, s: dict[str, Any]) -> None:
    table.add_row(
        label,
        str(s["samples"]),
        f"{s['p50_ms']:.1f}",
        f"{s['p95_ms']:.1f}",
        f"{s['p99_ms']:.1f}",
        f"{s['max_ms']:.1f}",
        str(s["never_seen"]),
        f"{s['trend'][0]:.0f} / {s['trend'][1]:.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3", help="which figures: 1, 2 and/or 3")
    parser.add_argument("--events", type=int, default=100_000, help="part 1: events")
    parser.add_argument("--people", type=int, default=20_000, help="people in the traffic")
    parser.add_argument("--days", type=int, default=30, help="part 1: event-time span")
    parser.add_argument("--rounds", type=int, default=5, help="part 1: interleaved slices")
    parser.add_argument("--profile", action="store_true", help="part 1 under cProfile")
    parser.add_argument("--rate", type=float, default=1000.0, help="parts 2, 3: events/s")
    parser.add_argument("--batch", type=int, default=10, help="parts 2, 3: events per request")
    parser.add_argument("--seconds", type=float, default=20.0, help="parts 2, 3: send time")
    parser.add_argument("--warmup", type=float, default=2.0, help="parts 2, 3: before probes")
    parser.add_argument("--probes", type=float, default=10.0, help="part 2: probes per second")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="Profile API poll interval")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up on a probe after")
    parser.add_argument("--speed", type=float, default=60.0, help="part 3: clock speed")
    parser.add_argument("--within", default="1m", help="part 3: the funnel's within")
    parser.add_argument("--timer-users", type=int, default=150, help="part 3: add-to-carts")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (< 1 min)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        # Checks that every part runs; its figures mean little.
        args.events, args.people, args.rounds = 4_000, 1_000, 2
        args.rate, args.seconds, args.warmup, args.timer_users = 200.0, 4.0, 1.0, 20
    parts = set(args.parts.split(","))

    results: dict[str, Any] = {"load_before": _load()}
    try:
        for part, name, run in (
            ("1", "throughput", throughput),
            ("2", "visibility", visibility),
            ("3", "timers", timers),
        ):
            if part in parts:
                with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
                    results[name] = run(args, Path(tmp))
    except BenchError as error:
        fail(error)
    results["load_after"] = _load()
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
