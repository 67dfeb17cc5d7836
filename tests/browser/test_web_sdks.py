"""Both browser SDKs against a real Clew in a real headless Chromium: the example site
(examples/web) served from another origin than Clew loads analytics.js, or RudderStack's
JavaScript SDK v3, from Clew, and a visitor browses, reloads, reads an article to its end,
clicks the call to action, views a product, adds it to the cart, chooses consent and signs up.

Then the lake holds every event with the browser's context, one anonymous id across the
reload, and the Profile API finds one person by email holding the device's anonymous id,
the user id and the consent chosen. The pages log no console error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from _browser import PageLog, screenshot
from _docblocks import ROOT, blocks
from _support import WRITE_KEY, ServeProcess, lake_count, wait_for
from clew.background import BackgroundServer, free_port
from clew.demo import example_plan_dir
from clew.demo.web_site import ExampleSite, SiteConfig
from clew.schema import SchemaRegistry, load_plan, push

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Sdk:
    name: str  # the site's ?sdk=
    library: str  # context.library.name
    version: str  # context.library.version


SDKS = [
    Sdk("segment", "analytics.js", "next-1.84.3"),
    Sdk("rudderstack", "RudderLabs JavaScript SDK", "3.34.1"),
]
# How long an event may take to reach the lake: a bound for a failing test, not a figure
# of speed (the stages of a real `clew serve` start in worker processes, slow on a busy
# machine).
LANDED_S = 90
# What the visit below sends, by (type, event or page name): at least this many each.
EXPECTED = {
    ("page", "Home"): 1,
    ("page", "Product"): 2,  # before and after the reload
    ("page", "Article"): 1,
    ("page", "Sign up"): 1,
    ("track", "Consent Updated"): 1,
    ("track", "button_clicked"): 1,
    ("track", "Product Viewed"): 2,
    ("track", "Product Added"): 1,
    ("track", "article_read"): 1,
    ("track", "Signed Up"): 1,
    ("identify", None): 1,
}


@pytest.fixture
def site(server: BackgroundServer) -> Iterator[ExampleSite]:
    """The example site on a port of its own (another origin than Clew's), sending to the
    ``default`` source, which enforces the example tracking plan as after `clew demo`: an
    event of the site that broke the plan would land in the DLQ, not in ``events``."""
    plan = example_plan_dir()
    assert plan is not None
    with SchemaRegistry(server.settings.registry_path) as registry:
        push(registry, load_plan(plan))
    config = SiteConfig(server.url, server.clew.default_source.write_key)
    with ExampleSite(config, "127.0.0.1", free_port()) as running:
        yield running


def _sql(server: BackgroundServer, token: str, query: str) -> list[dict[str, Any]]:
    r = httpx.post(
        server.url + "/v1/sql",
        json={"query": query},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def _dead_letters(server: BackgroundServer, token: str) -> object:
    """What the DLQ holds (an event the example plan refused, with the reason)."""
    try:
        return _sql(server, token, "SELECT reason, event_name, message FROM dlq")
    except AssertionError as exc:  # no dlq table: nothing was dead-lettered
        return f"none ({exc})"


def _visit(page: Any, site: ExampleSite, sdk: Sdk, email: str) -> tuple[str, str, str]:
    """Browse the site as one visitor; the anonymous id before and after the reload, and the
    user id the sign-up gave."""
    visitor = page.locator("#visitor")
    page.goto(f"{site.url}/index.html?sdk={sdk.name}")
    page.wait_for_function("document.getElementById('visitor').textContent.length > 8")
    first_id = visitor.inner_text()
    page.click("#consent-analytics")
    page.click("#cta")
    page.click("a[href='product.html?id=p-2']")
    page.wait_for_selector("#product-name:text('Summit 30L Pack')")
    page.click("#add-to-cart")
    page.wait_for_selector("#cart-status:text('1 in your cart')")
    page.reload()
    page.wait_for_function("document.getElementById('visitor').textContent.length > 8")
    reloaded_id = visitor.inner_text()
    page.click("nav a[href='article.html']")
    page.wait_for_selector("article")
    page.locator("#article-end").scroll_into_view_if_needed()
    page.wait_for_selector("#read-status:text('Thanks for reading')")
    page.click("nav a[href='signup.html']")
    page.fill("#name", "Ada Lovelace")
    page.fill("#email", email)
    page.click("button[type=submit]")
    page.wait_for_selector("#welcome", state="visible")
    return first_id, reloaded_id, page.locator("#welcome-id").inner_text()


@pytest.mark.parametrize("sdk", SDKS, ids=[s.name for s in SDKS])
def test_a_visit_lands_in_the_lake_and_the_profile(
    browser: Any, server: BackgroundServer, site: ExampleSite, sdk: Sdk
) -> None:
    token = server.clew.catalog.create_token("browser-test", ["sql", "profiles"])
    email = f"ada+{sdk.name}@shop.test"
    context = browser.new_context(locale="en-GB")
    log = PageLog()
    page = log.watch(context.new_page())
    requested: list[str] = []
    failed: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        first_id, reloaded_id, user_id = _visit(page, site, sdk, email)
        screenshot(page, f"web-sdks-{sdk.name}-signed-up")
    finally:
        page.close()
        context.close()
    assert log.errors == [], failed
    # Everything came from the site or from Clew: no SDK CDN, no vendor's API.
    assert all(u.startswith((site.url + "/", server.url + "/", "data:")) for u in requested), {
        u for u in requested if not u.startswith((site.url, server.url))
    }
    assert first_id == reloaded_id, "the anonymous id must survive a reload"

    def landed() -> list[dict[str, Any]]:
        return _sql(
            server,
            token,
            "SELECT type, coalesce(event, name) AS what, anonymous_id, user_id, context "
            "FROM events ORDER BY timestamp",
        )

    def complete() -> bool:
        rows = landed()
        counts: dict[tuple[str, str | None], int] = {}
        for row in rows:
            key = (row["type"], None if row["type"] == "identify" else row["what"])
            counts[key] = counts.get(key, 0) + 1
        return all(counts.get(k, 0) >= n for k, n in EXPECTED.items())

    try:
        wait_for(complete, timeout_s=LANDED_S)
    except AssertionError as exc:
        letters = _dead_letters(server, token)
        raise AssertionError(f"not every event landed; dead letters: {letters}") from exc
    rows = landed()
    assert {r["anonymous_id"] for r in rows} == {first_id}
    assert {r["user_id"] for r in rows if r["what"] == "Signed Up"} == {user_id}
    for row in rows:
        ctx = json.loads(row["context"])
        library = ctx["library"]
        assert (library["name"], library["version"]) == (sdk.library, sdk.version), library
        assert ctx["userAgent"].startswith("Mozilla/5.0") and "Chrome" in ctx["userAgent"]
        assert ctx["locale"] == "en-GB"
        assert ctx["page"]["url"].startswith(site.url + "/")
    product_views = [json.loads(r["context"]) for r in rows if r["what"] == "Product"]
    assert product_views[0]["page"]["url"] == f"{site.url}/product.html?id=p-2"
    assert product_views[0]["page"]["referrer"] == f"{site.url}/index.html?sdk={sdk.name}"
    # Every event after the banner's choice (all but the first page view) carries it.
    chosen = {"categoryPreferences": {"Analytics": True, "Advertising": False}}
    consents = [json.loads(r["context"]).get("consent") for r in rows if r["what"] != "Home"]
    assert consents and all(c == chosen for c in consents)

    def profile() -> dict[str, Any] | None:
        r = httpx.get(
            f"{server.url}/v1/profiles/email:{email}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        return r.json() if r.status_code == 200 else None

    wait_for(lambda: profile() is not None, timeout_s=LANDED_S)
    found = profile()
    assert found is not None
    identities = {(i["type"], i["value"]) for i in found["identities"]}
    assert {("anonymous_id", first_id), ("user_id", user_id), ("email", email)} <= identities
    assert found["traits"]["email"] == email
    assert found["computed_traits"]["consent"] == chosen


def test_analytics_js_loads_its_chunks_from_clew(
    browser: Any, server: BackgroundServer, site: ExampleSite
) -> None:
    """A campaign link's ``?ajs_event=`` makes analytics.js load its queryString chunk (from
    Clew's ``/analytics-next/bundles/``, the base it derives from ``analytics._cdn``) and track
    the event the link names."""
    context = browser.new_context()
    log = PageLog()
    page = log.watch(context.new_page())
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        with page.expect_response(lambda r: "/analytics-next/bundles/queryString." in r.url) as r:
            page.goto(
                f"{site.url}/index.html?sdk=segment"
                "&ajs_event=CTA%20Clicked&ajs_prop_cta_id=newsletter_link"
            )
        assert r.value.status == 200
        assert r.value.url.startswith(server.url + "/analytics-next/bundles/")
        page.wait_for_function("document.getElementById('visitor').textContent.length > 8")
    finally:
        page.close()
        context.close()
    assert log.errors == []
    where = "event = 'CTA Clicked' AND properties LIKE '%newsletter_link%'"
    wait_for(lambda: lake_count(server.settings.data_dir, where=where), timeout_s=LANDED_S)


def test_clew_serve_examples_serves_the_site_on_its_own_port(browser: Any, tmp_path: Path) -> None:
    """``clew serve --examples``: the site on a second port, set up with the ``default``
    source's key; a page view from it lands through the real server's worker processes."""
    site_port = free_port()
    serve = ServeProcess(
        tmp_path / "data", free_port(), args=["--examples", "--examples-port", str(site_port)]
    )
    serve.start()
    try:
        site_url = f"http://127.0.0.1:{site_port}"
        wait_for(lambda: f"Example site:  {site_url}/" in serve.log_path.read_text(), timeout_s=60)
        key = re.search(r"write key of source 'default': (\S+)", serve.log_path.read_text())
        assert key is not None
        config = httpx.get(site_url + "/config.js", timeout=5).text
        assert json.dumps(serve.url) in config and json.dumps(key.group(1)) in config
        log = PageLog()
        page = log.watch(browser.new_page())
        try:
            page.goto(site_url + "/")
            page.wait_for_function("document.getElementById('visitor').textContent.length > 8")
        finally:
            page.close()
        assert log.errors == []
        home = "type = 'page' AND name = 'Home'"
        wait_for(lambda: lake_count(serve.data_dir, where=home), timeout_s=LANDED_S)
    finally:
        serve.stop()
    assert serve.proc is not None and serve.proc.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(site_url + "/", timeout=2)


def _readme_snippets() -> list[str]:
    """The README's page code for each SDK (section "From a web site")."""
    found = [b.text for b in blocks(ROOT / "README.md") if b.lang == "html"]
    assert len(found) == 2, "README's 'From a web site' shows one page per SDK"
    return found


@pytest.mark.parametrize("which", [0, 1], ids=["analytics.js", "rudderstack"])
def test_the_readme_page_code_sends_from_another_origin(
    browser: Any, server: BackgroundServer, tmp_path: Path, which: int
) -> None:
    """Each of the README's snippets, its host and key replaced by the test server's, alone on
    a page of another origin."""
    html = _readme_snippets()[which].replace("http://127.0.0.1:8088", server.url)
    html = html.replace("WRITE_KEY", WRITE_KEY)
    (tmp_path / "landing.html").write_text(
        f"<!doctype html><title>Shop</title><link rel=icon href=data:,>{html}"
    )
    config = SiteConfig(server.url, WRITE_KEY)
    log = PageLog()
    with ExampleSite(config, "127.0.0.1", free_port(), directory=tmp_path) as shop:
        page = log.watch(browser.new_page())
        try:
            page.goto(f"{shop.url}/landing.html")
            url = f"{shop.url}/landing.html"
            where = f"type = 'page' AND context LIKE '%{url}%'"
            wait_for(lambda: lake_count(server.settings.data_dir, where=where), timeout_s=LANDED_S)
        finally:
            page.close()
    assert log.errors == []


def test_rudderstack_beacon_transport_lands(
    browser: Any, server: BackgroundServer, tmp_path: Path
) -> None:
    """RudderStack's ``useBeacon: true`` queues events and sends them with
    ``navigator.sendBeacon`` to ``/beacon/v1/batch?writeKey=…`` (text/plain, no header) when
    the visitor leaves the page."""
    (tmp_path / "beacon.html").write_text(
        "<!doctype html><title>Beacon</title><link rel=icon href=data:,>"
        f'<script src="{server.url}/v3/modern/rsa.umd.js"></script><script>'
        "var rudderanalytics = new window.rudderanalytics.RudderAnalytics();"
        f'rudderanalytics.load("{WRITE_KEY}", "{server.url}", '
        f'{{configUrl: "{server.url}", useBeacon: true}});'
        'rudderanalytics.track("Beacon Sent", {via: "sendBeacon"});'
        'rudderanalytics.ready(function () { document.title = "ready"; });'
        "</script>"
    )
    log = PageLog()
    config = SiteConfig(server.url, WRITE_KEY)
    with ExampleSite(config, "127.0.0.1", free_port(), tmp_path) as shop:
        page = log.watch(browser.new_page())
        try:
            page.goto(f"{shop.url}/beacon.html")
            page.wait_for_function("document.title === 'ready'")
            assert server.clew.collector.counters["requests_accepted"] == 0  # queued
            page.goto("about:blank")  # leaving the page sends the beacon
            where = "event = 'Beacon Sent'"
            wait_for(lambda: lake_count(server.settings.data_dir, where=where), timeout_s=LANDED_S)
        finally:
            page.close()
    assert log.errors == []
