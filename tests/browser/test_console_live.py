"""The console's live debugger in a real Chromium: events sent after the page opened appear
within a second, dead letters with their reason, and the filter hides what it does not
match."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from _browser import screenshot
from _support import WRITE_KEY, drained, wait_for
from browser._console import sign_in
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.console.live import MAX_STREAMS


def _track(server: BackgroundServer, message_id: str, event: str, user_id: str = "u-1") -> None:
    httpx.post(
        f"{server.url}/v1/track",
        json={"writeKey": WRITE_KEY, "userId": user_id, "event": event, "messageId": message_id},
    ).raise_for_status()


def _row(message_id: str) -> str:
    return f'li.live-row[data-message-id="{message_id}"]'


def _open_live(browser: Any, server: BackgroundServer, query: str = "") -> tuple[Any, Any]:
    page, log = sign_in(browser, server, ("admin",))
    if query:
        page.goto(f"{server.url}/console/live?{query}")
    assert page.url.startswith(f"{server.url}/console/live")
    page.wait_for_selector('#live[data-state="open"]')
    return page, log


def test_events_and_dead_letters_appear_as_they_happen(
    browser: Any, server: BackgroundServer
) -> None:
    page, log = _open_live(browser, server)
    sent = time.monotonic()
    _track(server, "live-1", "Checkout Started")
    page.wait_for_selector(_row("live-1"), timeout=5_000)
    took = time.monotonic() - sent
    assert took < 1.0, f"the event took {took:.2f}s to appear"
    row = page.locator(_row("live-1"))
    assert "Checkout Started" in row.inner_text() and "user_id:u-1" in row.inner_text()
    # A track without an event name is dead-lettered by validation, with its reason.
    httpx.post(
        f"{server.url}/v1/track",
        json={"writeKey": WRITE_KEY, "userId": "u-2", "messageId": "live-bad"},
    ).raise_for_status()
    page.wait_for_selector(f"{_row('live-bad')}.dead", timeout=5_000)
    dead = page.locator(_row("live-bad"))
    dead.locator("summary").click()
    result = dead.locator("pre.result").inner_text()
    assert '"reason"' in result and '"message"' in result
    assert "u-2" in dead.locator("pre.json").inner_text()
    assert WRITE_KEY not in dead.inner_text()  # the request's write key is masked
    # A body that is not JSON is refused at the door and dead-lettered too.
    refused = httpx.post(
        f"{server.url}/v1/track",
        content=b'{"userId": "u-3", "event": ',
        auth=(WRITE_KEY, ""),
        headers={"content-type": "application/json"},
    )
    assert refused.status_code == 400
    page.wait_for_selector("li.live-row.dead >> text=invalid_json", timeout=5_000)
    # The accepted event expands to its JSON and what validation said.
    row.locator("summary").click()
    assert "accepted" in row.locator("pre.result").inner_text()
    assert '"messageId": "live-1"' in row.locator("pre.json").inner_text()
    screenshot(page, "console-live")
    page.context.close()
    assert log.errors == []


def test_rows_say_what_the_tracking_plan_said(
    browser: Any, server: BackgroundServer, tmp_path: Path
) -> None:
    plan = tmp_path / "plan"
    shutil.copytree(Path(__file__).parents[2] / "examples" / "tracking-plan", plan)
    yaml = plan / "plan.yaml"
    yaml.write_text(yaml.read_text().replace("source: default", "source: tests"))
    data_dir = str(server.settings.data_dir)
    pushed = CliRunner().invoke(app, ["plan", "push", str(plan), "--data-dir", data_dir])
    assert pushed.exit_code == 0, pushed.output
    time.sleep(1.2)  # the validate stage picks a pushed plan up within a second
    page, log = _open_live(browser, server)
    order = {
        "order_id": "o-1",
        "revenue": 42.0,
        "currency": "EUR",
        "products": [{"product_id": "p1", "sku": "SKU-1", "price": 42.0, "quantity": 1}],
    }
    for message_id, properties in (
        ("plan-ok", order),
        ("plan-bad", {k: v for k, v in order.items() if k != "revenue"}),
    ):
        httpx.post(
            f"{server.url}/v1/track",
            json={
                "writeKey": WRITE_KEY,
                "userId": "u-1",
                "event": "Order Completed",
                "messageId": message_id,
                "properties": properties,
            },
        ).raise_for_status()
    page.wait_for_selector(f"{_row('plan-bad')}.dead", timeout=5_000)
    page.wait_for_selector(f"{_row('plan-ok')}.event", timeout=5_000)
    bad = page.locator(_row("plan-bad"))
    bad.locator("summary").click()
    verdict = bad.locator("pre.result").inner_text()
    assert "schema_violation" in verdict and "revenue" in verdict and "1-0-0" in verdict
    good = page.locator(_row("plan-ok"))
    good.locator("summary").click()
    assert '"track:Order Completed": "1-0-0"' in good.locator("pre.result").inner_text()
    screenshot(page, "console-live-plan")
    page.context.close()
    assert log.errors == []


def test_the_filter_hides_what_it_does_not_match(browser: Any, server: BackgroundServer) -> None:
    page, log = _open_live(browser, server)
    page.fill("input[name=name]", "Keep")
    page.click("#live-filter button[type=submit]")
    page.wait_for_selector('#live[data-state="open"]')
    assert "name=Keep" in page.url
    _track(server, "drop-1", "Drop Me")
    _track(server, "keep-1", "Keep Me")
    page.wait_for_selector(_row("keep-1"), timeout=5_000)
    wait_for(lambda: drained(server.url))
    time.sleep(0.5)  # two more polls of the stream
    assert page.locator(_row("drop-1")).count() == 0
    # By identifier: only u-9's events.
    page.fill("input[name=name]", "")
    page.fill("input[name=identifier]", "u-9")
    page.click("#live-filter button[type=submit]")
    page.wait_for_selector('#live[data-state="open"]')
    _track(server, "other-1", "Viewed", user_id="u-8")
    _track(server, "mine-1", "Viewed", user_id="u-9")
    page.wait_for_selector(_row("mine-1"), timeout=5_000)
    wait_for(lambda: drained(server.url))
    time.sleep(0.5)
    assert page.locator(_row("other-1")).count() == 0
    assert page.locator("li.live-row").count() == 1
    screenshot(page, "console-live-filtered")
    page.context.close()
    assert log.errors == []


def test_the_stream_needs_the_admin_scope(browser: Any, server: BackgroundServer) -> None:
    page, _ = sign_in(browser, server, ("profiles",))
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    with httpx.Client(base_url=server.url, cookies={"clew_console": cookie["value"]}) as client:
        assert client.get("/console/live/stream").status_code == 403
    assert httpx.get(f"{server.url}/console/live/stream").status_code == 303
    page.context.close()


def test_streams_are_capped_and_end_when_the_browser_goes(
    browser: Any, server: BackgroundServer
) -> None:
    page, _ = sign_in(browser, server, ("admin",))
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    page.context.close()
    jar = {"clew_console": cookie["value"]}
    with httpx.Client(base_url=server.url, cookies=jar, timeout=5) as client:
        streams = [client.stream("GET", "/console/live/stream") for _ in range(MAX_STREAMS)]
        # Each reader is kept: dropping one closes its response.
        readers = []
        for s in streams:
            answer = s.__enter__()
            assert answer.headers["content-type"].startswith("text/event-stream")
            readers.append(answer.iter_text())
            assert "event: ready" in next(readers[-1])
        # One too many is turned away, saying why.
        refused = client.get("/console/live/stream")
        assert refused.status_code == 503 and "too many live streams" in refused.text
        for s in streams:
            s.__exit__(None, None, None)

        # Closed streams end on the server and free their places.
        def accepted() -> bool:
            with client.stream("GET", "/console/live/stream") as again:
                return again.status_code == 200

        wait_for(accepted, timeout_s=5)


def test_a_stream_ends_when_the_server_stops(settings: Settings) -> None:
    server = BackgroundServer(settings).__enter__()
    token = server.clew.catalog.create_token("live", ("admin",))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/console/login", data={"token": token}).status_code == 303
        with client.stream("GET", "/console/live/stream") as answer:
            chunks = answer.iter_text()
            assert "event: ready" in next(chunks)
            started = time.monotonic()
            # uvicorn waits for open responses before it stops: the stream ends at once.
            server.__exit__(None, None, None)
            took = time.monotonic() - started
            rest = "".join(chunks)  # the stream ended: nothing more comes
    assert took < 5, f"stopping took {took:.1f}s with a live stream open"
    assert "event: row" not in rest


def test_a_stream_resumes_where_it_stopped(browser: Any, server: BackgroundServer) -> None:
    page, _ = sign_in(browser, server, ("admin",))
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    page.context.close()
    jar = {"clew_console": cookie["value"]}
    with httpx.Client(base_url=server.url, cookies=jar, timeout=10) as client:
        with client.stream("GET", "/console/live/stream") as first:
            ready = next(first.iter_text())
        last_id = next(line[4:] for line in ready.splitlines() if line.startswith("id: "))
        # Sent while no stream was open; the browser reconnects with the last id it saw.
        _track(server, "while-away", "Missed Nothing")
        wait_for(lambda: drained(server.url))
        seen = ""
        with client.stream(
            "GET", "/console/live/stream", headers={"last-event-id": last_id}
        ) as again:
            for chunk in again.iter_text():
                seen += chunk
                if "while-away" in seen:
                    break
    assert '"message_id": "while-away"' in seen
