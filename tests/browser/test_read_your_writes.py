"""The browser half of read your writes (docs/profile-api.md, "Read your writes") in a real
headless Chromium: a page of another origin sends an event with ``fetch`` (preflight
included), reads ``Clew-Position`` from the cross-origin answer, and a read of the profile
with that position holds the event's trait."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from _support import WRITE_KEY
from clew.background import BackgroundServer, free_port

pytestmark = pytest.mark.slow

SEND = """async ([clew, writeKey]) => {
  const answer = await fetch(clew + "/v1/identify", {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "Authorization": "Basic " + btoa(writeKey + ":"),
    },
    body: JSON.stringify({userId: "browser-1", traits: {plan: "team"}}),
  });
  return {status: answer.status, position: answer.headers.get("Clew-Position")};
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>shop</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def shop() -> Iterator[str]:
    """An empty page on a port of its own: another origin than Clew's."""
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_a_page_of_another_origin_reads_the_position(
    browser: Any, server: BackgroundServer, shop: str
) -> None:
    page = browser.new_page()
    try:
        page.goto(shop)
        sent = page.evaluate(SEND, [server.url, WRITE_KEY])
    finally:
        page.close()
    assert sent["status"] == 200
    assert sent["position"] and sent["position"].startswith("raw:"), sent
    token = server.clew.catalog.create_token("shop-backend", ["profiles"])
    r = httpx.get(
        f"{server.url}/v1/profiles/user_id:browser-1",
        params={"after": sent["position"], "wait_ms": 5000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["traits"]["plan"] == "team"
