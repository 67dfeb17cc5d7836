"""Chaos: `clew serve` on a real Kafka broker and a real Redis keeps its promises while they
fail under it. Events stream in through a client that retries on 503 as the SDKs do, while
the broker is killed and started again after 8 s, Redis stops for 10 s, Redis hangs for
10 s (SIGSTOP), and, on a Redis Cluster, the primary holding Clew's slot dies and its replica
takes over. After each fault:

- a new event goes the whole way (lake and profiles) within 30 s of the service returning;
- every acknowledged event is in the lake exactly once, and each person's order count in
  the serving store equals their acknowledged orders;
- no response was a 5xx other than 503 (which carries ``Retry-After``);
- every stage's lag returns to 0, with no Clew process (nor `clew serve`'s workers)
  restarted;
- ``/health`` named the service while it was away (not asserted for the cluster's failover,
  quicker than the probe interval) and says ``ok`` after.

Each test prints its figures (how long the service was away, recovery time after it
returned, 503s during the fault, events lost), which docs/scale-out.md quotes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from _health_watch import HealthWatch
from _kafka import KafkaBroker
from _redis_cluster import ClusterService, redis_cluster
from _scaleout import WRITE_KEY, Processes, answering, clew, lake_counts, wait_for
from _services import PersistentRedis, ServiceUnavailable, require_module, unavailable
from clew._errors import ServiceUnavailableError
from clew.backends import open_existing_store
from clew.background import free_port
from clew.config import Settings, StoreSettings, load_settings
from clew.identity.identifiers import USER_ID
from clew.log.kafka import KafkaLog
from clew.topics import STAGE_TOPICS

require_module("redis", "pip install -e '.[redis]'")

pytestmark = pytest.mark.slow

PEOPLE = 12
# What the issue asks of every stage: resume within 30 s of the service returning.
RECOVERY_BOUND_S = 30.0
START_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 120.0
HEALTH_OK_TIMEOUT_S = 60.0
# A client gives up on a request after this long and sends it again (the SDKs' timeouts are
# longer; a short one keeps a request from hanging across a whole outage).
REQUEST_TIMEOUT_S = 15.0


@dataclass
class Figures:
    """What one fault cost, as the closing note reports it."""

    fault: str
    refused_503: int = 0
    other_5xx: list[int] = field(default_factory=list)
    missing_retry_after: int = 0
    retried_errors: int = 0
    recovery_s: float = 0.0
    lag_zero_s: float = 0.0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    health_named: bool = False
    outage_s: float = 0.0
    health_ok_s: float = 0.0

    def report(self) -> str:
        return (
            f"chaos[{self.fault}]: service away {self.outage_s:.1f}s; "
            f"recovered {self.recovery_s:.1f}s after the service returned "
            f"(lag 0 after {self.lag_zero_s:.1f}s); {self.refused_503} requests refused with "
            f"503, {self.retried_errors} connection errors or timeouts retried; "
            f"{self.acknowledged} events acknowledged, {self.lost} lost, "
            f"{self.duplicated} duplicated; /health "
            f"{'named' if self.health_named else 'did not name'} the service while it was "
            f"away, ok {self.health_ok_s:.1f}s after it returned"
        )


class Sender:
    """Sends batches as an SDK does: one request at a time per thread, the same batch again
    after a 503 (waiting its ``Retry-After``, capped) or a network error, until acknowledged.
    Each thread writes orders of its own people, so one person's orders arrive in order."""

    def __init__(self, url: str, phase: str, figures: Figures, threads: int = 2) -> None:
        self.url = url
        self.phase = phase
        self.figures = figures
        self.acked: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(t, threads), daemon=True)
            for t in range(threads)
        ]

    def __enter__(self) -> Sender:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def post(self, client: httpx.Client, batch: list[dict[str, Any]]) -> None:
        """Until acknowledged (or the test ends)."""
        while True:
            try:
                response = client.post(
                    f"{self.url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, "")
                )
            except httpx.HTTPError:
                with self._lock:
                    self.figures.retried_errors += 1
                time.sleep(0.5)
                continue
            if response.status_code == 200:
                with self._lock:
                    self.acked.extend(batch)
                return
            with self._lock:
                if response.status_code == 503:
                    self.figures.refused_503 += 1
                    if "retry-after" not in response.headers:
                        self.figures.missing_retry_after += 1
                else:
                    self.figures.other_5xx.append(response.status_code)
            assert response.status_code >= 500, response.text
            time.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))

    def _run(self, thread: int, threads: int) -> None:
        n = 0
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while not self._stop.is_set():
                batch = []
                for k in range(3):
                    person = (n * 3 + k) % (PEOPLE // threads) * threads + thread
                    batch.append(order(self.phase, person, f"{thread}-{n}-{k}", n))
                self.post(client, batch)
                n += 1
                time.sleep(0.05)


def order(phase: str, person: int, tag: str, n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"{phase}-user-{person}",
        "properties": {"revenue": n % 7 + 0.5},
        "messageId": f"{phase}-{tag}",
    }


def order_counts(settings: Settings, users: set[str]) -> dict[str, int]:
    store = open_existing_store(settings)
    assert store is not None
    try:
        out = {}
        for user in users:
            pid = store.lookup(USER_ID, user)
            profile = store.get(pid) if pid is not None else None
            out[user] = int(profile.computed.get("orders_count", 0)) if profile else 0
        return out
    finally:
        store.close()


def describe_groups(bootstrap: str, groups: list[str]) -> str:
    """Each consumer group's state, members and their partitions."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    out = []
    try:
        for group, done in admin.describe_consumer_groups(groups, request_timeout=10).items():
            d = done.result()
            members = [
                f"{m.member_id[-6:]}@{m.host}: "
                + ",".join(f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions)
                for m in d.members
            ]
            out.append(f"group {group} {d.state}: {members}")
    except Exception as exc:
        out.append(f"groups unknown: {exc!r}")
    return "\n".join(out)


def lagging(log: KafkaLog) -> list[str]:
    """The stages (``group/topic``) with a record still to process: below a group's commit
    and the end there may be only transaction markers, which no consumer is given, so a gap
    is checked by reading."""
    behind = []
    for group, topics in STAGE_TOPICS.items():
        for topic in topics:
            lag = log.lag(group, topic)
            for p, end in lag.end.items():
                at = lag.committed.get(p, 0)
                if at < end:
                    batch = log.read(topic, p, at, 1)
                    if batch and batch[0].offset < end:
                        behind.append(f"{group}/{topic}[{p}]")
    return behind


@dataclass
class Deployment:
    url: str
    settings: Settings
    procs: Processes
    logs: Path
    bootstrap: str

    def landed(self, ids: set[str]) -> bool:
        try:
            return ids <= set(lake_counts(self.settings))
        except Exception:  # the table may not exist yet
            return False

    def through(self, phase: str, timeout_s: float) -> None:
        """Send one event and wait until it is in the lake and in its person's profile."""
        marker = order(phase, PEOPLE, "marker", 0)
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            Sender(self.url, phase, Figures(phase)).post(client, [marker])
        user = marker["userId"]
        wait_for(
            f"an event of {phase} through the lake and the profiles",
            lambda: self.landed({marker["messageId"]}) and self.orders(user) == 1,
            timeout_s,
            lambda: self._stalled(marker["messageId"], user),
        )

    def _stalled(self, message_id: str, user: str) -> str:
        return (
            f"in the lake: {self.landed({message_id})}; {user}'s orders in the serving store: "
            f"{self.orders(user)}\n{self.diagnosis()}"
        )

    def diagnosis(self) -> str:
        """What a stalled deployment looks like: each stage's commits against the ends of its
        topics, each group's members and their partitions, and every process's stacks (in
        the log files, which outlive the test)."""
        self.procs.dump_stacks()
        lines = []
        log = KafkaLog(self.bootstrap, timeout_s=10)
        try:
            for group, topics in STAGE_TOPICS.items():
                for topic in topics:
                    lag = log.lag(group, topic)
                    lines.append(f"{group}/{topic}: committed {lag.committed} end {lag.end}")
        except Exception as exc:
            lines.append(f"lag unknown: {exc!r}")
        finally:
            log.close()
        lines.append(describe_groups(self.bootstrap, list(STAGE_TOPICS)))
        return "\n".join([*lines, f"stacks in {self.logs}", self.procs.tails()])

    def orders(self, user: str) -> int | None:
        """``user``'s order count in the serving store; None while it cannot be read."""
        try:
            return order_counts(self.settings, {user})[user]
        except ServiceUnavailableError:
            return None

    def worker_restarts(self) -> list[str]:
        text = "".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))
        return re.findall(r"stage worker \S+ exited with .*; restarting it", text)


