"""A dependency outage is never a 500 from the Tracking API: a suppression list or source
catalog that cannot be read is a 503 with ``Retry-After``, and a collector that loaded the
suppression list once goes on with it (docs/scale-out.md, "When a service is down"). The
collector runs in process over an embedded log; the services fail on cue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clew._errors import ServiceUnavailableError
from clew.collector.app import Collector
from clew.config import Limits
from clew.identity.rules import IdentityRules
from clew.log.base import TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.privacy._salt import identifier_hash
from clew.privacy.suppression import Suppression
from clew.sources import Catalog
from clew.topics import RAW_TOPIC

SALT = b"s" * 32
WRITE_KEY = "outage-write-key"


class FlakyList:
    """A suppression list whose store goes away when ``down`` is set."""

    def __init__(self, hashes: set[str]) -> None:
        self.hashes_ = hashes
        self.gen = 1
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ServiceUnavailableError("cannot reach Redis while reading the list")

    def generation(self) -> int:
        self._check()
        return self.gen

    def hashes(self) -> set[str]:
        self._check()
        return self.hashes_

    def close(self) -> None:
        pass


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(RAW_TOPIC, 1))
    yield log
    log.close()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "meta.db")
    catalog.create_source("web", WRITE_KEY)
    yield catalog
    catalog.close()


def _post(collector: Collector, user: str) -> httpx.Response:
    """One track call through the ASGI app, in process."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=collector)
        async with httpx.AsyncClient(transport=transport, base_url="http://clew") as client:
            body = {"userId": user, "event": "Viewed"}
            return await client.post("/v1/track", json=body, auth=(WRITE_KEY, ""))

    return asyncio.run(call())


def _answer(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, r.headers.get("retry-after")


def test_a_cached_suppression_list_outlives_an_outage(
    log: EmbeddedLog, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FlakyList({identifier_hash(SALT, "user_id", "ada")})
    checker = Suppression(source, SALT, IdentityRules(), keep_on_outage=True)
    # Every request looks at the list again.
    monkeypatch.setattr("clew.privacy.suppression.RELOAD_S", 0.0)
    collector = Collector(log, catalog, Limits(), checker)
    source.down = True
    assert _answer(_post(collector, "bob")) == (200, None)
    assert _answer(_post(collector, "ada")) == (200, None)  # acknowledged, not stored
    stored = log.read(RAW_TOPIC, 0, 0)
    assert [b'"bob"' in r.value for r in stored] == [True]


def test_no_list_loaded_and_no_catalog_are_503_with_retry_after(
    log: EmbeddedLog, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FlakyList(set())
    strict = Suppression(source, SALT, IdentityRules())  # the validate stage's kind
    monkeypatch.setattr("clew.privacy.suppression.RELOAD_S", 0.0)
    source.down = True
    assert _answer(_post(Collector(log, catalog, Limits(), strict), "bob")) == (503, "5")

    def unreachable(_: str) -> None:
        raise ServiceUnavailableError("cannot reach Redis while reading the catalog")

    monkeypatch.setattr(catalog, "source_for_key", unreachable)
    r = _post(Collector(log, catalog, Limits()), "bob")
    assert (r.status_code, r.json()["code"], r.headers["retry-after"]) == (503, "unavailable", "5")
    assert log.read(RAW_TOPIC, 0, 0) == []
