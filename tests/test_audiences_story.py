"""Cart abandonment end to end through a real `clew serve` with a fast clock
(``CLEW_CLOCK__SPEED``): shoppers who add to the cart and do not order within the hour enter
``cart_abandoner`` once the hour is up and leave it when they order; a webhook destination
filtered to that audience gets exactly those entries and exits, signed; the Profile API lists
the audience for the abandoners only. A cart timer outlives a SIGKILLed profiles worker and
fires once; an add-to-cart that arrives while the worker is down must count too.

Events carry explicit timestamps in the clock's time (read from the anchor the test writes
before `clew serve` starts, the one every worker then continues). Real-time stamps would lie
hours in the fast clock's past, so every cart would be an hour old on arrival.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from _support import WRITE_KEY, ServeProcess, serve_worker, wait_for
from clew.audiences.changes import ENTERED, EXITED, AudienceChange, decode
from clew.audiences.repository import DefinitionRepository, load_file
from clew.backends import open_log
from clew.background import free_port
from clew.clock import ScaledClock, to_datetime
from clew.config import Settings
from clew.destinations import (
    DestinationDirectory,
    Outbox,
    destinations_dir,
    outbox_path,
    parse_destination,
)
from clew.events import format_time
from clew.sources import Catalog
from clew.store import SQLiteProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC
from destinations._receiver import Receiver

pytestmark = pytest.mark.slow

CART = "cart_abandoner"
DEFINITIONS = Path(__file__).parents[1] / "examples" / "audiences" / "cart_abandoner.yaml"
HOOK = "cart-hook"
SECRET = "story-signing-key"
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# The collector keeps a timestamp at most a day ahead of when it received the event; the fast
# clock moves ahead of real time, so a story must finish before it is a day ahead.
MAX_LEAD_MS = 23 * HOUR_MS


def _verified(body: bytes, header: str) -> bool:
    """The check docs/destinations.md gives receivers."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def _profiles_worker(serve_pid: int) -> int | None:
    return serve_worker(serve_pid, "profiles")


