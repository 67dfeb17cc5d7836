"""Scale-out failure story on a real Kafka broker and a real Redis: two `clew collector`
processes and two `clew worker` processes for each of the validate, lake and profiles stages
share one data directory, and the profiles workers share one serving store in Redis; while
events stream in, one worker of each stage is killed (SIGKILL) and started again. Every
acknowledged event must reach the lake exactly once, and the profiles, their computed trait
and their audience must equal those the embedded mode computes from the same events."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from _kafka import KafkaBroker
from _scaleout import (
    WRITE_KEY,
    Processes,
    answering,
    batches,
    clew,
    definitions,
    embedded_profiles,
    events,
    lake_counts,
    orders,
    profiles,
    send,
    wait_for,
)
from _services import require_module
from clew.audiences.repository import open_repository
from clew.background import free_port
from clew.config import StoreSettings, load_settings

require_module("redis", "pip install -e '.[redis]'")

# Clew's fixed topic names: on the session's broker, emptied first.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("empty_kafka")]

PEOPLE = 200
ORDERS_PER_PERSON = 12
STAGES = ("validate", "lake", "profiles")
# Generous bounds: the broker, eight Clew processes and the test share two loaded cores.
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 150.0


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
    created = clew(env, "sources", "create", "failover", "--write-key", WRITE_KEY)
    assert created.returncode == 0, created.stderr
    # In Redis, with the serving store: every worker reads the same definitions.
    open_repository(settings).push(definitions())
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs, env)
    try:
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        with httpx.Client(timeout=30) as client:
            # The first collector creates the topics and the data directory's files before the
            # other processes start: processes starting together on a fresh deployment can
            # fail creating them (a topic another process has just created is not yet
            # described; two connections switching one new SQLite file to WAL find it
            # locked). That start-up race is not what this test is about.
            procs.start("collector", "collector", "--port", str(ports[0]))
            wait_for(
                "first collector answering",
                answering(client, urls[0]),
                START_TIMEOUT_S,
                procs.tails,
            )
            procs.start("collector", "collector", "--port", str(ports[1]))
            workers: dict[str, list[subprocess.Popen[bytes]]] = {
                stage: [procs.start(stage, "worker", "--stage", stage) for _ in range(2)]
                for stage in STAGES
            }
            wait_for("collectors answering", answering(client, *urls), START_TIMEOUT_S, procs.tails)

            stream = batches(events(PEOPLE, ORDERS_PER_PERSON))
            kill_at, restart_at = len(stream) // 3, len(stream) // 2
            acknowledged: list[list[dict[str, Any]]] = []
            for n, batch in enumerate(stream):
                if n == kill_at:
                    for stage in STAGES:
                        victim = workers[stage][0]
                        victim.send_signal(signal.SIGKILL)
                        victim.wait()
                if n == restart_at:
                    for stage in STAGES:
                        workers[stage][0] = procs.start(stage, "worker", "--stage", stage)
                if send(client, urls[n % 2], batch):
                    acknowledged.append(batch)
                # Spread the stream over several seconds, so that the kill, the rebalance
                # and the restart all happen while events arrive.
                time.sleep(0.04)
        acked_ids = {ev["messageId"] for batch in acknowledged for ev in batch}
        assert len(acked_ids) > 0.9 * PEOPLE * (2 + ORDERS_PER_PERSON), "most requests must succeed"

        def lake_has_everything() -> bool:
            return set(lake_counts(settings)) >= acked_ids

        wait_for(
            "every acknowledged event in the lake",
            lake_has_everything,
            SETTLE_TIMEOUT_S,
            lambda: f"{len(acked_ids - set(lake_counts(settings)))} missing\n{procs.tails()}",
        )
        acked_orders = sum(1 for b in acknowledged for ev in b if ev["type"] == "track")
        wait_for(
            "every acknowledged order in the profiles",
            lambda: orders(profiles(settings, PEOPLE)) >= acked_orders,
            SETTLE_TIMEOUT_S,
            lambda: (
                f"{orders(profiles(settings, PEOPLE))} of {acked_orders} orders\n{procs.tails()}"
            ),
        )
        for stage in STAGES:
            assert all(w.poll() is None for w in workers[stage]), f"a {stage} worker died"
    finally:
        procs.stop()

    counts = lake_counts(settings)
    duplicated = {mid: n for mid, n in counts.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} events in the lake more than once"
    assert set(counts) == acked_ids
    # The serving store was Redis: no profiles worker made a SQLite one.
    assert not settings.profiles_path.exists()
    scale_out = profiles(settings, PEOPLE)
    spenders = sum(1 for *_, audiences in scale_out.values() if audiences == ("big_spender",))
    assert 0 < spenders < len(scale_out), "the audience must split the people"
    assert scale_out == embedded_profiles(tmp_path / "embedded", acknowledged, PEOPLE)
