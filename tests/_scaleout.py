"""Shared parts of the scale-out stories (tests/test_kafka_failover.py,
tests/test_two_machines.py): the events and definitions they stream, Clew processes started
as subprocesses, and what they read back (profiles from the serving store, rows per message
id from the lake), plus the same events through the embedded mode for comparison."""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from clew.audiences.definitions import Definition, parse_document
from clew.audiences.repository import DefinitionRepository
from clew.backends import open_existing_store
from clew.background import BackgroundServer, free_port
from clew.config import Settings, StoreSettings, load_settings
from clew.identity.identifiers import USER_ID
from clew.lake.query import Lake

WRITE_KEY = "scale-out-write-key"
# About half the people spend this much. No definition has a time window, so the result does
# not depend on when the events are processed.
BIG_SPEND = 300


def definitions() -> list[Definition]:
    """A computed trait and an audience, live before the first event."""
    return parse_document(
        {
            "traits": [{"name": "orders_n", "kind": "count", "event": "Order Completed"}],
            "audiences": [
                {
                    "name": "big_spender",
                    "condition": {
                        "event": "Order Completed",
                        "sum": "revenue",
                        "op": "gte",
                        "value": BIG_SPEND,
                    },
                }
            ],
        }
    )


def events(people: int, orders: int) -> list[dict[str, Any]]:
    """Per person an identify, an alias and ``orders`` orders; each event with its own
    messageId, people interleaved so every partition sees traffic throughout the stream."""
    out: list[dict[str, Any]] = []
    for i in range(people):
        user, anon = f"user-{i}", f"anon-{i}"
        out.append(
            {
                "type": "identify",
                "userId": user,
                "anonymousId": anon,
                "traits": {"email": f"person{i}@shop.test"},
                "messageId": f"identify-{i}",
            }
        )
        out.append({"type": "alias", "userId": user, "previousId": anon, "messageId": f"alias-{i}"})
        for j in range(orders):
            ids = {"userId": user, "anonymousId": anon} if j % 2 else {"userId": user}
            out.append(
                {
                    "type": "track",
                    "event": "Order Completed",
                    **ids,
                    # Halves add up exactly in binary, whatever the order.
                    "properties": {"revenue": (i * 7 + j) % 50 + 0.5},
                    "messageId": f"order-{i}-{j}",
                }
            )
    per_person = 2 + orders
    by_person = [out[k : k + per_person] for k in range(0, len(out), per_person)]
    return [ev for group in itertools.zip_longest(*by_person) for ev in group if ev is not None]


def batches(stream: list[dict[str, Any]], size: int = 10) -> list[list[dict[str, Any]]]:
    return [stream[k : k + size] for k in range(0, len(stream), size)]


def send(client: httpx.Client, url: str, batch: list[dict[str, Any]]) -> bool:
    """Whether the collector at ``url`` acknowledged ``batch``."""
    try:
        response = client.post(f"{url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, why: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s:.0f}s: {why()}")
        time.sleep(0.5)


def answering(client: httpx.Client, *urls: str) -> Callable[[], bool]:
    """A check that every one of ``urls`` answers ``/health`` with 200."""

    def check() -> bool:
        try:
            return all(client.get(f"{u}/health").status_code == 200 for u in urls)
        except httpx.HTTPError:
            return False

    return check


def clew(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one `clew` command to its end (output captured, not checked)."""
    return subprocess.run(
        [sys.executable, "-m", "clew.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


class Processes:
    """Clew subprocesses with their output in files; all stopped at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        log = (self.workdir / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "clew.cli", *args],
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def dump_stacks(self) -> None:
        """Ask every process and its stage workers for their threads' stacks (``kill -USR1``
        prints them to the log files): what a stalled deployment waits on."""
        for _, proc in self.procs:
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(proc.pid)
                for p in [top, *top.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        p.send_signal(signal.SIGUSR1)
                        # One at a time: stage workers share their server's log file.
                        time.sleep(0.5)

    def tails(self) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


Summary = tuple[int, float, int, tuple[str, ...]]


def profiles(settings: Settings, people: int) -> dict[str, Summary]:
    """Per person, (orders_count, total_lifetime_value, orders_n, audiences) from the
    configured serving store."""
    store = open_existing_store(settings)
    if store is None:
        return {}
    try:
        out: dict[str, Summary] = {}
        for i in range(people):
            pid = store.lookup(USER_ID, f"user-{i}")
            profile = store.get(pid) if pid is not None else None
            if profile is not None:
                computed = profile.computed
                out[f"user-{i}"] = (
                    int(computed.get("orders_count", 0)),
                    float(computed.get("total_lifetime_value", 0.0)),
                    int(computed.get("orders_n", 0)),
                    tuple(computed.get("audiences", ())),
                )
        return out
    finally:
        store.close()


def orders(summaries: dict[str, Summary]) -> int:
    return sum(summary[0] for summary in summaries.values())


def lake_counts(settings: Settings) -> dict[str, int]:
    """Rows per messageId in the lake's events table (warm and cold), wherever it lives."""
    lake = Lake(settings.lake_location, settings.cold_location)
    rows = lake.sql(
        "SELECT message_id, count(*) FROM events GROUP BY message_id", include_cold=True
    ).rows
    return {str(mid): int(n) for mid, n in rows}


def embedded_profiles(
    data_dir: Path, sent: list[list[dict[str, Any]]], people: int
) -> dict[str, Summary]:
    """The same events through `clew serve`'s embedded mode (SQLite serving store, local
    lake), in this process, with the same definitions."""
    settings = load_settings(None, data_dir=data_dir, port=free_port(), store=StoreSettings())
    DefinitionRepository(settings.data_dir).push(definitions())
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("embedded", WRITE_KEY)
        with httpx.Client(timeout=30) as client:
            for batch in sent:
                assert send(client, server.url, batch)
        expected = sum(1 for b in sent for ev in b if ev["type"] == "track")
        wait_for(
            "embedded profiles",
            lambda: orders(profiles(settings, people)) == expected,
            150.0,
            lambda: f"{orders(profiles(settings, people))} orders",
        )
        return profiles(settings, people)
