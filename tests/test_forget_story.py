"""Issue 6's story through a running Clew: Ada browses on her phone and her laptop, signs up
with an email and a user id, orders; her events are forwarded to a webhook and, months later,
age into cold storage. She asks to be forgotten: the request finishes, `clew privacy verify`
finds no trace of her anywhere, Bob's and Carol's data are untouched in every store, the
webhook got a deletion notice, and her later events are acknowledged but never stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, drained, make_settings, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.destinations import DestinationConfig, DestinationDirectory, destinations_dir
from clew.lake.query import Lake
from clew.lake.tiers import run_lifecycle
from destinations._receiver import Receiver

pytestmark = pytest.mark.slow

EMAIL, USER = "ada@analytical.test", "ada-1815"
PHONE, LAPTOP = "ada-phone", "ada-laptop"
ADA = f"user_id = '{USER}' OR anonymous_id IN ('{PHONE}', '{LAPTOP}')"
# name: (their rows in the lake, their Profile API reference, how deliveries name them)
OTHERS = {
    "bob": ("user_id = 'bob-1'", "user_id:bob-1", "bob-1"),
    "carol": ("anonymous_id = 'carol-web'", "anonymous_id:carol-web", "carol-web"),
}


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def traffic(now: datetime) -> list[dict[str, Any]]:
    old = now - timedelta(days=120)

    def at(base: datetime, minutes: int) -> str:
        return iso(base + timedelta(minutes=minutes))

    return [
        {"type": "page", "name": "Home", "anonymousId": PHONE, "timestamp": at(old, 0)},
        {"type": "page", "name": "Pricing", "anonymousId": LAPTOP, "timestamp": at(old, 5)},
        {
            "type": "identify",
            "anonymousId": PHONE,
            "userId": USER,
            "traits": {"email": EMAIL, "name": "Ada"},
            "timestamp": at(old, 10),
        },
        {
            "type": "identify",
            "anonymousId": LAPTOP,
            "traits": {"email": EMAIL},
            "timestamp": at(old, 12),
        },
        {
            "type": "track",
            "event": "Order Completed",
            "userId": USER,
            "properties": {"revenue": 42},
            "timestamp": at(old, 20),
        },
        {"type": "track", "event": "Product Viewed", "anonymousId": PHONE,
         "timestamp": at(now, -5)},
        {"type": "identify", "userId": "bob-1", "traits": {"email": "bob@builder.test"},
         "timestamp": at(old, 30)},
        {"type": "track", "event": "Order Completed", "userId": "bob-1",
         "properties": {"revenue": 7}, "timestamp": at(old, 31)},
        {"type": "track", "event": "Product Viewed", "userId": "bob-1", "timestamp": at(now, -4)},
        {"type": "page", "name": "Home", "anonymousId": "carol-web", "timestamp": at(now, -3)},
    ]  # fmt: skip


class Story:
    def __init__(self, settings: Settings, server: BackgroundServer, hook: Receiver) -> None:
        self.settings = settings
        self.server = server
        self.hook = hook
        self.http = httpx.Client(base_url=server.url, timeout=10)
        token = server.clew.catalog.create_token("dpo", ["profiles", "privacy"])
        self.headers = {"Authorization": f"Bearer {token}"}
        self.lake = Lake(settings.lake_path, settings.cold_path)

    def send(self, events: list[dict[str, Any]]) -> None:
        r = self.http.post("/v1/batch", json={"batch": events}, auth=(WRITE_KEY, ""))
        assert r.status_code == 200, r.text

    def count(self, where: str, *, cold: bool = True, table: str = "events") -> int:
        q = f"SELECT count(*) FROM {table} WHERE {where}"
        return int(self.lake.sql(q, include_cold=cold).rows[0][0])

    def profile(self, ref: str) -> httpx.Response:
        return self.http.get(f"/v1/profiles/{ref}", headers=self.headers)

    def delivered(self, match: str) -> int:
        batches = [r for r in self.hook.accepted() if "x-clew-notice" not in r.headers]
        return sum(1 for r in batches for e in r.batch if match in str(e))

    def settle(self) -> None:
        wait_for(lambda: drained(self.server.url), 60)

    def forget(self, identifier: str) -> dict[str, Any]:
        body = {"type": "suppress_with_delete", "identifier": identifier}
        r = self.http.post("/v1/privacy/requests", json=body, headers=self.headers)
        assert r.status_code == 202, r.text
        found: dict[str, Any] = {}

        def ended() -> bool:
            reply = self.http.get(f"/v1/privacy/requests/{r.json()['id']}", headers=self.headers)
            found.update(reply.json())
            return found["status"] in ("finished", "partial", "failed")

        wait_for(ended, 120, 0.2)
        return found

    def others(self) -> dict[str, tuple[int, int, int]]:
        """Per other person: rows in the lake (warm + cold), webhook deliveries, and whether
        the Profile API knows them."""
        return {
            name: (self.count(where), self.delivered(needle), self.profile(ref).status_code)
            for name, (where, ref, needle) in OTHERS.items()
        }


@pytest.fixture
def story(tmp_path: Path) -> Iterator[Story]:
    settings = make_settings(tmp_path / "data")
    hook = Receiver().start()
    config = DestinationConfig(
        name="crm",
        url=hook.url,
        deletion_notices=True,
        max_batch_wait_ms=100,
        retry_initial_s=0.05,
        retry_max_delay_s=0.3,
    )
    DestinationDirectory(destinations_dir(settings.data_dir)).save(config, replace=True)
    server = BackgroundServer(settings).__enter__()
    server.clew.catalog.create_source("tests", WRITE_KEY)
    s = Story(settings, server, hook)
    try:
        yield s
    finally:
        s.http.close()
        server.__exit__()
        hook.stop()


def test_a_person_is_forgotten_everywhere_including_cold_storage(story: Story) -> None:
    now = datetime.now(UTC)
    story.send(traffic(now))
    wait_for(lambda: story.count("true") == 10 and story.delivered(USER) >= 2, 60)
    story.settle()

    # Months later (accelerated: the lifecycle is told it is now): old days go cold.
    report = run_lifecycle(story.settings, int(time.time() * 1000))
    assert report.rows_moved >= 7
    assert story.count(ADA, cold=False) == 1 and story.count(ADA) == 6
    before = story.others()
    assert before == {"bob": (3, 3, 200), "carol": (1, 1, 200)}

    result = story.forget(f"email:{EMAIL}")
    audit = result["audit"]
    assert result["status"] == "finished", audit
    assert audit["verify"]["clean"] is True
    assert story.count(ADA) == 0
    assert story.profile(f"email:{EMAIL}").status_code == 404
    assert story.others() == before  # nobody else lost anything
    notices = [r for r in story.hook.requests if r.headers.get("x-clew-notice") == "deletion"]
    assert len(notices) == 1

    ids = [f"email:{EMAIL}", f"user_id:{USER}", f"anonymous_id:{PHONE}", f"anonymous_id:{LAPTOP}"]
    data = ["--data-dir", str(story.settings.data_dir)]
    verified = CliRunner().invoke(app, ["privacy", "verify", *ids, *data])
    assert verified.exit_code == 0, verified.output
    assert "zero traces" in verified.output

    # Later events for any of her identifiers are acknowledged and dropped.
    story.send(
        [
            {"type": "page", "name": "Home", "anonymousId": PHONE},
            {"type": "identify", "anonymousId": "ada-tablet", "traits": {"email": EMAIL}},
            {"type": "track", "event": "Came Back", "userId": USER},
            {"type": "track", "event": "Product Viewed", "userId": "bob-1"},
        ]
    )
    wait_for(lambda: story.count(OTHERS["bob"][0]) == 4, 60)
    story.settle()
    assert story.count(f"{ADA} OR anonymous_id = 'ada-tablet'") == 0
    assert story.profile(f"user_id:{USER}").status_code == 404
