"""`clew serve`, `clew collector` and `clew worker` as an operator runs them: a service that is
down at startup ends the process within seconds with one line naming it and its setting (a
traceback only with --debug); SIGTERM ends every role within 10 s and loses nothing
acknowledged; a worker's --http-port serves /health and /metrics of its stages and says
degraded, naming Redis, while Redis is down. Real processes, so marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from _kafka import KafkaBroker
from _services import ServiceUnavailable, free_port, redis_server, unavailable
from _support import WRITE_KEY, clew_bin, wait_for
from clew.log.embedded import EmbeddedLog
from clew.topics import RAW_TOPIC

pytestmark = pytest.mark.slow

SHUTDOWN_BOUND_S = 10.0
STARTUP_FAILURE_BOUND_S = 10.0


def _env(**values: str) -> dict[str, str]:
    return {**os.environ, "CLEW_LAKE__FLUSH_INTERVAL_MS": "100", **values}


def _kafka_down() -> dict[str, str]:
    return {"CLEW_LOG__BACKEND": "kafka", "CLEW_LOG__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}


def _redis_down() -> dict[str, str]:
    return {
        "CLEW_STORE__BACKEND": "redis",
        "CLEW_STORE__REDIS_URL": f"redis://:secret@127.0.0.1:{free_port()}/0",
    }


ROLES = {
    "serve": ["serve", "--port", "0"],
    "collector": ["collector", "--port", "0"],
    "worker": ["worker", "--stage", "validate", "--stage", "profiles"],
}


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(
    ("service", "broken", "setting"),
    [
        ("Kafka", _kafka_down, "log.bootstrap_servers"),
        ("Redis", _redis_down, "store.redis_url"),
    ],
    ids=["kafka", "redis"],
)
def test_a_service_down_at_startup_ends_the_role_in_one_line_within_seconds(
    tmp_path: Path, role: str, service: str, broken: object, setting: str
) -> None:
    pytest.importorskip("confluent_kafka")
    env = _env(**broken())  # type: ignore[operator]
    argv = [clew_bin(), *ROLES[role], "--data-dir", str(tmp_path / "data")]
    argv = [a if a != "0" else str(free_port()) for a in argv]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert took < STARTUP_FAILURE_BOUND_S
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach {service} at 127.0.0.1:")
    assert f"({setting}): Connection refused" in lines[0]
    assert "secret" not in lines[0]


def test_debug_shows_the_traceback_of_a_startup_failure(tmp_path: Path) -> None:
    argv = [clew_bin(), "--debug", "collector", "--port", str(free_port())]
    argv += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(argv, env=_env(**_redis_down()), capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "UnreachableError" in done.stderr


def _accepted(url: str, n: int) -> int:
    """Events the collector at ``url`` acknowledged, of ``n`` sent one request each."""
    ok = 0
    with httpx.Client(auth=(WRITE_KEY, ""), timeout=10) as client:
        for i in range(n):
            body = {
                "type": "track",
                "event": "Signal Sent",
                "userId": f"u{i}",
                "messageId": f"m{i}",
            }
            ok += client.post(f"{url}/v1/track", json=body).status_code == 200
    return ok


def _raw_records(data_dir: Path) -> int:
    log = EmbeddedLog(data_dir / "log.db")
    try:
        return sum(log.end_offsets(RAW_TOPIC).values())
    finally:
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code in (200, 503)
    except httpx.HTTPError:
        return False


class _Role:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def sigterm(self) -> float:
        """SIGTERM; the seconds until the process exited (fails past the bound)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(SHUTDOWN_BOUND_S + 20)
        finally:
            self.close()
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def roles() -> Iterator[list[_Role]]:
    started: list[_Role] = []
    yield started
    for role in started:
        role.close()


def _add_source(data_dir: Path) -> None:
    argv = [clew_bin(), "sources", "create", "tests", "--write-key", WRITE_KEY]
    subprocess.run([*argv, "--data-dir", str(data_dir)], check=True, capture_output=True)


