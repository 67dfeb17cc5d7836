"""Chaos: Clew keeps its promises while the object storage under its lake goes away.

Clew runs in process with its lake on S3 (moto), reached through a TCP proxy the test cuts
for 10 s mid-stream and then restores (moto keeps its data meanwhile). Events stream in
through a client that retries on 503 as the SDKs do. After the storage returns:

- a new event reaches the lake within 30 s;
- every acknowledged event is in the lake's ``events`` table exactly once;
- the ``lake`` and ``profiles-lake`` stages' lag returns to 0 with nothing restarted, and
  neither set a record aside;
- no response was a 5xx other than 503, and the SQL API answered 503 during the cut;
- ``/health`` named object storage while it was away and says ``ok`` after.

The test prints its figures, which docs/scale-out.md quotes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _health_watch import HealthWatch
from _s3 import S3
from _scaleout import lake_counts
from _support import WRITE_KEY, ServeProcess, wait_for
from _tcp_proxy import TcpProxy
from clew.background import free_port
from clew.config import LakeSettings, Settings
from clew.sources import Catalog
from clew.stages.setaside import StageLedger

pytestmark = pytest.mark.slow

OUTAGE_S = 10.0
RECOVERY_BOUND_S = 30.0
LAKE_GROUPS = ("lake", "profiles-lake")


class Sender:
    """One client posting batches of 3 events until stopped, each batch again after a 503 or
    a network error until acknowledged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[str] = []
        self.refused_503 = 0
        self.other_5xx: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def post(self, client: httpx.Client, batch: list[dict[str, Any]]) -> None:
        while True:
            try:
                r = client.post(f"{self.url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if r.status_code == 200:
                self.acked.extend(ev["messageId"] for ev in batch)
                return
            assert r.status_code >= 500, r.text
            if r.status_code == 503:
                self.refused_503 += 1
            else:
                self.other_5xx.append(r.status_code)
            time.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=15) as client:
            while not self._stop.is_set():
                self.post(client, [event(f"chaos-{n}-{k}", n * 3 + k) for k in range(3)])
                n += 1
                time.sleep(0.05)


def event(message_id: str, n: int) -> dict[str, Any]:
    return {
        "type": "identify" if n % 5 == 0 else "track",
        "event": "Order Completed",
        "userId": f"user-{n % 7}",
        "traits": {"plan": f"p{n % 3}"},
        "properties": {"revenue": n % 7 + 0.5},
        "messageId": message_id,
    }


def lag(url: str, groups: tuple[str, ...] | None = None) -> int:
    """Records not yet committed by the stages of ``groups`` (all), from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    rows = re.findall(r'^clew_consumer_lag\{group="([^"]+)",[^}]*\} (\d+)', text, re.MULTILINE)
    assert rows, "no clew_consumer_lag in /metrics"
    return sum(int(n) for g, n in rows if groups is None or g in groups)


@pytest.fixture
def proxy(s3: S3) -> Iterator[TcpProxy]:
    p = TcpProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


def test_the_lake_stages_heal_after_an_object_storage_outage(
    tmp_path: Path, s3: S3, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.bucket()
    for name, value in {
        "CLEW_LAKE__URI": f"s3://{bucket}/lake",
        **S3(proxy.url).storage_options,
    }.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    # The test reads the lake past the proxy.
    direct = LakeSettings(uri=f"s3://{bucket}/lake", storage_options=s3.storage_options)
    settings = Settings(data_dir=data_dir, lake=direct)
    catalog = Catalog.open(settings)
    catalog.create_source("tests", WRITE_KEY)
    token = catalog.create_token("analyst")
    catalog.close()
    serve = ServeProcess(data_dir, free_port())
    serve.start(timeout_s=60)
    try:
        with HealthWatch(serve.url) as health, Sender(serve.url) as sender:
            wait_for(
                lambda: len(sender.acked) >= 30 and _landed(settings, set(sender.acked[:30])),
                timeout_s=60,
                interval_s=0.5,
            )
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(2)
            # The SQL API tells a client to come back later, as for any outage.
            query = httpx.post(
                f"{serve.url}/v1/sql",
                json={"query": "SELECT count(*) FROM events"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
            proxy.restore()
            restored_at = time.monotonic()
            # Recovery: an event sent once the storage is back reaches the lake.
            with httpx.Client(timeout=15) as client:
                sender.post(client, [event("chaos-after", 1)])
            wait_for(lambda: _landed(settings, {"chaos-after"}), RECOVERY_BOUND_S, 0.2)
            recovery_s = time.monotonic() - restored_at
            time.sleep(2)
        acked = set(sender.acked)
        assert len(acked) == len(sender.acked), "an acknowledged messageId twice"
        wait_for(lambda: lag(serve.url) == 0, timeout_s=60, interval_s=0.5)
        lag_zero_s = time.monotonic() - restored_at
        counts = lake_counts(settings)
        lost = sorted(acked - counts.keys())
        duplicated = sorted(m for m, n in counts.items() if n > 1)
        print(
            f"\nchaos[object storage cut {OUTAGE_S:.0f} s]: recovered {recovery_s:.1f}s after "
            f"it returned (lag 0 after {lag_zero_s:.1f}s); {sender.refused_503} requests "
            f"refused with 503; {len(acked)} events acknowledged, {len(lost)} lost, "
            f"{len(duplicated)} duplicated"
        )
        assert not lost and not duplicated
        assert query.status_code == 503, query.text
        assert query.json()["code"] == "lake_unavailable" and "retry-after" in query.headers
        assert not sender.other_5xx
        ledger = StageLedger(settings.state_path)
        trouble = ledger.trouble()
        ledger.close()
        assert not any(t.set_aside_recent for g, t in trouble.items() if g in LAKE_GROUPS)
        during = [(st, down) for at, st, down in health.samples if cut_at < at < restored_at]
        assert any(st != "ok" and "object_storage" in down for st, down in during), during
        wait_for(
            lambda: httpx.get(f"{serve.url}/health", timeout=5).json()["status"] == "ok",
            timeout_s=30,
            interval_s=0.5,
        )
        assert lag(serve.url, LAKE_GROUPS) == 0
        log_text = serve.log_path.read_text(errors="replace")
        assert not re.findall(r"stage worker \S+ exited with .*; restarting it", log_text)
    finally:
        serve.stop()


def _landed(settings: Settings, ids: set[str]) -> bool:
    try:
        return ids <= set(lake_counts(settings))
    except Exception:  # the table may not exist yet
        return False
