"""Scale-out failure story on a real Kafka broker and a real Redis: two `clew collector`
processes and two `clew worker` processes for each of the validate, lake and profiles stages
share one data directory, and the profiles workers share one serving store in Redis; while
events stream in, one worker of each stage is killed (SIGKILL) and started again. Every
acknowledged event must reach the lake exactly once, and the profiles, their computed trait
and their audience must equal those the embedded mode computes from the same events."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _kafka import KafkaBroker, kafka_session
from clew.audiences.definitions import Definition, parse_document
from clew.audiences.repository import DefinitionRepository
from clew.config import Settings, StoreSettings, load_settings
from clew.identity.identifiers import USER_ID
from clew.lake.query import Lake
from clew.server import BackgroundServer, free_port
from clew.store.factory import open_existing_store

pytest.importorskip("redis", reason="the Redis serving store needs pip install 'clew[redis]'")

pytestmark = pytest.mark.slow

WRITE_KEY = "failover-write-key"
PEOPLE = 200
ORDERS_PER_PERSON = 12
BATCH = 10
STAGES = ("validate", "lake", "profiles")
# About half the people spend this much (their totals run from 72 to 528). No definition has a
# time window, so the result does not depend on when the events are processed.
BIG_SPEND = 300
# Generous bounds: the broker, eight Clew processes and the test share two loaded cores.
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 150.0


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    yield from kafka_session(tmp_path_factory)


def _definitions() -> list[Definition]:
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


def _events() -> list[dict[str, Any]]:
    """Per person an identify, an alias and orders; each event with its own messageId."""
    out: list[dict[str, Any]] = []
    for i in range(PEOPLE):
        user, anon = f"user-{i}", f"anon-{i}"
        out.append(
            {
                "type": "identify",
                "userId": user,
                "anonymousId": anon,
                "traits": {"email": f"person{i}@example.com"},
                "messageId": f"identify-{i}",
            }
        )
        out.append({"type": "alias", "userId": user, "previousId": anon, "messageId": f"alias-{i}"})
        for j in range(ORDERS_PER_PERSON):
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
    # Interleave people so every partition sees traffic throughout the stream.
    by_person = [
        out[k : k + 2 + ORDERS_PER_PERSON] for k in range(0, len(out), 2 + ORDERS_PER_PERSON)
    ]
    return [ev for group in itertools.zip_longest(*by_person) for ev in group if ev is not None]


def _batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [events[k : k + BATCH] for k in range(0, len(events), BATCH)]


def _send(client: httpx.Client, url: str, batch: list[dict[str, Any]]) -> bool:
    try:
        response = client.post(f"{url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, why: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s:.0f}s: {why()}")
        time.sleep(0.5)


class _Processes:
    """Clew subprocesses with their output in files; all stopped at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "clew.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

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


def _profiles(settings: Settings) -> dict[str, Summary]:
    """Per person, (orders_count, total_lifetime_value, orders_n, audiences) from the
    configured serving store."""
    store = open_existing_store(settings)
    if store is None:
        return {}
    try:
        out: dict[str, Summary] = {}
        for i in range(PEOPLE):
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


def _orders(profiles: dict[str, Summary]) -> int:
    return sum(summary[0] for summary in profiles.values())


def _lake_counts(lake_path: Path, cold_path: Path) -> dict[str, int]:
    """Rows per messageId in the lake's events table."""
    if not (lake_path / "events").exists():
        return {}
    rows = (
        Lake(lake_path, cold_path)
        .sql("SELECT message_id, count(*) FROM events GROUP BY message_id", include_cold=True)
        .rows
    )
    return {str(mid): int(n) for mid, n in rows}


def _embedded_profiles(data_dir: Path, batches: list[list[dict[str, Any]]]) -> dict[str, Summary]:
    """The same events through `clew serve`'s embedded mode (SQLite serving store), in this
    process, with the same definitions."""
    settings = load_settings(None, data_dir=data_dir, port=free_port(), store=StoreSettings())
    DefinitionRepository(settings.data_dir).push(_definitions())
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("failover", WRITE_KEY)
        with httpx.Client(timeout=30) as client:
            for batch in batches:
                assert _send(client, server.url, batch)
        expected_orders = sum(1 for b in batches for ev in b if ev["type"] == "track")
        _wait_for(
            "embedded profiles",
            lambda: _orders(_profiles(settings)) == expected_orders,
            SETTLE_TIMEOUT_S,
            lambda: f"{_orders(_profiles(settings))} orders",
        )
        return _profiles(settings)


