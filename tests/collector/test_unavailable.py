"""The collector answers 503 ``unavailable`` with ``Retry-After`` when it cannot store a
request: while shutting down (``accepting`` is false; nothing is appended) and when the log's
append fails (a failed future, whatever the error, or an append that raises). The Collector's
ASGI app in process over a fake log; each request has a 10 s guard against hanging."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest

from _support import WRITE_KEY
from clew.collector.app import Collector
from clew.config import Limits
from clew.log.base import Log, LogError, Message, Position
from clew.sources import Catalog
from clew.topics import RAW_TOPIC

BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
BODY = orjson.dumps({"batch": [{"type": "track", "event": "Signed Up", "userId": "u-1"}]})


class _FakeLog:
    """A log whose appends are recorded and then fail as told: ``error`` set on the returned
    future, or raised by ``append`` itself when ``raises``; succeed when ``error`` is None."""

    def __init__(self, error: BaseException | None = None, *, raises: bool = False) -> None:
        self.error = error
        self.raises = raises
        self.appended: list[tuple[str, int]] = []

    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        self.appended.append((topic, len(messages)))
        if self.raises and self.error is not None:
            raise self.error
        fut: Future[list[Position]] = Future()
        if self.error is None:
            fut.set_result([Position(0, i) for i in range(len(messages))])
        else:
            fut.set_exception(self.error)
        return fut


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "meta.db")
    cat.create_source("tests", WRITE_KEY)
    yield cat
    cat.close()


def _post(collector: Collector, path: str = "/v1/batch") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=collector)
        async with httpx.AsyncClient(transport=transport, base_url="http://clew") as client:
            return await asyncio.wait_for(client.post(path, content=BODY, headers=BASIC), 10)

    return asyncio.run(go())


def _collector(log: _FakeLog, catalog: Catalog) -> Collector:
    return Collector(cast(Log, log), catalog, Limits())


def _assert_unavailable(r: httpx.Response) -> str:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == "unavailable"
    return str(body["message"])


def test_the_fake_log_accepts_when_told_to(catalog: Catalog) -> None:
    log = _FakeLog()
    collector = _collector(log, catalog)
    r = _post(collector)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert log.appended == [(RAW_TOPIC, 1)]


def test_a_collector_shutting_down_answers_503_and_appends_nothing(catalog: Catalog) -> None:
    log = _FakeLog()
    collector = _collector(log, catalog)
    collector.accepting = False
    message = _assert_unavailable(_post(collector))
    assert message == "the server is shutting down"
    assert log.appended == []
    assert collector.counters["refused_unavailable"] == 1
    assert collector.counters["requests_accepted"] == 0


@pytest.mark.parametrize(
    "error",
    [LogError("the disk is full"), OSError("the disk is full")],
    ids=["log_error", "other_error"],
)
def test_a_failed_append_answers_503_with_retry_after(
    catalog: Catalog, error: BaseException
) -> None:
    log = _FakeLog(error)
    collector = _collector(log, catalog)
    message = _assert_unavailable(_post(collector))
    assert message == "the log cannot be written: the disk is full"
    assert log.appended == [(RAW_TOPIC, 1)]
    assert collector.counters["refused_unavailable"] == 1
    assert collector.counters["events_accepted"] == 0
    # The refused request no longer counts as waiting: once the log heals, requests pass.
    log.error = None
    assert _post(collector).status_code == 200


def test_an_append_that_raises_answers_503_and_does_not_hang(catalog: Catalog) -> None:
    log = _FakeLog(LogError("the disk is full"), raises=True)
    collector = _collector(log, catalog)
    message = _assert_unavailable(_post(collector))
    assert message == "the log cannot be written: the disk is full"
    log.error = None
    assert _post(collector).status_code == 200
