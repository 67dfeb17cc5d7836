r"""A real Apache Kafka for tests and benchmarks: one broker and its KRaft controller, each in a
JVM of its own, on free loopback ports, in fresh storage directories, stopped afterwards.

Two processes, as in production, so that :meth:`KafkaBroker.restart` kills the broker alone:
the controller fences it while it is away and gives it its partitions back when it returns.
Killing a combined broker-and-controller JVM instead can lose a transaction's commit markers
for good. The restarted node replays leadership from before the crash, loads its transaction
coordinator, and only then fences its own old incarnation, leaving every partition without a
leader for a moment. A marker to a partition without a leader is dropped as if the topic
were deleted ("Couldn't find leader endpoint ... can be skipped"), and the group's offsets
then stay pending for ever.

``scripts/kafka.sh`` fetches Kafka's jars with Maven into ``kafka_home()``; ``make test``
runs it first. Without Java, the jars or confluent-kafka, :func:`missing` says which command
installs what is missing, and the Kafka tests skip with that message (fail under CI).

The suite starts one broker per session (the ``kafka_broker`` fixture in tests/conftest.py).
Tests share it by using topics and groups of their own; a test that needs Clew's fixed topic
names, or reads every topic, asks for ``empty_kafka``, which first :meth:`KafkaBroker.clear`\ s
what earlier tests left.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from _services import unavailable

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "scripts" / "kafka" / "pom.xml"
FETCH = "scripts/kafka.sh"

# Settings a production cluster would not use: one replica of everything, no topic created
# by accident, no wait for more members before the first group assignment.
_BROKER_SETTINGS = {
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}


class KafkaStartError(RuntimeError):
    """The broker did not come up; the message ends with the tail of its log."""


def kafka_version() -> str:
    """The Kafka version that ``scripts/kafka/pom.xml`` fetches (its single source)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    assert found, f"no <kafka.version> in {POM}"
    return found.group(1)


def kafka_home() -> Path:
    """Where ``scripts/kafka.sh`` puts the jars (``libs/``); ``CLEW_KAFKA_HOME`` overrides."""
    if home := os.environ.get("CLEW_KAFKA_HOME"):
        return Path(home)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "clew" / "kafka" / kafka_version()


