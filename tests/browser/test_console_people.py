"""The console's people section in a real Chromium: finding a person by any identifier, their
profile page (identities and how they were linked, traits, events), and acting on it — a
split, a deletion — with the privacy actions kept from tokens without the privacy scope."""

from __future__ import annotations

from typing import Any

import httpx

from _browser import screenshot
from _support import WRITE_KEY, drained, wait_for
from browser._console import sign_in
from clew.background import BackgroundServer

ADA = [
    {
        "type": "identify",
        "anonymousId": "anon-ada",
        "messageId": "ada-1",
        "timestamp": "2026-03-02T10:00:00Z",
        "traits": {"email": "Ada@Shop.test", "name": "Ada", "plan": "pro"},
        "context": {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}},
    },
    {
        "type": "track",
        "anonymousId": "anon-ada",
        "messageId": "ada-2",
        "timestamp": "2026-03-02T10:01:00Z",
        "event": "Product Viewed",
        "properties": {"sku": "B-42"},
    },
    {
        "type": "alias",
        "previousId": "anon-ada",
        "userId": "u-ada",
        "messageId": "ada-3",
        "timestamp": "2026-03-02T10:02:00Z",
    },
    {
        "type": "track",
        "userId": "u-ada",
        "messageId": "ada-4",
        "timestamp": "2026-03-02T10:03:00Z",
        "event": "Order Completed",
        "properties": {"revenue": 30.0},
    },
]
# docs/identity-split.md: a family address shared by a laptop and a tablet merges both.
FAMILY = [
    {
        "type": "identify",
        "anonymousId": "laptop",
        "messageId": "mum-1",
        "timestamp": "2026-03-01T10:10:00Z",
        "traits": {"email": "family@home.test", "name": "Mum"},
    },
    {
        "type": "track",
        "anonymousId": "tablet-7",
        "messageId": "kid-1",
        "timestamp": "2026-03-01T11:00:00Z",
        "event": "Product Viewed",
    },
    {
        "type": "identify",
        "anonymousId": "tablet-7",
        "messageId": "kid-2",
        "timestamp": "2026-03-01T11:10:00Z",
        "traits": {"email": "family@home.test", "name": "Kid"},
    },
]


def _send(server: BackgroundServer, batch: list[dict[str, Any]]) -> None:
    httpx.post(
        f"{server.url}/v1/batch", json={"writeKey": WRITE_KEY, "batch": batch}
    ).raise_for_status()
    wait_for(lambda: drained(server.url))


def _in_lake(server: BackgroundServer, message_id: str) -> bool:
    rows = server.clew.lake.sql(f"SELECT count(*) FROM events WHERE message_id = '{message_id}'")
    return bool(rows.rows[0][0])


def _search(page: Any, server: BackgroundServer, text: str) -> None:
    page.goto(f"{server.url}/console/people")
    page.fill("#q", text)
    page.click("form[role=search] button")
    page.wait_for_load_state()


def _entered(server: BackgroundServer, audience: str) -> bool:
    rows = server.clew.lake.sql(
        f"SELECT count(*) FROM audience_changes WHERE audience = '{audience}'"
    )
    return bool(rows.rows[0][0])


