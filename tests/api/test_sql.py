"""The read-only SQL endpoint: token auth, read-only enforcement, results."""

from __future__ import annotations

import httpx

from clew.server import BackgroundServer
from conftest import WRITE_KEY, lake_count, wait_for


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
