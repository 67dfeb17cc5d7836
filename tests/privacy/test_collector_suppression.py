"""The Tracking API answers a suppressed person's events like any other but stores none of
them, and counts them (Clew in process, stages in threads)."""

from __future__ import annotations

import re
import time

import httpx

from _support import WRITE_KEY, drained, lake_count, wait_for
from clew.background import BackgroundServer
from clew.privacy._salt import identifier_hash, load_salt
from clew.privacy.suppression import RELOAD_S, SuppressedHash, SuppressionList
from clew.topics import RAW_TOPIC


def metric(url: str, line: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    assert found, f"{line} not in /metrics"
    return float(found.group(1))


def test_suppressed_events_are_acknowledged_counted_and_not_stored(
    server: BackgroundServer,
) -> None:
    settings = server.settings
    salt = load_salt(settings)
    suppressions = SuppressionList(settings.privacy_path)
    suppressions.add(
        "pr_test",
        [
            SuppressedHash("user_id", identifier_hash(salt, "user_id", "ada")),
            SuppressedHash("email", identifier_hash(salt, "email", "ada@x.test")),
        ],
        temporary=False,
    )
    suppressions.close()
    time.sleep(RELOAD_S + 0.1)
    auth = (WRITE_KEY, "")
    with httpx.Client(base_url=server.url, auth=auth, timeout=10) as http:
        r = http.post("/v1/track", json={"userId": "ada", "event": "Viewed"})
        assert (r.status_code, r.json()) == (200, {"success": True})
        batch = [
            {"type": "track", "event": "Viewed", "userId": "bob", "messageId": "b1"},
            {"type": "identify", "anonymousId": "dev-1", "traits": {"email": "ADA@x.test"}},
            {"type": "track", "event": "Viewed", "anonymousId": "dev-1", "messageId": "a2"},
        ]
        r = http.post(
            "/v1/batch", json={"batch": batch, "context": {"traits": {"email": "ada@x.test"}}}
        )
        assert r.status_code == 200
        r = http.post("/v1/batch", json={"batch": [batch[0], {**batch[0], "messageId": "b2"}]})
        assert r.status_code == 200
    wait_for(lambda: drained(server.url))
    # The shared batch context names Ada, so the whole first batch is hers; bob's events of
    # the second batch are stored.
    assert metric(server.url, 'clew_suppressed_events_total{stage="collector"}') == 4
    assert metric(server.url, "clew_collector_events_total") == 2
    wait_for(lambda: lake_count(settings.data_dir) == 2)
    log = server.clew.log
    raw = b"".join(
        rec.value for p in log.end_offsets(RAW_TOPIC) for rec in log.read(RAW_TOPIC, p, 0, 1000)
    )
    assert b"ada" not in raw.lower()
    assert lake_count(settings.data_dir, where="user_id = 'ada' OR anonymous_id = 'dev-1'") == 0


def test_a_batch_with_some_suppressed_events_keeps_the_others(server: BackgroundServer) -> None:
    settings = server.settings
    suppressions = SuppressionList(settings.privacy_path)
    suppressions.add(
        "pr_test",
        [
            SuppressedHash(
                "anonymous_id", identifier_hash(load_salt(settings), "anonymous_id", "dev-1")
            )
        ],
        temporary=True,
    )
    suppressions.close()
    time.sleep(RELOAD_S + 0.1)
    batch = [
        {"type": "track", "event": "A", "anonymousId": "dev-1", "messageId": "1"},
        {"type": "track", "event": "B", "anonymousId": "dev-2", "messageId": "2"},
        {"type": "page", "name": "Home", "anonymousId": "dev-3", "messageId": "3"},
    ]
    r = httpx.post(
        server.url + "/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY}, timeout=10
    )
    assert r.status_code == 200
    wait_for(lambda: lake_count(settings.data_dir) == 2)
    assert lake_count(settings.data_dir, where="anonymous_id = 'dev-1'") == 0
    assert metric(server.url, 'clew_suppressed_identifiers{kind="temporary"}') == 1
