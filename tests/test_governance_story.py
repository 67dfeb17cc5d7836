"""Issue 3's failure story, end to end on one running Clew: a new app release drops a required
property from `Order Completed`; its orders are dead-lettered with the exact reason; the
volume monitor flags the drop and names that app version; a schema fix is pushed; `clew dlq
replay` lands the orders; SQL shows each exactly once."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from typer.testing import CliRunner

from _support import lake_count, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.events import format_time
from clew.lake.query import Lake
from clew.monitor import ALERT_KIND, decode_alert

PLAN = Path(__file__).parents[1] / "examples" / "tracking-plan"
runner = CliRunner()


def _order(ts: datetime, app_version: str, *, revenue: bool = True) -> dict[str, object]:
    props: dict[str, object] = {
        "order_id": uuid.uuid4().hex,
        "currency": "EUR",
        "products": [
            {"product_id": "p1", "sku": "SKU-1", "price": 30.0, "quantity": 1, "category": "tents"}
        ],
    }
    if revenue:
        props["revenue"] = 30.0
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"u-{uuid.uuid4().hex[:8]}",
        "messageId": uuid.uuid4().hex,
        "timestamp": format_time(ts),
        "properties": props,
        "context": {"app": {"name": "shop", "version": app_version}},
    }


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_release_that_drops_a_required_property_is_caught_fixed_and_replayed(
    server: BackgroundServer, tmp_path: Path
) -> None:
    data = str(server.settings.data_dir)
    plan = tmp_path / "plan"
    shutil.copytree(PLAN, plan)
    assert runner.invoke(app, ["plan", "push", str(plan), "--data-dir", data]).exit_code == 0

    clock = _Clock()
    monitor = next(r.stage for r in server.clew.runners if r.stage.group == "monitor")
    monitor._clock = clock  # type: ignore[attr-defined]

    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    history = [
        _order(hour - timedelta(hours=h) + timedelta(minutes=m), "1.0")
        for h in range(1, 31)
        for m in range(0, 60, 2)
    ]
    # This hour: most customers are on the new release, which sends no revenue.
    released = [_order(now, "2.0", revenue=False) for _ in range(24)]
    still_old = [_order(now, "1.0") for _ in range(6)]
    key = server.clew.default_source.write_key
    with httpx.Client(base_url=server.url, auth=(key, "")) as http:
        batch = history + still_old + released
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            r = http.post("/v1/batch", json={"batch": chunk, "sentAt": format_time(now)})
            assert r.status_code == 200

    bad_ids = {e["messageId"] for e in released}
    wait_for(lambda: lake_count(server.settings.data_dir, "dlq") == len(released))
    wait_for(lambda: lake_count(server.settings.data_dir) == len(history) + len(still_old))
    lake = Lake(server.settings.lake_path)
    reasons = lake.sql("SELECT DISTINCT reason, violations FROM dlq").rows
    assert len(reasons) == 1 and reasons[0][0] == "schema_violation"
    (violation,) = json.loads(reasons[0][1])
    assert violation["keyword"] == "required" and "revenue" in violation["message"]
    assert violation["subject"] == "track:Order Completed"

    # The hour closes (accelerated clock): the monitor judges it.
    clock.now = hour + timedelta(hours=1, minutes=6)

    def alerts() -> list[object]:
        found = []
        for p in range(server.settings.log.partitions):
            records = server.clew.log.read("changes", p, 0, 1000)
            # The topic also carries profile changes.
            found += [
                decode_alert(r.value) for r in records if json.loads(r.value)["kind"] == ALERT_KIND
            ]
        return found

    wait_for(lambda: any(a.event_name == "Order Completed" for a in alerts()), timeout_s=20)
    order_alerts = [a for a in alerts() if a.event_name == "Order Completed"]
    assert all(a.direction == "drop" for a in order_alerts)
    named = {a.app_version for a in order_alerts} | {a.top_dlq_app_version for a in order_alerts}
    assert "2.0" in named
    assert any(a.top_dlq_reason == "schema_violation" for a in order_alerts)

    # The fix: revenue becomes optional (backward compatible), then replay.
    order = plan / "events" / "order_completed.yaml"
    order.write_text(
        order.read_text().replace("required: [order_id, revenue,", "required: [order_id,")
    )
    pushed = runner.invoke(app, ["plan", "push", str(plan), "--data-dir", data])
    assert pushed.exit_code == 0, pushed.output
    replay = runner.invoke(app, ["dlq", "replay", "--data-dir", data])
    assert replay.exit_code == 0, replay.output
    again = runner.invoke(app, ["dlq", "replay", "--data-dir", data])
    assert again.exit_code == 0, again.output

    total = len(history) + len(still_old) + len(released)
    wait_for(lambda: lake_count(server.settings.data_dir) == total)
    ids = [r[0] for r in lake.sql("SELECT message_id FROM events").rows]
    assert len(ids) == len(set(ids)) == total
    assert bad_ids <= set(ids)
    pending = runner.invoke(app, ["dlq", "list", "--format", "json", "--data-dir", data])
    assert json.loads(pending.stdout) == []
