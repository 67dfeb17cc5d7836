"""The services a process depends on (``clew.dependencies``, picked in
``clew.backends.dependencies``): a service that does not answer is named with its address and
setting, within seconds, at startup and in ``/health`` while running, and ``/health`` never
waits for it. In process; a Redis of the test's own, stopped mid-test."""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from _services import ServiceUnavailable, free_port, redis_server, unavailable
from _support import make_settings, wait_for
from clew import dependencies as dependencies_module
from clew.backends import dependencies
from clew.collector.process import CollectorProcess
from clew.dependencies import Dependency, DependencyWatch, UnreachableError, check_reachable
from clew.server import Clew
from clew.stages import health as health_module

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


def test_the_embedded_default_depends_on_no_service(tmp_path: Path) -> None:
    assert dependencies(make_settings(tmp_path / "data")) == []


def test_a_kafka_nobody_listens_on_is_named_with_its_setting_within_seconds(
    tmp_path: Path,
) -> None:
    pytest.importorskip("confluent_kafka")
    port = free_port()
    settings = make_settings(tmp_path / "data")
    settings.log.backend = "kafka"
    settings.log.bootstrap_servers = f"127.0.0.1:{port}"
    (kafka,) = dependencies(settings)
    started = time.monotonic()
    with pytest.raises(UnreachableError) as caught:
        check_reachable([kafka])
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(f"cannot reach Kafka at 127.0.0.1:{port} (log.bootstrap_servers): ")
    assert "Connection refused" in message
    assert "\n" not in message

    watch = DependencyWatch([kafka], every_s=0.2, timeout_s=1.0)
    watch.start()
    try:
        wait_for(lambda: not watch.state()["kafka"]["ok"], timeout_s=10)
    finally:
        watch.stop()
    state = watch.state()["kafka"]
    assert state["setting"] == "log.bootstrap_servers"
    assert "Connection refused" in state["reason"]


def test_a_redis_url_is_shown_without_its_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    settings.store.backend = "redis"
    settings.store.redis_url = "redis://:s3cret@127.0.0.1:1/0"
    (redis,) = dependencies(settings)
    with pytest.raises(UnreachableError) as caught:
        check_reachable([redis])
    assert str(caught.value) == (
        "cannot reach Redis at 127.0.0.1:1 (store.redis_url): Connection refused"
    )


def test_a_collector_says_degraded_naming_redis_while_it_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dependencies_module, "PROBE_EVERY_S", 0.2)
    monkeypatch.setattr(dependencies_module, "PROBE_TIMEOUT_S", 1.0)
    with ExitStack() as stack:
        (tmp_path / "redis-dir").mkdir()
        try:
            redis = stack.enter_context(redis_server(tmp_path / "redis-dir"))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        settings = make_settings(tmp_path / "data")
        settings.store.backend = "redis"
        settings.store.redis_url = redis.url
        process = CollectorProcess(settings)
        try:
            client = TestClient(process.app)
            wait_for(lambda: process.dependencies.state()["redis"]["checked_at"] is not None)
            up = client.get("/health").json()
            assert (up["status"], up["dependencies"]["redis"]["ok"]) == ("ok", True)

            stack.close()  # stops Redis
            wait_for(lambda: client.get("/health").json()["status"] == "degraded", timeout_s=15)
            started = time.monotonic()
            down = client.get("/health")
            assert time.monotonic() - started < 0.5
            assert down.status_code == 200  # still accepting: the status says the rest
            body = down.json()
            assert body["ok"] is True
            assert body["dependencies"]["redis"]["ok"] is False
            assert body["dependencies"]["redis"]["setting"] == "store.redis_url"
            assert "Connection refused" in body["dependencies"]["redis"]["reason"]
            assert 'clew_dependency_up{dependency="redis"} 0' in client.get("/metrics").text
        finally:
            process.close()


def test_clew_serve_health_has_stages_with_lag_and_rates_and_its_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_module, "SAMPLE_EVERY_S", 0.1)
    clew = Clew(make_settings(tmp_path / "data"))
    clew.start()
    try:
        client = TestClient(clew.app)
        wait_for(lambda: client.get("/health").json()["stages"]["validate"]["lag"] is not None)
        body = client.get("/health").json()
    finally:
        clew.stop(drain_timeout_s=0)
    assert (body["ok"], body["status"], body["role"], body["dependencies"]) == (
        True,
        "ok",
        "serve",
        {},
    )
    validate = body["stages"]["validate"]
    assert set(validate) >= {"alive", "status", "reason", "errors", "set_aside"}
    assert (validate["lag"], validate["failures_5m"], validate["conflicts_5m"]) == (0, 0, 0)
    assert body["lifecycle"]["status"] == "ok"


def test_a_service_that_answers_again_is_ok_again_at_the_next_probe() -> None:
    down = True

    def probe(timeout_s: float) -> None:
        if down:
            raise OSError("Connection refused")

    service = Dependency("redis", "Redis", "redis-1:6379", "store.redis_url", probe)
    watch = DependencyWatch([service], every_s=0.05, timeout_s=1.0)
    watch.start()
    try:
        wait_for(lambda: watch.state()["redis"]["checked_at"] is not None)
        assert watch.unreachable == ["redis"]
        went_down = watch.state()["redis"]["since"]
        down = False
        wait_for(lambda: watch.state()["redis"]["ok"])
    finally:
        watch.stop()
    state = watch.state()["redis"]
    assert state["reason"] is None and state["since"] >= went_down
    assert watch.unreachable == []


def test_a_collector_requiring_tokens_shows_only_ok_and_status_without_one(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data")
    settings.metrics.require_token = True
    process = CollectorProcess(settings)
    try:
        body = TestClient(process.app).get("/health").json()
    finally:
        process.close()
    assert body == {"ok": True, "status": "ok"}
