"""One control plane: machines with data directories of their own on one Redis share the
catalog of sources, write keys and tokens (the same ids everywhere, a change on one live on
all within a second), tracking plans and destinations; a ``meta.db``, a ``registry.db`` and
a ``destinations/`` folder move into it with `clew sources|plan|destinations migrate`; and
`clew identity explain` reads either serving store."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from typer.testing import CliRunner, Result

from _support import WRITE_KEY, make_settings, wait_for
from clew._datadir import claim_data_dir
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import Settings
from clew.destinations import DestinationConfig, Destinations
from clew.log.base import Consumer
from clew.sources import DEFAULT_SOURCE, Catalog
from clew.stages._plans import PlanCache
from clew.stages.destinations import DestinationsStage

runner = CliRunner()


def _clew(data_dir: Path, *args: str) -> Result:
    return runner.invoke(app, [*args, "--data-dir", str(data_dir)], env={"COLUMNS": "200"})


def _said(result: Result) -> str:
    return " ".join((result.stdout + result.stderr).split())


def _listing(data_dir: Path) -> list[dict[str, Any]]:
    out = _clew(data_dir, "sources", "list", "--removed", "--json")
    assert out.exit_code == 0, out.output
    return list(json.loads(out.stdout))


def _on_redis(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("CLEW_STORE__BACKEND", "redis")
    monkeypatch.setenv("CLEW_STORE__REDIS_URL", redis_url)
    monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", f"cp-{uuid.uuid4().hex}")


def test_two_machines_on_one_redis_share_sources_keys_and_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    _on_redis(monkeypatch, redis_url)
    one, two = tmp_path / "one", tmp_path / "two"
    for machine in (one, two):  # the deploy pipeline runs the same command on every machine
        created = _clew(machine, "sources", "create", "web", "--write-key", "web-key-123")
        assert created.exit_code == 0 and created.stdout.strip() == "web-key-123"
    assert _listing(one) == _listing(two) and [s["name"] for s in _listing(one)] == ["web"]
    web_id = _listing(one)[0]["id"]

    # What a collector or `clew serve` holds on each machine.
    a, b = Catalog.open(Settings(data_dir=one)), Catalog.open(Settings(data_dir=two))
    try:
        assert a.ensure_source(DEFAULT_SOURCE) == b.ensure_source(DEFAULT_SOURCE)
        src = a.source_for_key("web-key-123")
        assert src is not None and src.id == web_id

        rotated = _clew(two, "sources", "rotate", "web")
        assert rotated.exit_code == 0, rotated.output
        start = time.monotonic()
        wait_for(lambda: a.source_for_key("web-key-123") is None, timeout_s=5)
        assert time.monotonic() - start < 1.0
        new = a.source_for_key(rotated.stdout.strip())
        assert new is not None and new.id == web_id

        token = _clew(one, "tokens", "create", "ops", "--scope", "all").stdout.strip()
        assert b.verify_token(token)
        assert _clew(two, "tokens", "revoke", "ops").exit_code == 0
        assert not a.verify_token(token)

        assert _clew(one, "sources", "remove", "web").exit_code == 0
        wait_for(lambda: b.source_for_key(rotated.stdout.strip()) is None, timeout_s=1)
    finally:
        a.close()
        b.close()
    assert not (one / "meta.db").exists() and not (two / "meta.db").exists()


def test_sources_migrate_moves_a_meta_db_into_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    data, other = tmp_path / "data", tmp_path / "other"
    assert _clew(data, "sources", "create", "web", "--write-key", "web-key-123").exit_code == 0
    assert _clew(data, "sources", "rotate", "web", "--grace", "1h").exit_code == 0
    token = _clew(data, "tokens", "create", "ops", "--scope", "admin").stdout.strip()
    assert _clew(other, "sources", "create", "web", "--write-key", "web-key-456").exit_code == 0
    before = _listing(data)

    _on_redis(monkeypatch, redis_url)
    assert _listing(data) == []
    moved = _clew(data, "sources", "migrate")
    assert moved.exit_code == 0 and "1 source(s) and 1 token(s)" in _said(moved)
    assert _listing(data) == before
    again = _clew(data, "sources", "migrate")
    assert again.exit_code == 0 and _listing(data) == before
    catalog = Catalog.open(Settings(data_dir=data))
    try:
        assert catalog.source_for_key("web-key-123") is not None  # in its grace period
        found = catalog.token_for(token)
        assert found is not None and found.scopes == {"admin"}
    finally:
        catalog.close()

    clash = _clew(data, "sources", "migrate", str(other / "meta.db"))
    assert clash.exit_code == 0
    assert "warning: source 'web'" in _said(clash) and "not copied" in _said(clash)
    assert _listing(data) == before

    refused = _clew(data, "sources", "migrate", str(tmp_path / "nothing.db"))
    assert refused.exit_code == 1 and "no catalog at" in _said(refused)


def test_sources_migrate_refuses_to_copy_the_embedded_catalog_onto_itself(
    tmp_path: Path,
) -> None:
    assert _clew(tmp_path, "sources", "create", "web").exit_code == 0
    out = _clew(tmp_path, "sources", "migrate")
    assert out.exit_code == 1 and "catalog already" in _said(out)


PLAN = Path(__file__).parents[1] / "examples" / "tracking-plan"


def _plan(data_dir: Path, source: str) -> dict[str, Any]:
    out = _clew(data_dir, "schema", "list", "--source", source, "--json")
    assert out.exit_code == 0, out.output
    return dict(json.loads(out.stdout))


def test_a_plan_pushed_on_one_machine_is_every_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    _on_redis(monkeypatch, redis_url)
    one, two = tmp_path / "one", tmp_path / "two"
    for machine in (one, two):
        assert (
            _clew(machine, "sources", "create", "web", "--write-key", "web-key-123").exit_code == 0
        )
    web_id = _listing(two)[0]["id"]
    plans = PlanCache(Settings(data_dir=two))  # what the second machine's validate stage reads
    try:
        assert plans.plan_for(web_id) is None
        pushed = _clew(one, "plan", "push", str(PLAN), "--source", "web")
        assert pushed.exit_code == 0, pushed.output
        time.sleep(1.0)  # the stage re-checks a source's plan once a second
        enforced = plans.plan_for(web_id)
        assert enforced is not None and enforced.enforcement.value == "block_violations"
    finally:
        plans.close()
    seen = _plan(two, "web")
    assert seen == _plan(one, "web") and seen["enforcement"] == "block_violations"
    assert "track:Order Completed" in {s["subject"] for s in seen["subjects"]}
    again = _clew(two, "plan", "push", str(PLAN), "--source", "web")  # the pipeline, again
    assert again.exit_code == 0 and _plan(one, "web") == seen
    assert not (one / "registry.db").exists() and not (two / "registry.db").exists()


def test_plan_migrate_moves_a_registry_db_into_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    data = tmp_path / "data"
    assert _clew(data, "plan", "push", str(PLAN)).exit_code == 0
    before = _plan(data, DEFAULT_SOURCE)
    _on_redis(monkeypatch, redis_url)
    assert _plan(data, DEFAULT_SOURCE)["subjects"] == []
    moved = _clew(data, "plan", "migrate")
    assert moved.exit_code == 0 and "plans of 1 source(s)" in _said(moved)
    assert _plan(data, DEFAULT_SOURCE) == before
    again = _clew(data, "plan", "migrate")
    assert again.exit_code == 0 and "not copied" in _said(again)
    assert _plan(data, DEFAULT_SOURCE) == before


def _destinations(data_dir: Path) -> list[dict[str, Any]]:
    out = _clew(data_dir, "destinations", "list", "--json")
    assert out.exit_code == 0, out.output
    return list(json.loads(out.stdout)["destinations"])


def test_a_destination_added_on_one_machine_is_every_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    _on_redis(monkeypatch, redis_url)
    one, two = tmp_path / "one", tmp_path / "two"
    # The second machine runs the destinations worker (as `clew worker` would, it claims
    # its data directory).
    claim_data_dir(two)
    stage = DestinationsStage(two, destinations=Destinations.open(Settings(data_dir=two)))
    consumer = cast(Consumer, None)  # ticking reads no record

    def routes() -> list[str]:
        stage.tick(consumer)
        return stage.destinations

    try:
        assert routes() == []
        added = _clew(
            one, "destinations", "add", "crm", "--url", "https://crm.test/in", "--event", "identify"
        )
        assert added.exit_code == 0, added.output
        start = time.monotonic()
        wait_for(lambda: routes() == ["crm"], timeout_s=5)
        assert time.monotonic() - start < 1.0
        (seen,) = _destinations(two)
        assert seen["url"] == "https://crm.test/in" and seen["events"] == ["identify"]

        again = _clew(two, "destinations", "add", "crm", "--url", "https://crm.test/in")
        assert again.exit_code == 2 and "--replace" in _said(again)
        changed = _clew(
            two, "destinations", "add", "crm", "--url", "https://crm.test/v2", "--replace"
        )
        assert changed.exit_code == 0, changed.output
        assert [d["url"] for d in _destinations(one)] == ["https://crm.test/v2"]

        assert _clew(one, "destinations", "remove", "crm").exit_code == 0
        start = time.monotonic()
        wait_for(lambda: routes() == [], timeout_s=5)
        assert time.monotonic() - start < 1.0
        assert _destinations(two) == []
    finally:
        stage.shutdown()
    assert not (one / "destinations").exists() and not (two / "destinations").exists()
    # The outbox is the worker's machine's alone; the first machine's commands make none.
    assert (two / "destinations.db").exists() and not (one / "destinations.db").exists()


def test_destinations_migrate_moves_a_folder_into_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    data, other = tmp_path / "data", tmp_path / "other"
    for name in ("crm", "ads"):
        added = _clew(data, "destinations", "add", name, "--url", f"https://{name}.test/in")
        assert added.exit_code == 0, added.output
    (data / "destinations" / "broken.yaml").write_text("url: [")
    assert _clew(other, "destinations", "add", "crm", "--url", "https://x.test/").exit_code == 0
    before = _destinations(data)

    refused = _clew(data, "destinations", "migrate")
    assert refused.exit_code == 1 and "destinations already" in _said(refused)

    _on_redis(monkeypatch, redis_url)
    assert _destinations(data) == []
    moved = _clew(data, "destinations", "migrate")
    assert moved.exit_code == 0 and "holds 2 destination(s)" in _said(moved)
    assert "not copied" in _said(moved) and "broken.yaml" in _said(moved)
    assert _destinations(data) == before
    again = _clew(data, "destinations", "migrate")
    assert again.exit_code == 0 and "holds 2 destination(s)" in _said(again)
    assert _destinations(data) == before

    clash = _clew(data, "destinations", "migrate", str(other / "destinations"))
    assert clash.exit_code == 0
    assert "warning: destination 'crm' not copied" in _said(clash)
    assert _destinations(data) == before

    missing = _clew(data, "destinations", "migrate", str(tmp_path / "nothing"))
    assert missing.exit_code == 1 and "no destinations folder" in _said(missing)


def test_identity_explain_reads_either_serving_store(tmp_path: Path, cli_store: str) -> None:
    settings = make_settings(tmp_path / "data")
    assert settings.store.backend == cli_store
    event = {
        "type": "identify",
        "userId": "ada-1",
        "messageId": "m-1",
        "traits": {"email": "ada@shop.test"},
    }
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        answer = httpx.post(f"{srv.url}/v1/identify", json=event, auth=(WRITE_KEY, ""))
        assert answer.status_code == 200
        wait_for(srv.clew.drained)
        out = _clew(settings.data_dir, "identity", "explain", "email:ada@shop.test", "--json")
    assert out.exit_code == 0, out.output
    reasons = json.loads(out.stdout)["reasons"]
    assert {r["identifier"] for r in reasons if r["kind"] == "identity"} >= {
        "email:ada@shop.test",
        "user_id:ada-1",
    }
    assert {r["source"] for r in reasons if r["kind"] == "identity"} == {"tests"}


def test_the_control_plane_runs_on_a_redis_cluster(
    tmp_path: Path, redis_cluster_service: Any
) -> None:
    """Each part of the control plane keeps its keys in one hash slot, so its scripts and
    locks work on a Redis Cluster as on one server."""
    from clew.schema import SchemaRegistry, SubjectUpdate

    store = {
        "backend": "redis",
        "redis_url": redis_cluster_service.url,
        "redis_cluster": True,
        "redis_prefix": f"cp-{uuid.uuid4().hex}",
    }
    one = Settings(data_dir=tmp_path / "one", store=store)
    two = Settings(data_dir=tmp_path / "two", store=store)
    a, b = Catalog.open(one), Catalog.open(two)
    try:
        assert a.ensure_source(DEFAULT_SOURCE) == b.ensure_source(DEFAULT_SOURCE)
        web = a.create_source("web", "web-key-123")
        b.rotate_write_key("web", grace_s=60, write_key="web-key-456")
        assert a.source_for_key("web-key-456") == a.source_for_key("web-key-123")
        assert a.source_for_key("web-key-456").id == web.id  # type: ignore[union-attr]
        b.remove_source("web")
        token = a.create_token("ops")
        assert b.verify_token(token)
        b.revoke_token("ops")
        assert not a.verify_token(token)
    finally:
        a.close()
        b.close()
    order = {"type": "object", "properties": {"order_id": {"type": "string"}}}
    with SchemaRegistry.open(one) as writer, SchemaRegistry.open(two) as reader:
        writer.publish_all("web", [SubjectUpdate("track:Order Completed", order)])
        assert reader.get("web", "track:Order Completed").schema == order
    crm = DestinationConfig(name="crm", url="https://crm.test/in")
    with Destinations.open(one) as writer, Destinations.open(two) as reader:
        before = reader.version()
        writer.save(crm)
        assert reader.version() != before and reader.get("crm") == crm
        reader.remove("crm")
        assert writer.names() == []
