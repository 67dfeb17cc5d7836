"""A person forgotten through a real `clew serve`: Ada browses on her phone and her laptop,
signs up with an email and a user id, then asks to be deleted and suppressed. The request
ends ``finished`` with a clean verification, Bob's data is untouched, her later events are
acknowledged but stored nowhere, and privacy.db keeps no copy of her identifiers."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support import WRITE_KEY, ServeProcess, clew_bin, drained, lake_count, wait_for

pytestmark = pytest.mark.slow

EMAIL = "ada.lovelace@analytical.test"
USER = "ada-1815"
PHONE, LAPTOP = "ada-phone-7f3c", "ada-laptop-91be"
ADA_ROWS = f"user_id = '{USER}' OR anonymous_id IN ('{PHONE}', '{LAPTOP}', 'ada-tablet-1')"


def clew(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [clew_bin(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def token(serve_process: ServeProcess) -> str:
    out = clew(serve_process.data_dir, "tokens", "create", "dpo", "--scope", "privacy,profiles")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.headers = {"Authorization": f"Bearer {token}"}

    def send(self, events: list[dict[str, Any]]) -> None:
        r = self.http.post("/v1/batch", json={"batch": events}, auth=(WRITE_KEY, ""))
        assert r.status_code == 200, r.text

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers=self.headers)

    def request(self, body: dict[str, Any]) -> str:
        r = self.http.post("/v1/privacy/requests", json=body, headers=self.headers)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def ended(self, request_id: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def done() -> bool:
            found.update(self.get(f"/v1/privacy/requests/{request_id}").json())
            return found["status"] in ("finished", "partial", "failed")

        wait_for(done, 90, 0.2)
        return found

    def metric(self, line: str) -> float:
        text = self.http.get("/metrics").text
        match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
        assert match, line
        return float(match.group(1))


@pytest.fixture
def api(serve_process: ServeProcess, token: str) -> Iterator[Api]:
    client = Api(serve_process.url, token)
    yield client
    client.http.close()


def ada_and_bob() -> list[dict[str, Any]]:
    return [
        {"type": "page", "name": "Home", "anonymousId": PHONE},
        {"type": "track", "event": "Product Viewed", "anonymousId": PHONE},
        {"type": "identify", "anonymousId": PHONE, "userId": USER, "traits": {"email": EMAIL}},
        {"type": "page", "name": "Pricing", "anonymousId": LAPTOP},
        {"type": "identify", "anonymousId": LAPTOP, "traits": {"email": EMAIL.upper()}},
        {
            "type": "track",
            "event": "Order Completed",
            "userId": USER,
            "properties": {"revenue": 42},
        },
        {"type": "identify", "userId": "bob-1", "traits": {"email": "bob@builder.test"}},
        {"type": "track", "event": "Product Viewed", "userId": "bob-1"},
    ]


def test_a_person_is_deleted_suppressed_and_verified_across_devices(
    serve_process: ServeProcess, api: Api
) -> None:
    data = serve_process.data_dir
    api.send(ada_and_bob())
    wait_for(lambda: drained(serve_process.url) and lake_count(data) == 8, 60)
    profile = api.get(f"/v1/profiles/email:{EMAIL}")
    assert profile.status_code == 200
    bob_before = lake_count(data, where="user_id = 'bob-1'")
    assert bob_before == 2

    request_id = api.request({"type": "suppress_with_delete", "identifier": f"email:{EMAIL}"})
    result = api.ended(request_id)
    audit = result["audit"]
    assert result["status"] == "finished", json.dumps(audit, indent=1)
    assert audit["subject"]["identifiers"] == {"anonymous_id": 2, "email": 1, "user_id": 1}
    assert audit["verify"]["clean"] is True and audit["verify"]["traces"] == []
    assert audit["in_flight"]["settled"] is True
    assert audit["requested_by"] == "token:dpo"

    assert api.get(f"/v1/profiles/email:{EMAIL}").status_code == 404
    assert api.get(f"/v1/profiles/anonymous_id:{LAPTOP}").status_code == 404
    assert lake_count(data, where=ADA_ROWS) == 0
    assert lake_count(data, where="user_id = 'bob-1'") == bob_before

    # Later events for any of her identifiers are answered and dropped; Bob's are stored.
    api.send(
        [
            {"type": "track", "event": "Came Back", "userId": USER},
            {"type": "page", "name": "Home", "anonymousId": PHONE},
            {"type": "page", "name": "Home", "anonymousId": LAPTOP},
            {"type": "identify", "anonymousId": "ada-tablet-1", "traits": {"email": EMAIL}},
            {"type": "track", "event": "Product Viewed", "userId": "bob-1"},
        ]
    )
    wait_for(
        lambda: drained(serve_process.url) and lake_count(data, where="user_id = 'bob-1'") == 3
    )
    assert lake_count(data, where=ADA_ROWS) == 0
    assert api.get(f"/v1/profiles/email:{EMAIL}").status_code == 404
    assert api.metric('clew_suppressed_events_total{stage="collector"}') == 4
    assert api.metric('clew_privacy_requests{status="finished"}') == 1

    ids = [f"email:{EMAIL}", f"user_id:{USER}", f"anonymous_id:{PHONE}", f"anonymous_id:{LAPTOP}"]
    verified = clew(data, "privacy", "verify", *ids)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "zero traces" in verified.stdout

    privacy_db = b"".join(p.read_bytes() for p in data.glob("privacy.db*"))
    for value in (EMAIL, USER, PHONE, LAPTOP):
        assert value.encode() not in privacy_db
        assert value.encode() not in json.dumps(audit).encode()