def test_sigterm_ends_clew_serve_within_10_s_with_every_acknowledged_event_kept(
    tmp_path: Path, roles: list[_Role]
) -> None:
    data_dir = tmp_path / "data"
    _add_source(data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [clew_bin(), "serve", "--port", str(port), "--data-dir", str(data_dir)]
    role = _Role(argv, _env(), tmp_path / "serve.log")
    roles.append(role)
    wait_for(lambda: _answers(url + "/health") or role.proc.poll() is not None, timeout_s=60)
    accepted = _accepted(url, 50)
    took = role.sigterm()
    assert role.proc.returncode == 0, role.log.read_text()[-3000:]
    assert took < SHUTDOWN_BOUND_S, role.log.read_text()[-3000:]
    assert _raw_records(data_dir) == accepted == 50


def test_sigterm_ends_clew_collector_within_10_s_with_every_acknowledged_event_kept(
    tmp_path: Path, roles: list[_Role]
) -> None:
    data_dir = tmp_path / "data"
    _add_source(data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [clew_bin(), "collector", "--port", str(port), "--data-dir", str(data_dir)]
    role = _Role(argv, _env(), tmp_path / "collector.log")
    roles.append(role)
    wait_for(lambda: _answers(url + "/health") or role.proc.poll() is not None, timeout_s=60)
    accepted = _accepted(url, 50)
    took = role.sigterm()
    assert role.proc.returncode == 0, role.log.read_text()[-3000:]
    assert took < SHUTDOWN_BOUND_S
    assert _raw_records(data_dir) == accepted == 50


def test_sigterm_ends_a_kafka_worker_within_10_s_even_while_it_waits_to_join_its_group(
    tmp_path: Path, roles: list[_Role], empty_kafka: KafkaBroker
) -> None:
    env = _env(
        CLEW_LOG__BACKEND="kafka",
        CLEW_LOG__BOOTSTRAP_SERVERS=empty_kafka.bootstrap,
        CLEW_LOG__REPLICATION_FACTOR="1",
    )
    http = free_port()
    argv = [clew_bin(), "worker", "--stage", "validate", "--stage", "profiles"]
    argv += ["--http-port", str(http), "--data-dir", str(tmp_path / "data")]
    role = _Role(argv, env, tmp_path / "worker.log")
    roles.append(role)
    url = f"http://127.0.0.1:{http}"
    wait_for(lambda: _answers(url + "/health") or role.proc.poll() is not None, timeout_s=60)
    health = httpx.get(url + "/health").json()
    assert health["role"] == "worker"
    assert set(health["stages"]) == {"validate", "profiles"}
    assert health["dependencies"]["kafka"]["ok"] is True
    metrics = httpx.get(url + "/metrics").text
    assert 'clew_stage_conflicts_total{stage="profiles"}' in metrics
    took = role.sigterm()
    assert role.proc.returncode == 0, role.log.read_text()[-3000:]
    assert took < SHUTDOWN_BOUND_S, role.log.read_text()[-3000:]

    # A member killed without leaving holds up the next join until its session expires
    # (45 s by default): a worker stopped while it waits must not wait with it.
    argv = [a for a in argv if a not in ("--http-port", str(http))]
    killed = _Role(argv, env, tmp_path / "killed.log")
    roles.append(killed)
    time.sleep(12)
    killed.proc.send_signal(signal.SIGKILL)
    killed.close()
    joining = _Role(argv, env, tmp_path / "joining.log")
    roles.append(joining)
    time.sleep(5)
    took = joining.sigterm()
    assert joining.proc.returncode == 0, joining.log.read_text()[-3000:]
    assert took < SHUTDOWN_BOUND_S, joining.log.read_text()[-3000:]


def test_a_worker_says_degraded_naming_redis_while_it_is_down_and_stops_within_10_s(
    tmp_path: Path, roles: list[_Role]
) -> None:
    with ExitStack() as stack:
        (tmp_path / "redis").mkdir()
        try:
            redis = stack.enter_context(redis_server(tmp_path / "redis"))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        http = free_port()
        env = _env(CLEW_STORE__BACKEND="redis", CLEW_STORE__REDIS_URL=redis.url)
        argv = [clew_bin(), "worker", "--stage", "validate", "--http-port", str(http)]
        role = _Role([*argv, "--data-dir", str(tmp_path / "data")], env, tmp_path / "w.log")
        roles.append(role)
        url = f"http://127.0.0.1:{http}/health"
        wait_for(lambda: _answers(url) or role.proc.poll() is not None, timeout_s=60)
        wait_for(lambda: httpx.get(url).json()["dependencies"]["redis"]["checked_at"])
        assert httpx.get(url).json()["status"] == "ok"

        stack.close()  # stops Redis
        wait_for(lambda: httpx.get(url).json()["status"] == "degraded", timeout_s=30)
        body = httpx.get(url).json()
        assert body["ok"] is True
        redis_state = body["dependencies"]["redis"]
        assert (redis_state["ok"], redis_state["setting"]) == (False, "store.redis_url")
        assert "Connection refused" in redis_state["reason"]
        metrics = httpx.get(f"http://127.0.0.1:{http}/metrics").text
        assert 'clew_dependency_up{dependency="redis"} 0' in metrics
    took = role.sigterm()
    assert role.proc.returncode == 0, role.log.read_text()[-3000:]
    assert took < SHUTDOWN_BOUND_S, role.log.read_text()[-3000:]
