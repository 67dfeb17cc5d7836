"""Shared fixtures: Clew in-process on a free port, `clew serve` as a real subprocess, and one
server of each kind (Redis, Redis Cluster, S3, Kafka) for the whole session (a headless
Chromium per module: tests/browser/conftest.py)."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from _kafka import KafkaBroker, kafka_session
from _redis_cluster import ClusterService, redis_cluster
from _s3 import S3, s3_server
from _services import ServiceUnavailable, redis_server, unavailable
from _support import WRITE_KEY, ServeProcess, clew_bin, make_settings
from clew.background import BackgroundServer, free_port
from clew.config import Settings


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


@pytest.fixture(params=["sqlite", "redis"])
def cli_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The serving store every ``clew`` command of the test uses, through the environment:
    the embedded files, or the session's Redis under a key prefix of the test's own."""
    if request.param == "redis":
        monkeypatch.setenv("CLEW_STORE__BACKEND", "redis")
        monkeypatch.setenv("CLEW_STORE__REDIS_URL", request.getfixturevalue("redis_url"))
        monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", f"cli-{uuid.uuid4().hex}")
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    """Clew serving on a free loopback port, with a source whose write key is WRITE_KEY."""
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        yield srv


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
