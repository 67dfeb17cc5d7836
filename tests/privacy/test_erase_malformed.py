"""Deleting a person from a running embedded Clew whose log also holds malformed requests: a
stranger's request with an invalid UTF-8 byte in a string, one escaping a lone surrogate and
one that is not JSON at all, and one of the person's own requests with an invalid byte
elsewhere in it (all dead-lettered by the validate stage). The deletion ends ``finished``,
nothing of the person is left (their malformed request included), `clew privacy verify` and
the API say so and list the unreadable records instead of crashing, and the stranger's
records stay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _support import WRITE_KEY, drained, make_settings, wait_for
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.lake.query import Lake
from clew.log.base import Log, Message

ADA_EMAIL = "ada.lovelace@analytical.test"
ADA_USER = "user-ada-1815"
ADA_PHONE = "anon-ada-phone-7f3a"
ADA_LAPTOP = "anon-ada-laptop-91c2"
STRANGER = "anon-stranger-0b5e"
# The malformed raw requests, written into the log as a collector wrote them (whether today's
# collector refuses them is its own concern: a log may hold them from an older one).
STRANGER_BAD_UTF8 = (
    b'{"batch":[{"type":"track","event":"Viewed","messageId":"s-1","anonymousId":"'
    + STRANGER.encode()
    + b'","properties":{"note":"caf\xe9"}}]}'
)
STRANGER_SURROGATE = (
    b'{"batch":[{"type":"track","event":"Viewed","messageId":"s-2","anonymousId":"'
    + STRANGER.encode()
    + b'","properties":{"note":"\\ud800"}}]}'
)
STRANGER_NOT_JSON = b"anonymousId=" + STRANGER.encode() + b"&event=Viewed\xff"
# Ada's own, with an invalid byte in a property: matched as bytes.
ADA_BAD_UTF8 = (
    b'{"batch":[{"type":"track","event":"Viewed","messageId":"ada-bad","userId":"'
    + ADA_USER.encode()
    + b'","properties":{"note":"na\xefve"}}]}'
)


def _raw_holding(log: Log, needle: bytes) -> int:
    spec = log.topics()["raw"]
    return sum(
        needle in rec.value
        for p in range(spec.partitions)
        for rec in log.read("raw", p, 0, 100_000)
    )


def _dlq_rows(settings: Settings, needle: str) -> int:
    sql = f"SELECT count(*) FROM dlq WHERE payload LIKE '%{needle}%'"
    return int(Lake(settings.lake_path).sql(sql).rows[0][0])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def running(settings: Settings) -> Iterator[BackgroundServer]:
    with BackgroundServer(settings) as server:
        server.clew.catalog.create_source("tests", WRITE_KEY)
        ada = [
            {"type": "identify", "messageId": "ada-1", "anonymousId": ADA_PHONE}
            | {"userId": ADA_USER, "traits": {"email": ADA_EMAIL}},
            {"type": "track", "event": "Viewed", "messageId": "ada-2", "anonymousId": ADA_LAPTOP}
            | {"userId": ADA_USER},
        ]
        for event in ada:
            r = httpx.post(server.url + "/v1/batch", json={"batch": [event]}, auth=(WRITE_KEY, ""))
            assert r.status_code == 200, r.text
        log = server.clew.log
        wait_for(lambda: _raw_holding(log, ADA_PHONE.encode()) == 1)
        like = next(
            rec
            for p in range(log.topics()["raw"].partitions)
            for rec in log.read("raw", p, 0, 100)
            if ADA_PHONE.encode() in rec.value
        )
        malformed = (STRANGER_BAD_UTF8, STRANGER_SURROGATE, STRANGER_NOT_JSON, ADA_BAD_UTF8)
        log.append_sync(
            "raw",
            [
                Message(value, headers=_headers_like(like.headers, n))
                for n, value in enumerate(malformed)
            ],
        )
        wait_for(lambda: drained(server.url) and _dlq_rows(settings, STRANGER) == 3, 30)
        wait_for(lambda: _dlq_rows(settings, ADA_USER) == 1, 30)
        yield server


def _headers_like(headers: tuple[tuple[str, bytes], ...], n: int) -> tuple[tuple[str, bytes], ...]:
    """The collector's headers of another request, with a request id of its own."""
    return tuple((k, f"malformed-{n}".encode() if k == "request_id" else v) for k, v in headers)


def _token(server: BackgroundServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.clew.catalog.create_token('dpo', ['privacy'])}"}


def test_a_deletion_finishes_and_verifies_clean_despite_malformed_records(
    settings: Settings, running: BackgroundServer
) -> None:
    log = running.clew.log
    headers = _token(running)
    r = httpx.post(
        running.url + "/v1/privacy/requests",
        json={"type": "delete", "identifier": f"email:{ADA_EMAIL}"},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    found: dict[str, Any] = {}

    def ended() -> bool:
        got = httpx.get(f"{running.url}/v1/privacy/requests/{r.json()['id']}", headers=headers)
        found.update(got.json())
        return found["status"] in ("finished", "partial", "failed")

    wait_for(ended, 90, 0.2)

    assert found["status"] == "finished", found["audit"]
    assert found["attempts"] == 1
    audit = found["audit"]
    assert audit["subject"]["identifiers"] == {"anonymous_id": 2, "email": 1, "user_id": 1}
    assert audit["verify"]["clean"] is True and audit["verify"]["traces"] == []
    # The stranger's three raw records were read as bytes and listed, without their content.
    unreadable = audit["verify"]["unreadable"]
    assert len(unreadable) == 3 and all(u["where"].startswith("topic raw") for u in unreadable)
    assert STRANGER not in json.dumps(found)
    # Ada's malformed request is gone from the log and the lake; the stranger's stay.
    assert _raw_holding(log, ADA_USER.encode()) == 0
    assert _dlq_rows(settings, ADA_USER) == 0
    assert _raw_holding(log, STRANGER.encode()) == 3
    assert _dlq_rows(settings, STRANGER) == 3

    result = CliRunner().invoke(
        app,
        [
            "privacy",
            "verify",
            f"email:{ADA_EMAIL}",
            f"user_id:{ADA_USER}",
            f"anonymous_id:{ADA_PHONE}",
            f"anonymous_id:{ADA_LAPTOP}",
            "--data-dir",
            str(settings.data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "zero traces" in result.output
    assert "3 record(s) could not be read and were searched as bytes" in result.output
    data_dir = str(settings.data_dir)
    as_json = CliRunner().invoke(
        app, ["privacy", "verify", f"user_id:{ADA_USER}", "--json", "--data-dir", data_dir]
    )
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["clean"] is True and len(doc["unreadable"]) == 3
