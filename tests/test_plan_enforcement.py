"""A pushed tracking plan is enforced by the running validate stage, and `clew plan push` /
`clew schema check` behave as a CI gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, lake_count, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.lake.query import Lake

PLAN = Path(__file__).parents[1] / "examples" / "tracking-plan"
runner = CliRunner()


def _order(mid: str, **props: object) -> dict[str, object]:
    base: dict[str, object] = {
        "order_id": f"o-{mid}",
        "revenue": 42.0,
        "currency": "EUR",
        "products": [
            {"product_id": "p1", "sku": "SKU-1", "price": 42.0, "quantity": 1, "category": "tents"}
        ],
    }
    base.update(props)
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": mid,
        "properties": {k: v for k, v in base.items() if v is not None},
        "context": {"app": {"version": "2.0.0"}},
    }


@pytest.fixture
def planned_server(server: BackgroundServer, tmp_path: Path) -> BackgroundServer:
    plan = tmp_path / "plan"
    shutil.copytree(PLAN, plan)
    (plan / "plan.yaml").write_text(
        (plan / "plan.yaml").read_text().replace("source: default", "source: tests")
    )
    out = runner.invoke(
        app, ["plan", "push", str(plan), "--data-dir", str(server.settings.data_dir)]
    )
    assert out.exit_code == 0, out.output
    return server


def test_violations_are_dead_lettered_with_the_exact_reason(
    planned_server: BackgroundServer,
) -> None:
    srv = planned_server
    good, missing, unplanned = "ok-1", "bad-1", "unplanned-1"
    batch = [
        _order(good),
        _order(missing, revenue=None),
        {"type": "track", "event": "Wishlist Shared", "userId": "u1", "messageId": unplanned},
    ]
    wait_for(lambda: srv.clew.log is not None)
    r = httpx.post(srv.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200
    wait_for(lambda: lake_count(srv.settings.data_dir, "dlq") == 2)
    wait_for(lambda: lake_count(srv.settings.data_dir) == 1)
    lake = Lake(srv.settings.lake_path)
    assert lake.sql("SELECT message_id FROM events").rows == [(good,)]
    rows = dict(lake.sql("SELECT message_id, reason FROM dlq ORDER BY message_id").rows)
    assert rows == {missing: "schema_violation", unplanned: "unplanned_event"}
    (violations, versions, normalized) = lake.sql(
        f"SELECT violations, schema_versions, normalized FROM dlq WHERE message_id = '{missing}'"
    ).rows[0]
    found = json.loads(violations)
    assert any(v["keyword"] == "required" and "revenue" in v["message"] for v in found)
    assert json.loads(versions)["track:Order Completed"] == "1-0-0"
    assert json.loads(normalized)["messageId"] == missing
    metrics = httpx.get(srv.url + "/metrics").text
    assert "clew_collector_events_total 3" in metrics


def test_schema_check_is_a_ci_gate(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    plan = tmp_path / "plan"
    shutil.copytree(PLAN, plan)
    assert runner.invoke(app, ["plan", "push", str(plan), "--data-dir", data]).exit_code == 0
    ok = runner.invoke(app, ["schema", "check", str(plan), "--data-dir", data])
    assert ok.exit_code == 0
    order = plan / "events" / "order_completed.yaml"
    # Making an optional property required breaks old data: not backward compatible.
    order.write_text(
        order.read_text().replace("required: [order_id,", "required: [coupon, order_id,")
    )
    bad = runner.invoke(app, ["schema", "check", str(plan), "--data-dir", data])
    assert bad.exit_code == 1
    assert "coupon" in bad.output and "Order Completed" in bad.output
    refused = runner.invoke(app, ["plan", "push", str(plan), "--data-dir", data])
    assert refused.exit_code == 1
    listing = runner.invoke(app, ["schema", "list", "--data-dir", data]).output
    assert "track:Order Completed" in listing and "1-0-0" in listing
