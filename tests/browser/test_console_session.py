"""The console's door in a real Chromium: signing in and out, scopes deciding what a token sees,
and forms refused without the session's CSRF token or from another origin."""

from __future__ import annotations

from typing import Any

import httpx

from _browser import PageLog, screenshot
from _support import WRITE_KEY, drained, wait_for
from browser._console import sign_in
from clew.background import BackgroundServer


def test_sign_in_see_the_overview_and_sign_out(browser: Any, server: BackgroundServer) -> None:
    httpx.post(
        f"{server.url}/v1/track",
        json={"writeKey": WRITE_KEY, "userId": "u1", "event": "Signed Up"},
    ).raise_for_status()
    wait_for(lambda: drained(server.url))
    page, log = sign_in(browser, server)
    assert page.url == f"{server.url}/console"
    assert page.inner_text("h1") == "Overview"

    # The event just sent, counted under its source and type; every stage listed, none lagging.
    def counted() -> bool:
        page.reload()
        return "Signed Up" in page.inner_text("main") or "track" in page.inner_text("main")

    wait_for(counted)
    stages = page.inner_text("#stages")
    assert "validate" in stages and "profiles" in stages
    screenshot(page, "console-overview")
    # The cookie is out of scripts' reach.
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "clew_" not in cookie["value"]
    page.click("form.logout button")
    page.wait_for_url("**/console/login")
    page.goto(f"{server.url}/console")
    assert page.url.startswith(f"{server.url}/console/login?next=")
    assert log.errors == []


def test_a_wrong_token_is_refused_at_the_door(browser: Any, server: BackgroundServer) -> None:
    log = PageLog()
    page = log.watch(browser.new_page())
    page.goto(f"{server.url}/console/login")
    page.fill("input[name=token]", WRITE_KEY)
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    assert not [c for c in page.context.cookies() if c["name"] == "clew_console"]
    page.close()


def test_a_token_sees_only_the_sections_its_scopes_allow(
    browser: Any, server: BackgroundServer
) -> None:
    page, log = sign_in(browser, server, ("profiles",))
    # Without the overview's scope (metrics) the door leads to the first section it may see.
    assert page.url == f"{server.url}/console/people"
    # A token for SQL only may see no section: the overview refuses it, naming the scope.
    page, log = sign_in(browser, server, ("sql",))
    response = page.goto(f"{server.url}/console")
    assert response is not None and response.status == 403
    assert "lacks the metrics scope" in " ".join(page.inner_text("[role=alert]").split())
    assert page.locator("header nav a").all_inner_texts() == []
    screenshot(page, "console-refused")
    # The browser reports the refused page itself as a failed load; nothing else went wrong.
    assert [e for e in log.errors if "status of 403" not in e] == []


def test_revoking_the_token_ends_its_sessions(browser: Any, server: BackgroundServer) -> None:
    page, _ = sign_in(browser, server, ("metrics",), name="short-lived")
    server.clew.catalog.revoke_token("short-lived")
    page.goto(f"{server.url}/console")
    assert "/console/login" in page.url


def test_forms_need_the_session_csrf_token_and_its_own_origin(
    browser: Any, server: BackgroundServer
) -> None:
    page, _ = sign_in(browser, server, ("metrics",))
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    jar = {"clew_console": cookie["value"]}
    with httpx.Client(base_url=server.url, cookies=jar) as client:
        # Without the CSRF token, signing out is refused and the session survives.
        assert client.post("/console/logout", data={}).status_code == 403
        assert client.get("/console").status_code == 200
        # From another origin, even with the right token.
        csrf = page.get_attribute("form.logout input[name=csrf]", "value")
        refused = client.post(
            "/console/logout", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
        )
        assert refused.status_code == 403
        signed_out = client.post("/console/logout", data={"csrf": csrf})
        assert signed_out.status_code == 303
    # Pages forbid framing and inline scripts.
    answer = httpx.get(f"{server.url}/console/login")
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert "<script>" not in answer.text
