"""The console's audiences, data quality, destinations and privacy sections in a real Chromium,
against an in-process Clew with data in it: each page renders what the stores hold, and its
forms (DLQ and delivery replays, a privacy request) take effect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _browser import screenshot
from _support import WRITE_KEY, drained, lake_count, wait_for
from browser._console import sign_in
from clew.audiences.repository import DefinitionRepository, load_file
from clew.background import BackgroundServer
from clew.cli import app
from clew.console import audiences
from clew.destinations import DestinationDirectory, parse_destination
from destinations._receiver import Receiver

EXAMPLES = Path(__file__).parents[2] / "examples"
SIGNED_UP = """event: Signed Up
schema:
  type: object
  properties:
    method: {type: string, enum: [email, google]}
  required: [%s]
"""


def _push_plan(server: BackgroundServer, directory: Path, required: str) -> None:
    """Publish a plan for the source "tests" whose Signed Up requires ``required``."""
    (directory / "events").mkdir(parents=True, exist_ok=True)
    (directory / "plan.yaml").write_text("source: tests\nmode: block_violations\n")
    (directory / "events" / "signed_up.yaml").write_text(SIGNED_UP % required)
    data_dir = str(server.settings.data_dir)
    out = CliRunner().invoke(app, ["plan", "push", str(directory), "--data-dir", data_dir])
    assert out.exit_code == 0, out.output


def _send(server: BackgroundServer, batch: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{server.url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    r.raise_for_status()


def _until_shown(page: Any, selector: str, text: str, timeout_s: float = 20.0) -> None:
    """Reload ``page`` until ``selector`` shows ``text`` (the stages work in the background)."""

    def shown() -> bool:
        page.reload()
        found = page.locator(selector)
        return found.count() > 0 and text in found.first.inner_text()

    wait_for(shown, timeout_s=timeout_s, interval_s=0.3)


def test_audiences_show_definitions_sizes_history_and_members(
    browser: Any, server: BackgroundServer
) -> None:
    repository = DefinitionRepository(server.settings.data_dir)
    repository.push(load_file(EXAMPLES / "audiences" / "high_value_customer.yaml"))
    orders = [
        {
            "type": "track",
            "event": "Order Completed",
            "userId": user,
            "messageId": f"o-{user}-{i}",
            "properties": {"revenue": revenue},
        }
        for user, revenue in (("ada", 300.0), ("bob", 120.0))
        for i in range(2)
    ]
    _send(server, orders)
    wait_for(lambda: drained(server.url))
    page, log = sign_in(browser, server, ("profiles",))

    page.goto(f"{server.url}/console/audiences")
    assert page.inner_text("h1") == "Audiences and traits"
    _until_shown(page, "#definitions", "high_value_customer")
    rows = page.inner_text("#definitions")
    assert "ltv_365d" in rows and "sum(revenue) of Order Completed over 365d" in rows
    _until_shown(page, "#definitions tbody tr:has-text('high_value_customer') td.num", "1")
    screenshot(page, "console-audiences")

    page.click("text=high_value_customer")
    assert page.inner_text("h1") == "high_value_customer"
    assert "1 profile in the audience now" in page.inner_text("#size")
    member = page.inner_text("#members li")
    assert page.get_attribute("#members a", "href") == f"/console/people/{member}"
    assert "svg" in page.inner_html("main section")
    assert "computed: ltv_365d" in page.inner_text("#definition")
    screenshot(page, "console-audience")
    page.click("#members a")
    assert member in page.inner_text("main")

    page.goto(f"{server.url}/console/audiences/ltv_365d")
    _until_shown(page, "#holders", "2 profiles")
    assert "600" in page.inner_text("#values")
    missing = page.goto(f"{server.url}/console/audiences/nothing_here")
    assert missing is not None and missing.status == 404
    assert [e for e in log.errors if "status of 404" not in e] == []


def test_privacy_files_a_request_from_the_form_and_shows_its_audit(
    browser: Any, server: BackgroundServer
) -> None:
    _send(
        server,
        [{"type": "identify", "userId": "gone", "traits": {"email": "gone@shop.test"}}],
    )
    wait_for(lambda: drained(server.url))
    page, log = sign_in(browser, server, ("privacy",))
    page.goto(f"{server.url}/console/privacy")
    assert page.inner_text("h1") == "Privacy"
    assert "No requests" in page.inner_text("main")

    # A bad identifier is refused with the reason, nothing filed.
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("input[name=identifier]", "no-type-here")
    page.click("#new-request button")
    assert "id_type:value" in page.inner_text("[role=alert]")
    assert "No requests" in page.inner_text("main")

    page.select_option("select[name=type]", "delete")
    page.fill("input[name=identifier]", "user_id:gone")
    page.click("#new-request button")
    page.wait_for_url("**/console/privacy/pr_*")
    _until_shown(page, "#status", "finished", timeout_s=30)
    assert "zero traces" in page.inner_text("#verify")
    assert "serving store" in page.inner_text("#stores")
    screenshot(page, "console-privacy-request")

    page.goto(f"{server.url}/console/privacy")
    row = page.inner_text("#requests tbody tr")
    assert "delete" in row and "finished" in row and "console:console-privacy" in row
    assert "gone" not in row.replace("console:", "")
    screenshot(page, "console-privacy")
    assert [e for e in log.errors if "status of 400" not in e] == []


def test_destinations_show_settings_deliveries_and_replay_dead_letters(
    browser: Any, server: BackgroundServer
) -> None:
    # The receiver refuses the first batch (a 400 dead-letters it at once), then accepts.
    hook = Receiver(script=[(400, {})]).start()
    try:
        config = {
            "name": "crm",
            "url": hook.url + "?token=hunter2&team=7",
            "secret": "signing-key-xyz",
            "max_batch_wait_ms": 0,
        }
        directory = DestinationDirectory(server.settings.destinations_path)
        directory.save(parse_destination(config, "test"))
        page, log = sign_in(browser, server, ("admin",))
        page.goto(f"{server.url}/console/destinations")
        assert page.inner_text("h1") == "Destinations"
        _until_shown(page, "#destinations", "active")
        row = page.inner_text("#destinations")
        assert "token=**********&team=7" in row
        assert "hunter2" not in page.content() and "signing-key-xyz" not in page.content()

        _send(server, [{"type": "track", "event": "Signed Up", "userId": "u1"}])
        _until_shown(page, "#destinations tbody td:nth-child(10)", "1")
        screenshot(page, "console-destinations")

        page.click("text=crm")
        assert page.inner_text("h1") == "crm"
        assert "set" in page.inner_text("#settings")
        letters = page.inner_text("#dead-letters")
        assert "400" in letters
        page.click("#dead-letters a")
        assert '"Signed Up"' in page.inner_text("#records")
        screenshot(page, "console-destination")

        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#replay-all button")
        assert "1 dead letter (1 records) back in the outbox" in page.inner_text("#replayed")
        wait_for(lambda: len(hook.events()) == 1 and hook.requests[-1].status == 200)
        _until_shown(page, "#deliveries", "delivered")
        assert "No dead letters" in page.inner_text("main")
        missing = page.goto(f"{server.url}/console/destinations/nope")
        assert missing is not None and missing.status == 404
        assert [e for e in log.errors if "status of 404" not in e] == []
    finally:
        hook.stop()


def test_quality_shows_plans_dead_letters_and_monitors_and_replays_after_a_fix(
    browser: Any, server: BackgroundServer, tmp_path: Path
) -> None:
    _push_plan(server, tmp_path / "plan", "method")
    _send(
        server,
        [
            {"type": "track", "event": "Signed Up", "userId": f"u{i}", "messageId": f"s{i}"}
            for i in range(2)
        ]
        + [
            {
                "type": "track",
                "event": "Signed Up",
                "userId": "u9",
                "properties": {"method": "email"},
            }
        ],
    )
    wait_for(lambda: drained(server.url))
    page, log = sign_in(browser, server, ("admin",))

    page.goto(f"{server.url}/console/quality")
    assert page.inner_text("h1") == "Data quality"
    assert "track:Signed Up" in page.inner_text("#plan-tests")
    _until_shown(page, "#dlq-reasons", "schema_violation")
    assert "2" in page.inner_text("#dlq-reasons")
    _until_shown(page, "#monitors", "Signed Up")
    assert "learning" in page.inner_text("#monitors")
    page.click("#monitors a >> nth=0")
    assert "Signed Up from tests" in page.inner_text("#series-chart")
    assert "svg" in page.inner_html("main")
    screenshot(page, "console-quality")

    page.goto(f"{server.url}/console/quality/dlq?reason=schema_violation")
    assert "2 dead letters not yet replayed" in page.inner_text("#dlq-count")
    row = page.locator("details.dlq-row").first
    row.locator("summary").click()
    assert "required property 'method' is missing" in row.inner_text()
    assert '"Signed Up"' in row.inner_text()
    screenshot(page, "console-quality-dlq")

    # The plan is fixed (method becomes optional): version 2, and the diff says so.
    _push_plan(server, tmp_path / "plan", "")
    page.goto(f"{server.url}/console/quality")
    page.click("text=track:Signed Up")
    assert page.inner_text("h1") == "track:Signed Up"
    assert "1-0-1" in page.inner_text("#versions")
    assert '-    "method"' in page.inner_text("#diff")
    screenshot(page, "console-quality-schema")

    # Replays from the page land the events: one at most, then the rest.
    page.goto(f"{server.url}/console/quality/dlq?reason=schema_violation")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#replay input[name=limit]", "1")
    page.click("#replay button")
    assert page.inner_text("#landed") == "1"
    assert "1 dead letter not yet replayed" in page.inner_text("#dlq-count")
    page.click("#replay button")
    assert page.inner_text("#landed") == "1"
    assert "0 dead letters not yet replayed" in page.inner_text("#dlq-count")
    data_dir = server.settings.data_dir
    wait_for(lambda: lake_count(data_dir, "events", "event = 'Signed Up'") == 3)
    page.goto(f"{server.url}/console/quality/dlq?replayed=1")
    assert "replayed: landed" in page.inner_text("#dlq-rows")
    page.goto(f"{server.url}/console/quality")
    assert "No dead letters waiting" in page.inner_text("main")
    # Odd addresses answer plainly: an unknown subject is a 404, a bad page number the first.
    for path, status in (
        ("/console/quality/schema?source=tests&subject=track:Nothing", 404),
        ("/console/quality/schema", 404),
        ("/console/quality/dlq?offset=abc&source=nope", 200),
        ("/console/quality?series=999", 200),
    ):
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == status, path
    assert [e for e in log.errors if "status of 404" not in e] == []

    # A token without the admin scope may see neither page.
    other, _ = sign_in(browser, server, ("profiles",))
    for section in ("quality", "destinations"):
        refused = other.goto(f"{server.url}/console/{section}")
        assert refused is not None and refused.status == 403
        assert "lacks the" in other.inner_text("[role=alert]")


def test_pages_stay_fast_and_paged_with_many_rows(
    browser: Any, server: BackgroundServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = 2000
    # Past this many profiles an audience's page counts in the lake, not the serving store.
    monkeypatch.setattr(audiences, "SCAN_LIMIT", 1000)
    _push_plan(server, tmp_path / "plan", "method")
    DefinitionRepository(server.settings.data_dir).push(
        load_file(EXAMPLES / "audiences" / "active_last_7_days.yaml")
    )
    for start in range(0, people, 500):
        batch = [
            {"type": "track", "event": "Signed Up", "userId": f"p{i}", "properties": props}
            for i in range(start, start + 500)
            for props in ({"method": "email"}, {})
        ]
        _send(server, batch)
    wait_for(lambda: drained(server.url), timeout_s=60)
    page, log = sign_in(browser, server, ("all",))

    def timed(path: str) -> float:
        started = time.monotonic()
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 200, path
        return time.monotonic() - started

    _until_shown(page, "#dlq-reasons", str(people))
    page.goto(f"{server.url}/console/audiences/active_last_7_days")
    _until_shown(page, "#size", f"{people} profiles")
    assert "counted in the lake" in page.inner_text("#size")
    assert page.locator("#members li").count() == audiences.SAMPLE

    took = {
        path: timed(path)
        for path in (
            "/console/audiences",
            "/console/audiences/active_last_7_days",
            "/console/quality",
            "/console/quality/dlq",
            "/console/quality/dlq?offset=1950",
            "/console/destinations",
            "/console/privacy",
        )
    }
    assert max(took.values()) < 3.0, took
    page.goto(f"{server.url}/console/quality/dlq?offset=50")
    assert page.locator("details.dlq-row").count() == 50
    assert "51 to 100 shown" in page.inner_text("#dlq-count")
    page.click("text=Older")
    assert "101 to 150 shown" in page.inner_text("#dlq-count")
    assert log.errors == []
