"""``/health`` answers 503 when Clew is not whole: a stage whose thread is not running makes
``ok`` false and ``status`` ``down`` (naming the stage); a collector that is shutting down
answers 503 too. In process: the ASGI apps through Starlette's test client, no port."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from _support import make_settings
from clew.collector.process import CollectorProcess
from clew.config import Settings
from clew.server import Clew

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; the test client drives the app alike.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


def _started(settings: Settings) -> Iterator[Clew]:
    clew = Clew(settings)
    clew.start()
    try:
        yield clew
    finally:
        clew.stop(drain_timeout_s=0)


@pytest.fixture
def clew(tmp_path: Path) -> Iterator[Clew]:
    yield from _started(make_settings(tmp_path / "data"))


@pytest.fixture
def clew_with_tokens(tmp_path: Path) -> Iterator[Clew]:
    settings = make_settings(tmp_path / "data")
    settings.metrics.require_token = True
    yield from _started(settings)


def _stop_stage(clew: Clew, group: str) -> None:
    (runner,) = [r for r in clew.runners if r.stage.group == group]
    runner.stop()
    assert not runner.alive


def test_health_is_200_while_every_stage_runs_and_503_once_one_is_down(clew: Clew) -> None:
    # No `with`: the app answers HTTP only (no lifespan), as under the real server.
    client = TestClient(clew.app)
    up = client.get("/health")
    assert up.status_code == 200, up.text
    assert up.json()["ok"] is True
    groups = set(up.json()["stages"])
    assert "lake" in groups and len(groups) > 1

    _stop_stage(clew, "lake")
    down = client.get("/health")
    assert down.status_code == 503
    body = down.json()
    assert body["ok"] is False
    assert body["status"] == "down"
    lake = body["stages"]["lake"]
    assert lake["alive"] is False
    assert lake["status"] == "down"
    assert lake["reason"] == "its process or thread is not running"
    # Every other stage still runs and is reported as such.
    assert set(body["stages"]) == groups
    assert all(s["alive"] for name, s in body["stages"].items() if name != "lake")


def test_health_without_a_token_is_still_503_but_names_no_stage(clew_with_tokens: Clew) -> None:
    client = TestClient(clew_with_tokens.app)
    _stop_stage(clew_with_tokens, "validate")
    r = client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"ok": False, "status": "down"}


def test_the_collector_roles_health_is_503_once_it_stops_accepting(tmp_path: Path) -> None:
    process = CollectorProcess(make_settings(tmp_path / "data"))
    client = TestClient(process.app)
    try:
        up = client.get("/health")
        assert up.status_code == 200 and up.json()["ok"] is True
        process.collector.accepting = False  # what close() does first on shutdown
        down = client.get("/health")
        assert down.status_code == 503
        assert down.json()["ok"] is False
        assert down.json()["role"] == "collector"
    finally:
        client.close()
        process.close()
