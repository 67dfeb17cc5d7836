"""`make cluster` as an operator uses it (docs/operations.md): scripts/cluster.sh starts a
Kafka (KRaft) and a Redis with an append-only file on loopback and writes a clew.toml; `clew
serve` started with that file takes an event into the lake; `stop` stops both services."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from _kafka import missing
from _services import free_port, require_module, unavailable
from _support import ServeProcess, clew_bin, lake_count, wait_for

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster.sh"
WRITE_KEY = "cluster-write-key"


def cluster(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=180
    )


def test_make_cluster_runs_a_clew_serve_that_lands_an_event_in_the_lake(tmp_path: Path) -> None:
    require_module("redis", "pip install -e '.[redis]'")
    if reason := missing():
        unavailable(reason)
    env = {
        **os.environ,
        "CLEW_CLUSTER_DIR": str(tmp_path / "cluster"),
        "CLEW_CLUSTER_KAFKA_PORT": str(free_port()),
        "CLEW_CLUSTER_CONTROLLER_PORT": str(free_port()),
        "CLEW_CLUSTER_REDIS_PORT": str(free_port()),
    }
    started = cluster("start", env)
    try:
        assert started.returncode == 0, started.stderr
        config = tmp_path / "cluster" / "clew.toml"
        assert str(config) in started.stdout and "clew serve" in started.stdout
        assert config.stat().st_mode & 0o077 == 0, "clew.toml holds the master key: 0600"

        data_dir = tmp_path / "lake-machine"
        subprocess.run(
            [
                clew_bin(),
                "sources",
                "create",
                "web",
                "--write-key",
                WRITE_KEY,
                "--config",
                str(config),
                "--data-dir",
                str(data_dir),
            ],
            check=True,
            capture_output=True,
        )
        serve = ServeProcess(data_dir, free_port(), args=["--config", str(config)])
        serve.start(timeout_s=90)
        try:
            answer = httpx.post(
                serve.url + "/v1/track",
                auth=(WRITE_KEY, ""),
                json={"userId": "ada", "event": "Signed Up", "messageId": "cluster-1"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            wait_for(lambda: lake_count(data_dir) == 1, timeout_s=90, interval_s=0.5)
        finally:
            serve.stop()
    finally:
        stopped = cluster("stop", env)
    assert stopped.returncode == 0, stopped.stderr
    assert cluster("status", env).stdout.split() == ["kafka:", "stopped", "redis:", "stopped"]