def missing() -> str | None:
    """Why a broker cannot start here, naming the command that fixes it; None if it can."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "the Kafka client is not installed: pip install -e '.[kafka]'"
    if shutil.which("java") is None:
        return "Kafka needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
    if not (kafka_home() / ".complete").is_file():
        return f"Kafka's jars are not in {kafka_home()}: run {FETCH} (needs Maven)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: the broker gets SIGTERM if the test process dies, so a
    crashed session leaves no JVM behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class KafkaBroker:
    """One broker; ``bootstrap`` is its address once started."""

    def __init__(self, workdir: Path, home: Path | None = None) -> None:
        self.workdir = workdir
        self.home = home or kafka_home()
        self.port = _free_port()
        self.controller_port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_file = workdir / "broker.log"
        self.controller_log_file = workdir / "controller.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._controller: subprocess.Popen[bytes] | None = None

    def _java(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java") or "java"
        return [java, "-Xms256m", "-Xmx768m", "-cp", str(self.home / "libs" / "*"), main, *args]

    def _write_configs(self) -> tuple[Path, Path]:
        """``server.properties`` of the broker (node 1) and ``controller.properties`` of its
        controller (node 2)."""
        common = {
            "controller.quorum.voters": f"2@127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        }
        broker = {
            "process.roles": "broker",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            **common,
            **_BROKER_SETTINGS,
        }
        controller = {
            "process.roles": "controller",
            "node.id": "2",
            "listeners": f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.workdir / "controller"),
            **common,
        }
        paths = self.workdir / "server.properties", self.workdir / "controller.properties"
        for path, settings in zip(paths, (broker, controller), strict=True):
            path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return paths

    def start(self, timeout_s: float = 90.0) -> None:
        """Format the storages, start both JVMs, return once the broker answers and its group
        and transaction coordinators are loaded. Raises :class:`KafkaStartError` otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        broker, controller = self._write_configs()
        # Kafka's storage tool reads an id starting with "-" as an option: keep the first
        # character a letter.
        cluster_id = "k" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
        for config in (controller, broker):
            fmt = ("format", "-t", cluster_id, "-c", str(config))
            formatted = subprocess.run(
                self._java("kafka.tools.StorageTool", *fmt),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            if formatted.returncode != 0:
                raise KafkaStartError(f"formatting Kafka's storage failed:\n{formatted.stderr}")
        self._controller = self._spawn(controller, self.controller_log_file)
        self._launch(broker, timeout_s)

    def _spawn(self, config: Path, log_file: Path) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as log:
            return subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def _launch(self, config: Path, timeout_s: float) -> None:
        """Start the broker's JVM on its formatted storage; return once it is ready."""
        self._process = self._spawn(config, self.log_file)
        try:
            self._await_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise

    def _failed(self, why: str) -> KafkaStartError:
        tail = self.log_file.read_text(errors="replace").splitlines()[-40:]
        return KafkaStartError(f"{why}; the end of {self.log_file}:\n" + "\n".join(tail))

    def _await_ready(self, deadline: float) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise self._failed(f"Kafka exited with status {self._process.returncode}")
            if self._controller is not None and self._controller.poll() is not None:
                raise self._failed(
                    f"Kafka's controller exited with status {self._controller.returncode} "
                    f"(its log: {self.controller_log_file})"
                )
            if time.monotonic() > deadline:
                raise self._failed("Kafka did not answer in time")
            with contextlib.suppress(KafkaException):
                if admin.list_topics(timeout=1).brokers:
                    break
            time.sleep(0.2)
        # The first consumer group and the first transaction create Kafka's internal topics;
        # doing it here keeps that time out of the first test's deadlines.
        quiet = {"bootstrap.servers": self.bootstrap, "log_level": 0}
        producer = Producer({**quiet, "transactional.id": "clew-warm-up"})
        producer.init_transactions(max(1.0, deadline - time.monotonic()))
        producer.close()
        consumer = Consumer({**quiet, "group.id": "clew-warm-up"})
        try:
            while True:
                try:
                    consumer.committed([TopicPartition("clew-warm-up", 0)], timeout=5)
                    return
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise self._failed(f"no group coordinator: {exc}") from None
                time.sleep(0.2)
        finally:
            consumer.close()

    def clear(self, timeout_s: float = 60.0) -> None:
        """Delete every topic and consumer group (but Kafka's internal ones), and return once
        the broker no longer lists them. A group whose members have not all left yet (a
        killed process's session has not timed out) is retried until ``timeout_s``."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s

        def topics() -> set[str]:
            listed = admin.list_topics(timeout=10).topics
            return {t for t in listed if not t.startswith("__")}

        if present := sorted(topics()):
            for done in admin.delete_topics(present, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):  # already being deleted
                    done.result()
        groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid]
        while groups:
            futures = admin.delete_consumer_groups(groups, request_timeout=10)
            left = []
            for group, done in futures.items():
                try:
                    done.result()
                except KafkaException as exc:
                    code = exc.args[0].code()
                    if code == KafkaError.NON_EMPTY_GROUP:
                        left.append(group)
                    elif code != KafkaError.GROUP_ID_NOT_FOUND:
                        raise
            if left and time.monotonic() > deadline:
                raise AssertionError(f"consumer groups still have members: {left}")
            groups = left
            if groups:
                time.sleep(0.2)
        while remaining := topics():
            assert time.monotonic() < deadline, f"Kafka did not delete {sorted(remaining)}"
            time.sleep(0.1)

    def restart(self, down_s: float, timeout_s: float = 90.0) -> float:
        """Kill the broker (SIGKILL; its controller stays up), leave it down for ``down_s``
        seconds, and start it again on the same ports and data: a broker that crashed and
        came back, its partition leaders with a new epoch. Returns the monotonic time it
        answered again.

        Killed rather than stopped: a controlled shutdown of a cluster's only broker can
        leave a transaction hanging for good (the coordinator drops the commit markers of
        partitions that have no leader during the shutdown: "Couldn't find leader endpoint
        ... can be skipped"), which only ``kafka-transactions.sh abort`` ends; after a crash
        the coordinator writes the markers when it loads again."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
        time.sleep(down_s)
        self._launch(self.workdir / "server.properties", timeout_s)
        return time.monotonic()

    def stop(self) -> None:
        """Stop the broker, then its controller (SIGTERM, then SIGKILL after 30 s). Safe to
        call twice."""
        process, self._process = self._process, None
        controller, self._controller = self._controller, None
        for proc in (process, controller):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def kafka_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Body of a session fixture: a running broker; without one, a skip saying what to
    install, or a failure under CI (:func:`_services.unavailable`)."""
    reason = missing()
    if reason is not None:
        unavailable(reason)
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker
