"""The read-only SQL endpoint: token auth, read-only enforcement, results, and its bounds
(time, memory, concurrency, rows)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from _s3 import S3
from _support import WRITE_KEY, lake_count, make_settings, wait_for
from clew.api.app import build_api
from clew.background import BackgroundServer, free_port
from clew.config import LakeSettings, SqlSettings
from clew.lake.query import Lake
from clew.sources import Catalog

# Never finish in a test's lifetime; GREEDY grows DuckDB's memory while it runs.
GREEDY = "SELECT i % 1000003 AS k, list(i) FROM range(4000000000) t(i) GROUP BY k"
ENDLESS = "SELECT sum(i * i % 7) FROM range(4000000000) t(i)"


def _send(server: BackgroundServer, n: int) -> None:
    batch = [
        {
            "type": "page",
            "name": "Home" if i % 3 else "Cart",
            "anonymousId": f"a{i}",
            "messageId": f"m{i}",
        }
        for i in range(n)
    ]
    r = httpx.post(server.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200
    wait_for(lambda: lake_count(server.settings.data_dir) == n)


def test_sql_needs_an_access_token_never_a_write_key(server: BackgroundServer) -> None:
    q = {"query": "SELECT 1"}
    r = httpx.post(server.url + "/v1/sql", json=q)
    assert r.status_code == 401 and r.json()["code"] == "missing_token"
    r = httpx.post(server.url + "/v1/sql", json=q, headers={"Authorization": f"Bearer {WRITE_KEY}"})
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"
    r = httpx.post(server.url + "/v1/sql", json=q, auth=(WRITE_KEY, ""))
    assert r.status_code == 401 and r.json()["code"] == "missing_token"


def test_sql_answers_over_the_lake(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("analyst")
    _send(server, 30)
    r = httpx.post(
        server.url + "/v1/sql",
        json={
            "query": "SELECT name, count(*) AS views FROM events GROUP BY name ORDER BY views DESC"
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "columns": ["name", "views"],
        "rows": [["Home", 20], ["Cart", 10]],
        "truncated": False,
    }


def test_sql_is_read_only(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("analyst")
    headers = {"Authorization": f"Bearer {token}"}
    for query in (
        "COPY (SELECT 1) TO '/tmp/clew-escape.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "ATTACH '/tmp/x.db' AS x",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT 1; DROP VIEW events",
    ):
        r = httpx.post(server.url + "/v1/sql", json={"query": query}, headers=headers)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["code"] == "invalid_query"
    r = httpx.post(server.url + "/v1/sql", json={"query": "SELEC nonsense"}, headers=headers)
    assert r.status_code == 400 and "syntax" in r.json()["message"].lower()
    r = httpx.post(server.url + "/v1/sql", content=b"not json", headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"


def test_empty_lake_tables_are_queryable(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("analyst")
    r = httpx.post(
        server.url + "/v1/sql",
        json={"query": "SELECT count(*) FROM events UNION ALL SELECT count(*) FROM dlq"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and r.json()["rows"] == [[0], [0]]


def test_health_and_metrics(server: BackgroundServer) -> None:
    _send(server, 5)
    health = httpx.get(server.url + "/health").json()
    assert health["ok"] is True
    assert set(health["stages"]) == {
        "validate",
        "lake",
        "monitor",
        "profiles",
        "profiles-lake",
        "destinations",
    }
    metrics = httpx.get(server.url + "/metrics").text
    assert "clew_collector_events_total 5" in metrics
    # Stage counters reach /metrics within about a second (stages may run in other processes).
    wait_for(
        lambda: (
            'clew_validate_events_total{outcome="events"} 5'
            in httpx.get(server.url + "/metrics").text
        ),
        timeout_s=5,
    )


def test_health_reports_stage_errors(server: BackgroundServer) -> None:
    validate = next(r for r in server.clew.runners if r.stage.group == "validate")
    real_handle = validate.stage.handle
    calls = 0

    def flaky(records, consumer):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated failure")
        return real_handle(records, consumer)

    validate.stage.handle = flaky  # type: ignore[method-assign]
    _send(server, 3)  # lands despite the failure: the stage resumes from its last commit
    health = httpx.get(server.url + "/health").json()
    assert health["ok"] is True
    assert health["stages"]["validate"]["errors"] == 1
    assert 'clew_stage_errors_total{stage="validate"} 1' in httpx.get(server.url + "/metrics").text


def _bounded_server(tmp_path: Path, **sql: object) -> BackgroundServer:
    settings = make_settings(
        tmp_path / "data", sql=SqlSettings.model_validate({"threads": 1, **sql})
    )
    return BackgroundServer(settings)


def _sql(srv: BackgroundServer, token: str, query: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/sql",
        json={"query": query},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def test_a_query_past_its_timeout_answers_query_timeout_and_frees_its_memory(
    tmp_path: Path,
) -> None:
    with _bounded_server(tmp_path, timeout_s=1.5, memory_limit="4GB", max_concurrent=1) as srv:
        token = srv.clew.catalog.create_token("analyst")
        me = psutil.Process()
        before = me.memory_info().rss
        started = time.monotonic()
        r = _sql(srv, token, GREEDY)
        assert r.status_code == 504 and r.json()["code"] == "query_timeout", r.text
        assert time.monotonic() - started < 5
        assert me.memory_info().rss - before < 60 * 2**20
        assert _sql(srv, token, "SELECT 42").json()["rows"] == [[42]]


def test_a_client_that_goes_away_has_its_query_interrupted(tmp_path: Path) -> None:
    with _bounded_server(tmp_path, timeout_s=120, max_concurrent=1, queue_timeout_s=3) as srv:
        token = srv.clew.catalog.create_token("analyst")
        with pytest.raises(httpx.ReadTimeout):
            _sql(srv, token, ENDLESS, timeout=0.5)
        # The only slot is free again within moments, not after the two-minute timeout.
        started = time.monotonic()
        r = _sql(srv, token, "SELECT 42")
        assert r.status_code == 200 and r.json()["rows"] == [[42]], r.text
        assert time.monotonic() - started < 3


def test_queries_beyond_max_concurrent_get_503_and_other_routes_stay_fast(
    tmp_path: Path,
) -> None:
    with _bounded_server(tmp_path, timeout_s=10, max_concurrent=2, queue_timeout_s=0.3) as srv:
        token = srv.clew.catalog.create_token("analyst")
        ops = srv.clew.catalog.create_token("ops", ["privacy"])
        answers: list[httpx.Response] = []
        flood = [
            threading.Thread(target=lambda: answers.append(_sql(srv, token, ENDLESS)))
            for _ in range(45)
        ]
        for t in flood:
            t.start()
        wait_for(lambda: len(answers) >= 43, timeout_s=10)
        busy = [r for r in answers if r.status_code == 503]
        assert len(busy) == 43
        assert busy[0].json()["code"] == "sql_busy" and busy[0].headers["Retry-After"] == "1"
        # Two queries hold every SQL slot; the rest of the API does not wait for them.
        for path, headers in (
            ("/health", {}),
            ("/v1/privacy/requests", {"Authorization": f"Bearer {ops}"}),
        ):
            started = time.monotonic()
            r = httpx.get(srv.url + path, headers=headers, timeout=5)
            assert r.status_code == 200, (path, r.text)
            assert time.monotonic() - started < 0.5, path
        for t in flood:
            t.join()
        assert sorted(r.status_code for r in answers) == [503] * 43 + [504, 504]


def test_answers_stop_at_max_rows_and_say_truncated(tmp_path: Path) -> None:
    with _bounded_server(tmp_path, max_rows=100) as srv:
        token = srv.clew.catalog.create_token("analyst")
        r = _sql(srv, token, "SELECT i FROM range(1000) t(i) ORDER BY i")
        assert r.json()["rows"] == [[i] for i in range(100)] and r.json()["truncated"] is True
        r = _sql(srv, token, "SELECT i FROM range(100) t(i)")
        assert len(r.json()["rows"]) == 100 and r.json()["truncated"] is False


def test_sql_answers_503_with_retry_after_while_the_lakes_storage_is_away(
    tmp_path: Path,
) -> None:
    """A bucket that does not answer is an outage, not a bad query (400) nor a 500."""
    dead = f"http://127.0.0.1:{free_port()}"
    lake = LakeSettings(
        uri="s3://gone/lake",
        storage_options={**S3(dead).storage_options, "max_retries": "0"},
    )
    settings = make_settings(tmp_path / "data", lake=lake)
    catalog = Catalog.open(settings)
    token = catalog.create_token("analyst")
    api = build_api(catalog, Lake(settings.lake_location), str, dict, settings)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://clew") as client:
            return await client.post(
                "/v1/sql",
                json={"query": "SELECT count(*) FROM events"},
                headers={"Authorization": f"Bearer {token}"},
            )

    try:
        r = asyncio.run(post())
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "lake_unavailable"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        api.state.sql_runner.close()
        catalog.close()