def test_killed_workers_lose_and_duplicate_nothing(
    kafka_broker: KafkaBroker, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "scale-out"
    # This run's keys only, on the module's Redis server.
    store = StoreSettings(
        backend="redis", redis_url=redis_url, redis_prefix=f"failover{uuid.uuid4().hex[:12]}"
    )
    env = {
        **os.environ,
        "CLEW_DATA_DIR": str(data_dir),
        "CLEW_LOG__BACKEND": "kafka",
        "CLEW_LOG__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
        "CLEW_LOG__PARTITIONS": "4",
        "CLEW_LOG__REPLICATION_FACTOR": "1",
        # A killed member's partitions move after 6 s (the broker's minimum), not 45 s, and a
        # killed worker's open transaction is aborted after 10 s instead of a minute.
        "CLEW_LOG__KAFKA_CONSUMER": '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}',
        "CLEW_LOG__KAFKA_PRODUCER": '{"transaction.timeout.ms": 10000}',
        "CLEW_STORE__BACKEND": store.backend,
        "CLEW_STORE__REDIS_URL": store.redis_url,
        "CLEW_STORE__REDIS_PREFIX": store.redis_prefix,
    }
    settings = load_settings(None, data_dir=data_dir, store=store)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "clew.cli",
            "sources",
            "create",
            "failover",
            "--write-key",
            WRITE_KEY,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    DefinitionRepository(data_dir).push(_definitions())
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = _Processes(logs, env)
    try:
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        with httpx.Client(timeout=30) as client:

            def answering(*targets: str) -> Callable[[], bool]:
                def check() -> bool:
                    try:
                        return all(client.get(f"{u}/health").status_code == 200 for u in targets)
                    except httpx.HTTPError:
                        return False

                return check

            # The first collector creates the topics and the data directory's files before the
            # other processes start: processes starting together on a fresh deployment can
            # fail creating them (a topic another process has just created is not yet
            # described; two connections switching one new SQLite file to WAL find it
            # locked). That start-up race is not what this test is about.
            procs.start("collector", "collector", "--port", str(ports[0]))
            _wait_for("first collector answering", answering(urls[0]), START_TIMEOUT_S, procs.tails)
            procs.start("collector", "collector", "--port", str(ports[1]))
            workers: dict[str, list[subprocess.Popen[bytes]]] = {
                stage: [procs.start(stage, "worker", "--stage", stage) for _ in range(2)]
                for stage in STAGES
            }
            _wait_for("collectors answering", answering(*urls), START_TIMEOUT_S, procs.tails)

            batches = _batches(_events())
            kill_at, restart_at = len(batches) // 3, len(batches) // 2
            acknowledged: list[list[dict[str, Any]]] = []
            for n, batch in enumerate(batches):
                if n == kill_at:
                    for stage in STAGES:
                        victim = workers[stage][0]
                        victim.send_signal(signal.SIGKILL)
                        victim.wait()
                if n == restart_at:
                    for stage in STAGES:
                        workers[stage][0] = procs.start(stage, "worker", "--stage", stage)
                if _send(client, urls[n % 2], batch):
                    acknowledged.append(batch)
                # Spread the stream over several seconds, so that the kill, the rebalance
                # and the restart all happen while events arrive.
                time.sleep(0.04)
        acked_ids = {ev["messageId"] for batch in acknowledged for ev in batch}
        assert len(acked_ids) > 0.9 * PEOPLE * (2 + ORDERS_PER_PERSON), "most requests must succeed"

        def lake_has_everything() -> bool:
            return set(_lake_counts(settings.lake_path, settings.cold_path)) >= acked_ids

        _wait_for(
            "every acknowledged event in the lake",
            lake_has_everything,
            SETTLE_TIMEOUT_S,
            lambda: (
                f"{len(acked_ids - set(_lake_counts(settings.lake_path, settings.cold_path)))}"
                f" missing\n{procs.tails()}"
            ),
        )
        acked_orders = sum(1 for b in acknowledged for ev in b if ev["type"] == "track")
        _wait_for(
            "every acknowledged order in the profiles",
            lambda: _orders(_profiles(settings)) >= acked_orders,
            SETTLE_TIMEOUT_S,
            lambda: f"{_orders(_profiles(settings))} of {acked_orders} orders\n{procs.tails()}",
        )
        for stage in STAGES:
            assert all(w.poll() is None for w in workers[stage]), f"a {stage} worker died"
    finally:
        procs.stop()

    counts = _lake_counts(settings.lake_path, settings.cold_path)
    duplicated = {mid: n for mid, n in counts.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} events in the lake more than once"
    assert set(counts) == acked_ids
    # The serving store was Redis: no profiles worker made a SQLite one.
    assert not settings.profiles_path.exists()
    scale_out = _profiles(settings)
    spenders = sum(1 for *_, audiences in scale_out.values() if audiences == ("big_spender",))
    assert 0 < spenders < len(scale_out), "the audience must split the people"
    assert scale_out == _embedded_profiles(tmp_path / "embedded", acknowledged)
