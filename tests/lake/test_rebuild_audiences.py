"""`clew rebuild` with audience definitions: computed traits and memberships re-derived from the
lake's events agree with what a real profiles stage computed live, and a wrong one in the
serving store is reported, naming the trait or audience."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from clew.audiences.definitions import parse_document
from clew.audiences.live import LiveAudiences
from clew.audiences.repository import DefinitionRepository, load_file
from clew.backends import open_log
from clew.batch.rebuild import RebuildReport, rebuild
from clew.cli import app
from clew.clock import ManualClock
from clew.config import Settings
from clew.events import Event, format_time
from clew.lake.tables import EVENTS, to_arrow
from clew.log.base import Message
from clew.stages.profiles import ProfilesStage
from clew.store import SQLiteProfileStore
from clew.topics import EVENTS_TOPIC

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EXAMPLES = Path(__file__).parents[2] / "examples" / "audiences"
# A count-style condition on a purchase total the speed layer keeps (not a defined trait).
REPEAT_BUYER = {"audiences": [{"name": "repeat_buyer", "condition": {
    "computed": "orders_count", "op": "gte", "value": 2}}]}  # fmt: skip
_ids = itertools.count()


def event(type_: str, ms: int, **fields: Any) -> Event:
    return Event(
        type=type_,
        message_id=f"m{next(_ids):06d}",
        timestamp=format_time(datetime.fromtimestamp(ms / 1000, tz=UTC)),
        received_at=format_time(datetime.fromtimestamp(ms / 1000, tz=UTC)),
        source_id="web",
        **fields,
    )


def order(ms: int, revenue: Any, **ids: str) -> Event:
    return event("track", ms, event="Order Completed", properties={"revenue": revenue}, **ids)


class Deployment:
    """A profiles stage (embedded log, SQLite store, manual clock) whose events also land in
    the lake, as the lake stage would write them."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir)
        self.clock = ManualClock(START)
        self.repo = DefinitionRepository(data_dir)
        self.log = open_log(self.settings)
        self.store = SQLiteProfileStore(self.settings.profiles_path)
        live = LiveAudiences(self.repo, self.clock)
        self.stage = ProfilesStage(self.store, clock=self.clock, audiences=live)
        self.consumer = self.log.consumer(self.stage.group, self.stage.topics)
        self.stage.on_assign(self.consumer, self.consumer.assignment())

    def push_examples(self, *extra: dict[str, Any]) -> None:
        definitions = [d for path in sorted(EXAMPLES.glob("*.yaml")) for d in load_file(path)]
        for doc in extra:
            definitions += parse_document(doc)
        self.repo.push(definitions)
        self.tick()

    def send(self, *events: Event) -> None:
        encoded = [msgspec.json.encode(e) for e in events]
        self.log.append_sync(
            EVENTS_TOPIC,
            [Message(value=b, key=e.identity_key) for e, b in zip(events, encoded, strict=True)],
        )
        while records := self.consumer.poll(500, timeout_s=0.01):
            self.stage.handle(records, self.consumer)
        write_deltalake(
            str(self.settings.lake_path / EVENTS.name),
            to_arrow(EVENTS, encoded),
            mode="append",
            partition_by=[EVENTS.partition_by],
        )

    def tick(self) -> None:
        """What the runner does between polls (throttles reset, so that this call acts)."""
        live = self.stage.audiences
        live._last_reload = live._last_timers = 0.0
        self.stage.tick(self.consumer)

    def profile_id(self, user: str) -> str:
        pid = self.store.lookup("user_id", user)
        assert pid is not None
        return pid

    def computed(self, user: str) -> dict[str, Any]:
        profile = self.store.get(self.profile_id(user))
        assert profile is not None
        return profile.computed

    def rebuild(self) -> RebuildReport:
        return rebuild(self.settings, dry_run=True, clock=self.clock)

    def close(self) -> None:
        self.consumer.close()
        self.store.close()
        self.log.close()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "data")
    yield deployment
    deployment.close()


