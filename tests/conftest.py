"""Shared fixtures: Clew in-process on a free port, `clew serve` as a real subprocess, and one
server of each kind (Redis, Redis Cluster, S3, Kafka) for the whole session."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path

import httpx
import pytest

from _kafka import KafkaBroker, kafka_session
from _redis_cluster import ClusterService, redis_cluster
from _s3 import S3, s3_server
from _services import ServiceUnavailable, redis_server, unavailable
from clew.background import BackgroundServer, free_port
from clew.config import Settings
from clew.lake.query import Lake

WRITE_KEY = "test-write-key"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """``@pytest.mark.xfail_match(pattern)`` beside a strict xfail: the failure must also say
    what is expected (``re.search`` on its message). Another message fails the test, as
    another exception type fails a strict ``xfail(raises=...)``."""
    marker = item.get_closest_marker("xfail_match")
    try:
        return (yield)
    except Exception as exc:
        if marker is not None and not re.search(marker.args[0], str(exc)):
            pytest.fail(
                f"expected a failure matching {marker.args[0]!r}, got {type(exc).__name__}: {exc}",
                pytrace=False,
            )
        raise


def make_settings(data_dir: Path, **updates: object) -> Settings:
    """Settings for tests: a fresh data dir and a short lake flush interval."""
    s = Settings(data_dir=data_dir, port=free_port())
    s.lake.flush_interval_ms = 100
    return s.model_copy(update=updates)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    """Clew serving on a free loopback port, with a source whose write key is WRITE_KEY."""
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        yield srv


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05
) -> None:
    """Wait until ``predicate()`` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    assert predicate(), f"condition not met within {timeout_s}s"


def lake_count(data_dir: Path, table: str = "events", where: str = "true") -> int:
    return int(
        Lake(data_dir / "lake").sql(f"SELECT count(*) FROM {table} WHERE {where}").rows[0][0]
    )


def drained(url: str) -> bool:
    """Every stage of the server at ``url`` has committed everything in its topics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    lags = re.findall(r"^clew_consumer_lag\{.*\} (\d+(?:\.\d+)?)$", text, re.MULTILINE)
    return bool(lags) and all(float(v) == 0 for v in lags)


def clew_bin() -> str:
    exe = Path(sys.executable).parent / "clew"
    return str(exe) if exe.exists() else shutil.which("clew") or "clew"


class ServeProcess:
    """`clew serve` as a child process (for crash tests and real-SDK tests), run by the
    ``clew`` executable given (by default the one installed next to the test runner)."""

    def __init__(
        self, data_dir: Path, port: int, clew: str | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.clew = clew or clew_bin()
        self.args = tuple(args)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"serve-{port}.log"

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "CLEW_LAKE__FLUSH_INTERVAL_MS": "100"}
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/kill
        self.proc = subprocess.Popen(
            [
                self.clew,
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clew serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"clew serve did not start: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log_file.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log_file.close()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    """A `clew serve` child process on a free port with a source keyed WRITE_KEY; started."""
    data_dir = tmp_path / "data"
    subprocess.run(
        [
            clew_bin(),
            "sources",
            "create",
            "tests",
            "--write-key",
            WRITE_KEY,
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        capture_output=True,
    )
    proc = ServeProcess(data_dir, free_port())
    proc.start()
    yield proc
    proc.stop()


def serve_worker(serve_pid: int, stage: str) -> int | None:
    """The pid of ``serve_pid``'s worker process running ``stage``, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command (field 2) may hold spaces; the parent pid is the 2nd field after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != serve_pid or b"worker" not in args:
            continue
        if any(a == b"--stage" and b == stage.encode() for a, b in pairwise(args)):
            return int(entry.name)
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the whole session (skips, or fails under CI, without one)."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterService]:
    """A Redis Cluster of 3 primaries for the whole session (skips, or fails under CI,
    without redis-server and redis-cli)."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(redis_cluster(tmp_path_factory.mktemp("cluster")))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield cluster


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """One S3-compatible server (moto) for the session; each test makes its own bucket."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(s3_server(tmp_path_factory.mktemp("s3")))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield server


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One Kafka broker for the whole session (skips, or fails under CI, without one). Tests
    share it: each creates topics and groups with names of its own (a uuid), or asks for
    :func:`empty_kafka`."""
    yield from kafka_session(tmp_path_factory)


@pytest.fixture
def empty_kafka(kafka_broker: KafkaBroker) -> KafkaBroker:
    """The session's broker without the topics and consumer groups earlier tests left: for a
    test that uses Clew's fixed topic and group names, or reads every topic. Put it first
    (``pytestmark = pytest.mark.usefixtures("empty_kafka")``) so it runs before the fixtures
    that create topics."""
    kafka_broker.clear()
    return kafka_broker
