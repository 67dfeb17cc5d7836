"""Requests refused for size or broken JSON are still visible in the dead-letter queue (typed
`size_violation` / `invalid_json`) when their source is known; anonymous garbage is not."""

from __future__ import annotations

import httpx

from _support import WRITE_KEY, lake_count, wait_for
from clew.background import BackgroundServer
from clew.lake.query import Lake


def test_refused_requests_of_a_known_source_are_dead_lettered(server: BackgroundServer) -> None:
    url = server.url
    big = {"type": "track", "event": "Big", "userId": "u", "properties": {"blob": "x" * 40_000}}
    r = httpx.post(url + "/v1/batch", json={"batch": [big]}, auth=(WRITE_KEY, ""))
    assert r.status_code == 400 and r.json()["code"] == "event_too_large"
    r = httpx.post(url + "/v1/track", content=b'{"event": "x", "userId": ', auth=(WRITE_KEY, ""))
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    # No source known: nothing is kept (a write key is needed to be heard).
    r = httpx.post(url + "/v1/track", content=b"{broken")
    assert r.status_code == 400

    wait_for(lambda: lake_count(server.settings.data_dir, "dlq") == 2)
    rows = (
        Lake(server.settings.lake_path)
        .sql("SELECT reason, message, length(payload), source_id FROM dlq ORDER BY reason")
        .rows
    )
    assert [r[0] for r in rows] == ["invalid_json", "size_violation"]
    assert "event_too_large" in rows[1][1]
    assert rows[1][2] == 8 * 1024  # the payload is kept, cut to 8 KB
    assert {r[3] for r in rows} == {server.clew.catalog.source_for_key(WRITE_KEY).id}