def traffic(shop: Deployment) -> None:
    """Four shoppers over two days; the clock then stands two days after the start.

    ada: an abandoned cart, then 550 in orders (high value, repeat buyer); bo: a cart
    abandoned for good; cy: orders 600 anonymously, then identifies (the anonymous profile,
    its orders and engine state merge into the user's); dee: browsed ten days before."""
    shop.send(event("page", START - 10 * DAY, user_id="dee", name="Home"))
    shop.send(
        event("track", START, user_id="ada", event="Product Added", properties={"sku": "s1"}),
        event("page", START + MINUTE, anonymous_id="anon-cy", name="Shoes"),
        order(START + 2 * MINUTE, "600.00", anonymous_id="anon-cy"),
    )
    shop.clock.set(START + 2 * HOUR)
    shop.tick()
    shop.send(
        order(START + 2 * HOUR, 300, user_id="ada"),
        event("track", START + 3 * HOUR, user_id="bo", event="Product Added"),
        event("identify", START + 3 * HOUR, user_id="cy", anonymous_id="anon-cy"),
    )
    shop.clock.set(START + DAY)
    shop.send(order(START + DAY, 250, user_id="ada"))
    shop.clock.set(START + 2 * DAY)
    shop.tick()


def test_rebuilt_computed_traits_and_memberships_equal_the_live_ones(shop: Deployment) -> None:
    shop.push_examples(REPEAT_BUYER)
    traffic(shop)
    assert shop.computed("ada")["audiences"] == [
        "active_last_7_days",
        "high_value_customer",
        "repeat_buyer",
    ]
    assert shop.computed("bo")["audiences"] == ["active_last_7_days", "cart_abandoner"]
    assert shop.computed("cy")["audiences"] == ["active_last_7_days", "high_value_customer"]
    assert shop.computed("cy")["ltv_365d"] == 600.0
    assert shop.computed("dee")["audiences"] == []

    report = shop.rebuild()
    recon = report.reconciliation
    assert recon is not None and recon.computed
    assert recon.differences == []
    assert recon.identical == recon.batch_profiles == recon.speed_profiles == 4
    assert "audiences" in report.timings


def test_a_window_that_moved_before_the_stage_fired_its_timer_is_no_difference(
    shop: Deployment,
) -> None:
    shop.push_examples()
    traffic(shop)
    # A week later ada, bo and cy are no longer active, but no timer has fired yet: the
    # serving store still says they are.
    shop.clock.advance(7 * DAY)
    assert "active_last_7_days" in shop.computed("ada")["audiences"]
    recon = shop.rebuild().reconciliation
    assert recon is not None and recon.differences == []

    shop.tick()
    assert "active_last_7_days" not in shop.computed("ada")["audiences"]
    recon = shop.rebuild().reconciliation
    assert recon is not None and recon.differences == []


def test_a_wrong_membership_or_computed_trait_in_the_serving_store_is_reported(
    shop: Deployment,
) -> None:
    shop.push_examples()
    traffic(shop)
    bo, cy = shop.profile_id("bo"), shop.profile_id("cy")
    with shop.store.transaction():
        shop.store.update_computed(
            bo, lambda c: {**c, "audiences": [*c["audiences"], "high_value_customer"]}
        )
        shop.store.update_computed(cy, lambda c: {**c, "ltv_365d": 60.0})

    recon = shop.rebuild().reconciliation
    assert recon is not None and not recon.agree
    assert recon.difference_count == 2
    assert any(
        d.startswith(f"profile {bo} ")
        and d.endswith("audience high_value_customer: member in the speed layer only")
        for d in recon.differences
    ), recon.differences
    assert any(
        d.startswith(f"profile {cy} ")
        and d.endswith("computed trait ltv_365d 600.0 (batch) vs 60.0 (speed)")
        for d in recon.differences
    ), recon.differences


def test_without_definitions_nothing_is_derived_or_compared(shop: Deployment) -> None:
    traffic(shop)
    assert "audiences" not in shop.computed("ada")
    report = shop.rebuild()
    assert report.reconciliation is not None and report.reconciliation.agree
    assert not report.reconciliation.computed
    assert "audiences" not in report.timings


def test_check_compares_them_at_the_stages_clock(shop: Deployment) -> None:
    shop.push_examples()
    traffic(shop)
    result = CliRunner().invoke(
        app, ["rebuild", "--check", "--dry-run", "--data-dir", str(shop.settings.data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "4 of them identical (id, seen times, purchases, traits, consent, " in result.output
    assert "computed traits, audiences)" in result.output
    assert "the batch and speed layers agree" in result.output
