"""Read your writes end to end, in the two deployments: `clew serve` as a user runs it (the
embedded log, stages in worker processes) and Clew on a real Kafka broker with its serving
store in a real Redis (where a Kafka transaction marker follows every record the validate
stage writes, so the profiles stage's store offsets alone never reach the end of ``events``).
Each identify's trait is in the very next read that asks for it with ``after``."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from _kafka import KafkaBroker
from _services import require_module
from _support import WRITE_KEY, ServeProcess, clew_bin, make_settings
from clew.background import BackgroundServer
from clew.config import LogSettings, StoreSettings
from clew.raw_records import POSITION_HEADER

pytestmark = pytest.mark.slow

ROUNDS = 5
WAIT_MS = 10_000


def read_your_writes(client: httpx.Client, token: str, user: str) -> None:
    """``ROUNDS`` identifies, each read back at once with ``after``: the answer always holds
    the trait just sent."""
    for i in range(ROUNDS):
        sent = client.post(
            "/v1/identify",
            json={"type": "identify", "userId": user, "traits": {"round": i}},
            auth=(WRITE_KEY, ""),
        )
        assert sent.status_code == 200, sent.text
        r = client.get(
            f"/v1/profiles/user_id:{user}",
            params={"after": sent.headers[POSITION_HEADER], "wait_ms": WAIT_MS},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["traits"]["round"] == i


def test_clew_serve_reads_your_writes(serve_process: ServeProcess) -> None:
    token = (
        subprocess.run(
            [clew_bin(), "tokens", "create", "rw", "--data-dir", str(serve_process.data_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .split()[-1]
    )
    with httpx.Client(base_url=serve_process.url, timeout=30) as client:
        read_your_writes(client, token, "u-serve")


@pytest.mark.usefixtures("empty_kafka")
def test_on_kafka_and_redis(tmp_path: Path, kafka_broker: KafkaBroker, redis_url: str) -> None:
    require_module("redis", "pip install -e '.[redis]'")
    settings = make_settings(
        tmp_path / "data",
        log=LogSettings(
            backend="kafka", bootstrap_servers=kafka_broker.bootstrap, replication_factor=1
        ),
        store=StoreSettings(
            backend="redis", redis_url=redis_url, redis_prefix=f"ryw-{uuid.uuid4().hex[:8]}"
        ),
    )
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("tests", WRITE_KEY)
        token = server.clew.catalog.create_token("rw", ["profiles"])
        with httpx.Client(base_url=server.url, timeout=30) as client:
            read_your_writes(client, token, "u-kafka")