def test_search_by_email_shows_the_profile(browser: Any, server: BackgroundServer) -> None:
    admin = server.clew.catalog.create_token("audiences-admin", ("admin",))
    httpx.put(
        f"{server.url}/v1/admin/audiences/pro_plan",
        headers={"authorization": f"Bearer {admin}"},
        json={"type": "audience", "condition": {"trait": "plan", "value": "pro"}},
    ).raise_for_status()
    _send(server, ADA)
    wait_for(lambda: _in_lake(server, "ada-4") and _entered(server, "pro_plan"))
    page, log = sign_in(browser, server, ("profiles",))
    _search(page, server, "ADA@shop.test")
    assert "/console/people/" in page.url
    identities = page.inner_text("#identities")
    assert "email:ada@shop.test" in identities
    assert "anonymous_id:anon-ada" in identities and "user_id:u-ada" in identities
    # The identify linked the email to the anonymous id; the alias brought the user id.
    tree = page.inner_text("#provenance")
    assert "ada-1" in tree and "ada-3" in tree
    assert "plan" in page.inner_text("#traits") and "pro" in page.inner_text("#traits")
    assert "Analytics" in page.inner_text("#consent")
    # In the audience since the event that put the person in it.
    audiences = page.inner_text("#audiences")
    assert "pro_plan" in audiences and " UTC" in audiences and '"trait": "plan"' in audiences
    timeline = page.locator("#timeline tr.event-row").all_inner_texts()
    assert len(timeline) == 4
    assert "Order Completed" in timeline[0]
    # Without the privacy or admin scope: no actions at all.
    assert page.locator("#actions").count() == 0
    screenshot(page, "console-people-profile")
    # Every identifier leads to the same page; an unknown one says so.
    here = page.url
    profile_id = page.inner_text("#profile-id")
    for ref in ("u-ada", "anonymous_id:anon-ada", "userId:u-ada", f"profile_id:{profile_id}"):
        _search(page, server, ref)
        assert page.url == here
    # The id of the profile the alias merged in leads to the survivor.
    found = server.clew.profiles.get(profile_id)
    assert found is not None and found.merged
    page.goto(f"{server.url}/console/people/{found.merged[0].from_id}")
    assert page.url == here
    _search(page, server, "nobody@shop.test")
    assert "no profile holds" in page.inner_text("[role=alert]")
    screenshot(page, "console-people-search")
    assert log.errors == []


def test_a_split_from_the_profile_page_makes_two_profiles(
    browser: Any, server: BackgroundServer
) -> None:
    _send(server, FAMILY)
    wait_for(lambda: _in_lake(server, "kid-2"))
    page, log = sign_in(browser, server, ("profiles", "admin"))
    page.on("dialog", lambda dialog: dialog.accept())
    _search(page, server, "family@home.test")
    assert "anonymous_id:tablet-7" in page.inner_text("#identities")
    page.select_option("select[name=identifier]", "anonymous_id:tablet-7")
    page.click("#split")
    page.wait_for_load_state()
    result = page.inner_text("#split-result")
    assert "Split anonymous_id:tablet-7 off" in " ".join(result.split())
    assert len(page.locator("a.profile-link").all()) == 2
    screenshot(page, "console-people-split")
    _search(page, server, "anonymous_id:tablet-7")
    tablet = page.inner_text("#identities")
    assert "anonymous_id:tablet-7" in tablet and "family@home.test" not in tablet
    _search(page, server, "family@home.test")
    family = page.inner_text("#identities")
    assert "anonymous_id:laptop" in family and "tablet-7" not in family
    assert "kept apart" in page.inner_text("#provenance")
    assert log.errors == []


def test_a_deletion_from_the_profile_page_erases_the_person(
    browser: Any, server: BackgroundServer
) -> None:
    _send(server, ADA)
    wait_for(lambda: _in_lake(server, "ada-4"))
    page, log = sign_in(browser, server, ("profiles", "privacy"))
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    _search(page, server, "ada@shop.test")
    screenshot(page, "console-people-actions")
    page.click("#delete")
    page.wait_for_url("**/console/people?request=*")
    assert questions and "cannot be undone" in questions[0]

    def finished() -> bool:
        return "finished" in page.inner_text("#privacy-request")

    wait_for(finished, timeout_s=40)
    screenshot(page, "console-people-deleted")
    _search(page, server, "ada@shop.test")
    assert "no profile holds" in page.inner_text("[role=alert]")
    assert server.clew.profiles.lookup("user_id", "u-ada") is None
    assert log.errors == []


def test_without_the_privacy_scope_there_is_no_delete_and_a_forged_one_is_refused(
    browser: Any, server: BackgroundServer
) -> None:
    _send(server, ADA[:1])
    page, log = sign_in(browser, server, ("profiles", "admin"))
    _search(page, server, "ada@shop.test")
    assert page.locator("#split").count() == 1  # admin may split
    assert page.locator("#delete").count() == 0 and page.locator("#suppress").count() == 0
    action = page.url + "/privacy"
    csrf = page.get_attribute("form.logout input[name=csrf]", "value")
    cookie = next(c for c in page.context.cookies() if c["name"] == "clew_console")
    with httpx.Client(cookies={"clew_console": cookie["value"]}) as client:
        forged = client.post(action, data={"csrf": csrf, "type": "delete"})
    assert forged.status_code == 403
    assert server.clew.privacy.requests.recent() == []
    assert server.clew.profiles.lookup("email", "ada@shop.test") is not None
    assert log.errors == []