def _environment(bootstrap: str, store: StoreSettings, data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "CLEW_DATA_DIR": str(data_dir),
        "CLEW_LOG__BACKEND": "kafka",
        "CLEW_LOG__BOOTSTRAP_SERVERS": bootstrap,
        "CLEW_LOG__PARTITIONS": "2",
        "CLEW_LOG__REPLICATION_FACTOR": "1",
        "CLEW_LOG__KAFKA_CONSUMER": '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}',
        "CLEW_LOG__KAFKA_PRODUCER": '{"transaction.timeout.ms": 10000}',
        "CLEW_STORE__BACKEND": "redis",
        "CLEW_STORE__REDIS_URL": store.redis_url,
        "CLEW_STORE__REDIS_PREFIX": store.redis_prefix,
        "CLEW_STORE__REDIS_CLUSTER": "true" if store.redis_cluster else "false",
        "CLEW_STORE__REDIS_CLUSTER_NODES": json.dumps(store.redis_cluster_nodes),
    }
    return env


@contextmanager
def deployment(broker: KafkaBroker, store: StoreSettings, workdir: Path) -> Iterator[Deployment]:
    """`clew serve` (every stage, in its worker processes) on ``broker`` and ``store``."""
    broker.clear()
    data_dir = workdir / "data"
    env = _environment(broker.bootstrap, store, data_dir)
    settings = load_settings(None, data_dir=data_dir, store=store)
    created = clew(env, "sources", "create", "chaos", "--write-key", WRITE_KEY)
    assert created.returncode == 0, created.stderr
    logs = workdir / "logs"
    logs.mkdir()
    procs = Processes(logs, env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        procs.start("serve", "serve", "--port", str(port))
        with httpx.Client(timeout=10) as client:
            wait_for("clew serve answering", answering(client, url), START_TIMEOUT_S, procs.tails)
        dep = Deployment(url, settings, procs, logs, broker.bootstrap)
        # `clew serve` answers before its stage workers have joined their groups: faults
        # start once an event has gone the whole way.
        dep.through("warm-up", START_TIMEOUT_S)
        yield dep
    finally:
        procs.stop()


def run_fault(
    dep: Deployment,
    name: str,
    fault: Callable[[], float],
    dependency: str,
    *,
    health_must_name: bool = True,
) -> Figures:
    """Stream events, apply ``fault`` (it returns the monotonic time its service was back),
    and check what the module docstring promises, and that ``/health`` named ``dependency``
    while it was away (unless ``health_must_name`` is false: a failover quicker than the
    probe interval may pass unseen) and says ``ok`` after. Returns the figures."""
    phase = f"{name}{uuid.uuid4().hex[:6]}"
    figures = Figures(name)
    health = HealthWatch(dep.url).__enter__()  # sampling until the figures are taken
    with Sender(dep.url, phase, figures) as sender:
        time.sleep(3.0)  # traffic flowing before the fault
        struck = time.monotonic()
        back = fault()
        figures.outage_s = back - struck
        # A new event goes the whole way (collector, validate, lake and profiles) once the
        # pipeline has healed.
        dep.through(phase, SETTLE_TIMEOUT_S)
        figures.recovery_s = time.monotonic() - back
        time.sleep(2.0)  # traffic after the recovery too
    acked = [*sender.acked, order(phase, PEOPLE, "marker", 0)]
    ids = {ev["messageId"] for ev in acked}
    figures.acknowledged = len(ids)
    assert len(ids) == len(acked), "the client sent one messageId twice"
    wait_for(
        "every acknowledged event in the lake",
        lambda: dep.landed(ids),
        SETTLE_TIMEOUT_S,
        lambda: f"missing: {sorted(ids - set(lake_counts(dep.settings)))}\n{dep.diagnosis()}",
    )
    counts = lake_counts(dep.settings)
    figures.lost = len(ids - set(counts))
    figures.duplicated = sum(1 for mid in ids if counts.get(mid, 0) > 1)
    expected: dict[str, int] = {}
    for ev in acked:
        expected[ev["userId"]] = expected.get(ev["userId"], 0) + 1
    wait_for(
        "each person's orders in the serving store",
        lambda: order_counts(dep.settings, set(expected)) == expected,
        SETTLE_TIMEOUT_S,
        lambda: f"{order_counts(dep.settings, set(expected))} != {expected}",
    )
    log = KafkaLog(dep.bootstrap, timeout_s=10)
    try:
        wait_for(
            "every stage's lag back to 0",
            lambda: not lagging(log),
            SETTLE_TIMEOUT_S,
            lambda: f"{lagging(log)}\n{dep.procs.tails()}",
        )
    finally:
        log.close()
    figures.lag_zero_s = time.monotonic() - back
    wait_for(
        "/health ok again",
        lambda: health.samples[-1][1] == "ok",
        HEALTH_OK_TIMEOUT_S,
        lambda: f"last /health samples: {health.samples[-3:]}",
    )
    figures.health_named = health.named(dependency)
    figures.health_ok_s = time.monotonic() - back
    health.__exit__()
    print(figures.report())
    if health_must_name:
        assert figures.health_named, f"/health never named {dependency}: {health.samples}"
    assert figures.lost == 0 and figures.duplicated == 0, figures.report()
    assert not figures.other_5xx, f"answers other than 503: {figures.other_5xx}"
    assert not figures.missing_retry_after, "a 503 without Retry-After"
    assert figures.recovery_s < RECOVERY_BOUND_S, figures.report()
    assert not dep.worker_restarts(), dep.worker_restarts()
    assert all(proc.poll() is None for _, proc in dep.procs.procs), "a Clew process exited"
    return figures


@pytest.fixture(scope="class")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersistentRedis]:
    try:
        server = PersistentRedis(tmp_path_factory.mktemp("redis-aof"))
        server.start()
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def single(
    kafka_broker: KafkaBroker, redis: PersistentRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    store = StoreSettings(
        backend="redis", redis_url=redis.url, redis_prefix=f"chaos{uuid.uuid4().hex[:8]}"
    )
    with deployment(kafka_broker, store, tmp_path_factory.mktemp("chaos")) as dep:
        yield dep


class TestOneRedis:
    """Faults of the broker and of a single Redis, on one deployment (stopped before the
    Redis Cluster's test starts its own on the same topics and groups)."""

    def test_broker_restart(self, single: Deployment, kafka_broker: KafkaBroker) -> None:
        run_fault(
            single,
            "broker-restart",
            lambda: kafka_broker.restart(down_s=8.0),
            "kafka",
        )

    def test_redis_stopped_for_10s(self, single: Deployment, redis: PersistentRedis) -> None:
        def fault() -> float:
            redis.stop()
            time.sleep(10.0)
            redis.start()
            return time.monotonic()

        run_fault(single, "redis-stop", fault, "redis")

    def test_redis_hung_for_10s(self, single: Deployment, redis: PersistentRedis) -> None:
        def fault() -> float:
            redis.freeze()
            time.sleep(10.0)
            redis.thaw()
            return time.monotonic()

        run_fault(single, "redis-hang", fault, "redis")


def _primary_of(cluster: ClusterService, tag: str) -> int:
    """The port of the primary serving the slot of hash tag ``tag``."""
    import redis as redis_py

    client = redis_py.RedisCluster.from_url(cluster.url)
    try:
        slot = client.keyslot(f"{{{tag}}}")
        node = client.get_node_from_key(f"{{{tag}}}")
        assert node is not None, slot
        return int(node.port)
    finally:
        client.close()


def _failed_over(cluster: ClusterService, killed: int, tag: str) -> bool:
    """Whether the nodes left serve every slot and another primary holds ``tag``'s."""
    import redis as redis_py

    left = ClusterService(cluster.host, tuple(p for p in cluster.ports if p != killed))
    client = redis_py.Redis(port=left.ports[0])
    try:
        if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            return False
        return _primary_of(left, tag) != killed
    except redis_py.RedisError:
        return False
    finally:
        client.close()


def test_redis_cluster_primary_killed(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("chaos-cluster")
    (workdir / "cluster").mkdir()
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(redis_cluster(workdir / "cluster", replicas=1))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        # A prefix whose slot the node of the URL serves: the primary that dies is the node
        # every client was told of first, the hardest case for finding the cluster again.
        candidates = [f"chaos{uuid.uuid4().hex[:8]}" for _ in range(30)]
        prefix = next(
            (p for p in candidates if _primary_of(cluster, p) == cluster.ports[0]), candidates[0]
        )
        store = StoreSettings(
            backend="redis",
            redis_url=cluster.url,
            redis_prefix=prefix,
            redis_cluster=True,
            # As an operator sets it: the node of the URL may be the primary that dies.
            redis_cluster_nodes=cluster.nodes,
        )
        dep = stack.enter_context(deployment(kafka_broker, store, workdir))

        def fault() -> float:
            killed = _primary_of(cluster, prefix)
            subprocess.run(
                ["redis-cli", "-h", cluster.host, "-p", str(killed), "SHUTDOWN", "NOSAVE"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            deadline = time.monotonic() + 30
            while not _failed_over(cluster, killed, prefix):
                if time.monotonic() > deadline:
                    pytest.fail("no replica took over the killed primary's slots")
                time.sleep(0.2)
            return time.monotonic()

        run_fault(dep, "redis-primary-killed", fault, "redis", health_must_name=False)