def _locked(handle: IO[bytes]) -> bool:
    """Whether this process now holds the lock on ``handle`` (taken if free)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass
class Story:
    """A running `clew serve`, its clock, and the webhook receiver of destination ``HOOK``."""

    serve: ServeProcess
    clock: ScaledClock
    hook: Receiver
    token: str

    def at(self, offset_ms: int = 0) -> str:
        """The clock's time now, plus ``offset_ms``, as an event timestamp."""
        now = self.clock.now_ms()
        lead = now + offset_ms - time.time_ns() // 1_000_000
        assert lead < MAX_LEAD_MS, "the story outran its clock: the collector would restamp"
        return format_time(to_datetime(now + offset_ms))

    def send(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            event.setdefault("messageId", str(uuid.uuid4()))
        r = httpx.post(
            self.serve.url + "/v1/batch", json={"batch": events}, auth=(WRITE_KEY, ""), timeout=10
        )
        assert r.status_code == 200, r.text

    def deliveries(self) -> list[dict[str, Any]]:
        """The records the receiver accepted, in order, each batch once (repeats of a
        delivery id dropped, as the docs ask); every batch must carry a valid signature."""
        seen: set[str] = set()
        items: list[dict[str, Any]] = []
        for request in self.hook.accepted():
            assert _verified(request.body, request.headers["x-clew-signature"]), request.headers
            if request.delivery not in seen:
                seen.add(request.delivery)
                items += request.batch
        return items

    def delivered(self, kind: str) -> set[str]:
        return {i["user_id"] for i in self.deliveries() if i["kind"] == kind}

    def audiences(self, user: str) -> list[str]:
        r = httpx.get(
            f"{self.serve.url}/v1/profiles/user_id:{user}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        audiences: list[str] = r.json()["audiences"]
        return audiences

    def records(self, topic: str) -> list[bytes]:
        """Every record on ``topic``, read with the log API."""
        log = open_log(Settings(data_dir=self.serve.data_dir))
        try:
            return [
                rec.value for p in log.end_offsets(topic) for rec in log.read(topic, p, 0, 100_000)
            ]
        finally:
            log.close()

    def changes(self) -> list[AudienceChange]:
        """Every audience change record on the ``changes`` topic."""
        return [c for value in self.records(CHANGES_TOPIC) if (c := decode(value)) is not None]

    def settled(self) -> bool:
        """The profiles and destinations stages have caught up with the log, and the
        destination's outbox is empty."""
        text = httpx.get(self.serve.url + "/metrics", timeout=5).text
        lags = re.findall(
            r'^clew_consumer_lag\{group="(?:profiles|destinations)",.*\} (\d+)$', text, re.M
        )
        waiting = f'clew_destination_outbox{{destination="{HOOK}"}} 0'
        return bool(lags) and all(n == "0" for n in lags) and waiting in text


def _ready(data_dir: Path, url: str, token: str) -> bool:
    """The destinations stage has picked the destination up, and the audience's backfill is
    done (so the definition is live)."""
    outbox = Outbox(outbox_path(data_dir))
    try:
        if HOOK not in outbox.known():
            return False
    finally:
        outbox.close()
    r = httpx.get(
        url + "/v1/admin/audiences", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return r.status_code == 200 and all(d["backfilled_at"] for d in r.json()["definitions"])


@contextmanager
def story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speed: float) -> Iterator[Story]:
    """`clew serve` with its clock at ``speed``, the cart_abandoner example pushed, and a
    webhook destination for its entries and exits; ready to take events."""
    settings = Settings(data_dir=tmp_path / "data")
    catalog = Catalog.open(settings)
    try:
        catalog.create_source("shop", WRITE_KEY)
        token = catalog.create_token("support", ["profiles", "admin"])
    finally:
        catalog.close()
    DefinitionRepository(settings.data_dir).push(load_file(DEFINITIONS))
    hook = Receiver().start()
    config = {
        "name": HOOK,
        "url": hook.url,
        "secret": SECRET,
        "events": [],
        "changes": [ENTERED, EXITED],
        "audiences": [CART],
        "max_batch_wait_ms": 100,
    }
    DestinationDirectory(destinations_dir(settings.data_dir)).save(
        parse_destination(config, "story")
    )
    monkeypatch.setenv("CLEW_CLOCK__SPEED", str(speed))
    # Anchored now, before any worker: every process of serve continues this clock.
    clock = ScaledClock.anchored(speed, settings.data_dir / "clock.json")
    serve = ServeProcess(settings.data_dir, free_port())
    try:
        serve.start()
        wait_for(lambda: _ready(settings.data_dir, serve.url, token), timeout_s=40)
        yield Story(serve, clock, hook, token)
    finally:
        serve.stop()
        hook.stop()


def _browse_and_add(user: str, s: Story) -> list[dict[str, Any]]:
    """A visit that ends with a product in the cart, the add stamped now (clock time)."""
    sku = f"sku-{user}"
    return [
        {"type": "page", "name": "Catalog", "userId": user, "timestamp": s.at(-6 * MINUTE_MS)},
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": user,
            "properties": {"product_id": sku},
            "timestamp": s.at(-4 * MINUTE_MS),
        },
        {
            "type": "track",
            "event": "Product Added",
            "userId": user,
            "properties": {"product_id": sku, "price": 25},
            "timestamp": s.at(),
        },
    ]


def _order(user: str, timestamp: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "properties": {"order_id": f"o-{user}", "revenue": 25},
        "timestamp": timestamp,
    }


def test_abandoned_carts_enter_after_the_hour_and_leave_on_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = [f"quick-{i}" for i in range(4)]  # order ten minutes after adding
    gone = [f"gone-{i}" for i in range(4)]  # never order
    late = [f"late-{i}" for i in range(4)]  # order once they are abandoners
    # An hour passes in 2 s.
    with story(tmp_path, monkeypatch, speed=1800) as s:
        batch: list[dict[str, Any]] = []
        for user in quick:
            batch += [*_browse_and_add(user, s), _order(user, s.at(10 * MINUTE_MS))]
        for user in gone + late:
            batch += _browse_and_add(user, s)
        s.send(batch)

        # Nothing more is sent until they are in: the hour passing moves them.
        wait_for(lambda: s.delivered(ENTERED) >= {*gone, *late}, timeout_s=30)
        s.send([_order(user, s.at()) for user in late])
        wait_for(lambda: s.delivered(EXITED) >= set(late), timeout_s=30)
        wait_for(s.settled, timeout_s=30)

        per_user: dict[str, list[str]] = defaultdict(list)
        for item in s.deliveries():
            assert item["audience"] == CART, item
            per_user[item["user_id"]].append(item["kind"])
        assert dict(per_user) == {
            **{user: [ENTERED] for user in gone},
            **{user: [ENTERED, EXITED] for user in late},
        }
        for user in gone:
            assert s.audiences(user) == [CART], user
        for user in quick + late:
            assert CART not in s.audiences(user), user


def test_a_cart_timer_outlives_a_sigkilled_profiles_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = "crash-shopper"
    # An hour passes in 10 s: time to kill the worker before it is up.
    with story(tmp_path, monkeypatch, speed=360) as s:
        assert s.serve.proc is not None
        serve_pid = s.serve.proc.pid
        s.send(_browse_and_add(user, s))

        store = SQLiteProfileStore(Settings(data_dir=s.serve.data_dir).profiles_path)
        try:
            wait_for(lambda: store.next_timer() is not None, timeout_s=20)
            due = store.next_timer()
        finally:
            store.close()
        assert due is not None
        worker = _profiles_worker(serve_pid)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        killed_at = s.clock.now_ms()
        assert killed_at < due, "the worker was killed after the hour was up"

        wait_for(lambda: _profiles_worker(serve_pid) not in (None, worker), timeout_s=30)
        wait_for(lambda: user in s.delivered(ENTERED), timeout_s=40)
        wait_for(s.settled, timeout_s=30)

        entries = [c for c in s.changes() if c.kind == ENTERED and c.user_id == user]
        assert [(c.audience, c.cause) for c in entries] == [(CART, "timer")]
        assert [(i["kind"], i["user_id"]) for i in s.deliveries()] == [(ENTERED, user)]
        assert s.audiences(user) == [CART]


def test_a_cart_added_while_the_profiles_worker_is_down_still_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = "offline-shopper"
    # An hour passes in 5 s; the add counts whether it is handled before or after its hour.
    with story(tmp_path, monkeypatch, speed=720) as s:
        assert s.serve.proc is not None
        serve_pid = s.serve.proc.pid
        worker = _profiles_worker(serve_pid)
        assert worker is not None
        lock = s.serve.data_dir / "locks" / "stage-profiles.lock"
        with lock.open("ab") as held:
            os.kill(worker, signal.SIGKILL)
            # Taken before serve restarts the worker, and held until the add waits in the log,
            # so the add is in the restarted worker's first batch.
            wait_for(lambda: _locked(held), timeout_s=10, interval_s=0.01)
            events = _browse_and_add(user, s)
            s.send(events)
            added = events[-1]["messageId"].encode()
            wait_for(lambda: any(added in v for v in s.records(EVENTS_TOPIC)), timeout_s=20)
        wait_for(lambda: _profiles_worker(serve_pid) not in (None, worker), timeout_s=30)
        wait_for(lambda: user in s.delivered(ENTERED), timeout_s=20)
        wait_for(s.settled, timeout_s=30)

        entries = [c for c in s.changes() if c.kind == ENTERED and c.user_id == user]
        assert [c.audience for c in entries] == [CART]
        assert [(i["kind"], i["user_id"]) for i in s.deliveries()] == [(ENTERED, user)]
